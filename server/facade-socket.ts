// The facade's WebSocket to the relay: opening `/v1/facade` with the token's public part, one
// sentence per relay refusal, and the socket as the byte stream the sealed channel runs over.

import { Duplex } from 'node:stream';
import tls from 'node:tls';
import WebSocket from 'ws';
import {
  describeRelayTlsError,
  relayTlsOptions,
  type RelayTrust,
} from '../protocol/relay/endpoint.js';

const MAX_MESSAGE_BYTES = 1 << 20;
const CONNECT_TIMEOUT_MS = 15_000;

/** One sentence per relay refusal; `permanent` ones are not worth retrying with the same token. */
const REFUSALS: Record<number, { text: string; permanent: boolean }> = {
  4003: {
    text: 'the relay rejected the token as invalid; check that it was copied whole and is for this relay',
    permanent: true,
  },
  4004: {
    text: 'the token has expired; create a new one on the workstation with `keytether token create`',
    permanent: true,
  },
  4005: {
    text: 'the holder is not connected to the relay; start `keytether agent --relay …` on the workstation',
    permanent: false,
  },
  4008: {
    text: 'the relay refused the connection: too many connections or requests; try again later',
    permanent: false,
  },
  4002: { text: 'the relay timed out waiting for the token', permanent: false },
  4010: { text: 'the relay received a message that was too large', permanent: true },
  1001: { text: 'the relay is shutting down', permanent: false },
};

export class RelayRefusal extends Error {
  constructor(
    readonly code: number,
    message: string,
    readonly permanent: boolean,
  ) {
    super(message);
    this.name = 'RelayRefusal';
  }
}

export function refusal(code: number, reason: string, url: string): RelayRefusal {
  const known = REFUSALS[code];
  if (known) return new RelayRefusal(code, known.text, known.permanent);
  const why = reason ? `: ${reason.slice(0, 200)}` : '';
  return new RelayRefusal(code, `the relay at ${url} closed the connection (${code}${why})`, false);
}

function toBuffer(data: WebSocket.RawData): Buffer {
  if (Buffer.isBuffer(data)) return data;
  if (Array.isArray(data)) return Buffer.concat(data);
  return Buffer.from(data);
}

/**
 * Opens `<relay>/v1/facade` and presents the token's public part. Resolves with the tunnel stream
 * once the relay said ok; rejects with a RelayRefusal (or a plain Error for network failures).
 */
export function openFacadeSocket(
  url: string,
  publicPart: string,
  trust?: RelayTrust,
): Promise<FacadeWebSocketStream> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, {
      maxPayload: MAX_MESSAGE_BYTES,
      handshakeTimeout: CONNECT_TIMEOUT_MS,
      perMessageDeflate: false,
      ...(relayTlsOptions(url, trust, (o: tls.ConnectionOptions) =>
        tls.connect(o),
      ) as WebSocket.ClientOptions),
    });
    // Attached before anything can arrive: the holder's hello may come in the same read as the
    // relay's ok, and ws emits both before a promise continuation could attach a listener.
    const stream = webSocketStream(ws);
    let settled = false;
    const timer = setTimeout(() => {
      fail(new Error('the relay did not answer within 15 s'));
      ws.terminate();
    }, CONNECT_TIMEOUT_MS);
    const fail = (e: Error) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      reject(e);
    };
    ws.on('open', () => ws.send(JSON.stringify({ type: 'token', token: publicPart })));
    ws.on('error', (e: Error) =>
      fail(
        new Error(
          describeRelayTlsError(e) ??
            `cannot reach the relay at ${url} (${e.message}); check --relay and that the relay is running`,
        ),
      ),
    );
    ws.on('close', (code: number, reason: Buffer) => fail(refusal(code, reason.toString(), url)));
    const onMessage = (data: WebSocket.RawData, isBinary: boolean) => {
      if (isBinary) return;
      let msg: { type?: unknown };
      try {
        msg = JSON.parse(toBuffer(data).toString('utf8')) as typeof msg;
      } catch {
        return;
      }
      if (msg.type !== 'ok' || settled) return;
      settled = true;
      clearTimeout(timer);
      ws.off('message', onMessage);
      resolve(stream);
    };
    ws.on('message', onMessage);
  });
}

export type FacadeWebSocketStream = Duplex & {
  closeInfo?: { code: number; reason: string };
  /** Ends the stream telling the holder (through the relay) why, e.g. a broken sealed record. */
  closeWith?: (reason: string) => void;
};

/** The WebSocket as the tunnel's byte stream: binary messages only, in both directions. */
/** Above this many queued bytes a write waits for the socket; below it, it completes at once. */
const WS_HIGH_WATER_BYTES = 256 * 1024;
/** Well under the relay's per-message limit (1 MiB), whatever TLS hands over at once. */
const WS_MAX_MESSAGE_BYTES = 256 * 1024;

/**
 * Completing each write only once ws has flushed it costs the sealed channel an event-loop turn
 * per record (TLS over a JS stream allows one write in flight); waiting only when data is really
 * queued keeps backpressure and loses that latency.
 */
function sendToRelay(ws: WebSocket, chunks: Buffer[], cb: (e?: Error | null) => void): void {
  if (ws.readyState !== WebSocket.OPEN) return cb(new Error('the relay connection is closed'));
  const messages: Buffer[] = [];
  let batch: Buffer[] = [];
  let size = 0;
  for (const c of chunks) {
    if (size > 0 && size + c.length > WS_MAX_MESSAGE_BYTES) {
      messages.push(Buffer.concat(batch, size));
      batch = [];
      size = 0;
    }
    batch.push(c);
    size += c.length;
  }
  if (size > 0) messages.push(batch.length === 1 ? batch[0]! : Buffer.concat(batch, size));
  const last = messages.length - 1;
  const wait = last >= 0 && ws.bufferedAmount >= WS_HIGH_WATER_BYTES;
  messages.forEach((m, i) => {
    if (i === last && wait) ws.send(m, { binary: true }, (e) => cb(e ?? null));
    else ws.send(m, { binary: true });
  });
  if (!wait) cb();
}

export function webSocketStream(ws: WebSocket): FacadeWebSocketStream {
  const stream: FacadeWebSocketStream = new Duplex({
    read() {},
    write(chunk: Buffer, _enc, cb) {
      sendToRelay(ws, [chunk], cb);
    },
    // TLS hands over several records at once; one WebSocket message carries them all.
    writev(chunks: { chunk: Buffer }[], cb) {
      sendToRelay(
        ws,
        chunks.map((c) => c.chunk),
        cb,
      );
    },
    final(cb) {
      ws.close(1000, 'facade done');
      cb();
    },
    destroy(err, cb) {
      // TLS tears this stream down before it emits the error that says why; let closeWith win.
      setImmediate(() => {
        if (ws.readyState === WebSocket.OPEN || ws.readyState === WebSocket.CONNECTING) {
          ws.close(1000, 'facade done');
        }
      });
      cb(err);
    },
  });
  stream.closeWith = (reason: string) => {
    // A close reason is at most 123 bytes.
    if (ws.readyState === WebSocket.OPEN) ws.close(1000, Buffer.from(reason).subarray(0, 120));
    stream.destroy();
  };
  ws.on('message', (data: WebSocket.RawData, isBinary: boolean) => {
    if (isBinary) stream.push(toBuffer(data));
  });
  ws.on('close', (code: number, reason: Buffer) => {
    stream.closeInfo = { code, reason: reason.toString('utf8').slice(0, 200) };
    stream.push(null);
    stream.destroy();
  });
  ws.on('error', () => stream.destroy());
  return stream;
}
