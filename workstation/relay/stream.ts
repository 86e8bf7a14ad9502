// One facade's stream inside the holder's relay connection, and how the holder serves it: the
// token is checked against the holder's own key, the stream is sealed end to end
// (workstation/relay/seal.ts), and the tunnel is served by a token-scoped view of the holder
// (workstation/tokens/scoped-holder.ts). Sealed-channel failures are audited here.

import { displayField } from '../../protocol/display-text.js';
import { claimedRequester } from '../../protocol/keyholder.js';
import { Duplex } from 'node:stream';
import type tls from 'node:tls';
import WebSocket from 'ws';
import { describeSealError } from '../../protocol/seal.js';
import {
  encodeMux,
  encodeMuxClose,
  MuxKind,
  parseMuxOpen,
  type MuxOpen,
} from '../../protocol/relay/mux.js';
import { checkTokenSignature, parseToken, type ParsedToken } from '../../protocol/token.js';
import { serveTunnel, type TunnelServerHandle } from '../../protocol/tunnel/index.js';
import type { AuditInput } from '../audit/audit.js';
import type { RelayClientOptions } from './client.js';
import {
  acceptSealedStream,
  onSealedError,
  type SealAcceptOptions,
  type SealAcceptResult,
} from './seal.js';
import { tokenScopedHolder } from '../tokens/scoped-holder.js';
import { linkLimits } from '../holder/holder.js';

const MAX_DATA_CHUNK = 256 * 1024;

/**
 * What a mux-open PAYLOAD the relay forwarded asks for: its token, parsed and signed by IDENTITY
 * (the relay checked this too, but the holder trusts only its own key), or the one-line reason
 * the stream is refused.
 */
export function openStreamToken(
  payload: Uint8Array,
  identity: { hid: string; hpk: Uint8Array },
): { open: MuxOpen; token: ParsedToken } | { refusal: string } {
  const open = parseMuxOpen(payload);
  if ('error' in open) return { refusal: open.error };
  const parsed = parseToken(open.token);
  if (!parsed.ok) return { refusal: parsed.error };
  const token = parsed.token;
  if (
    token.payload.hid !== identity.hid ||
    !Buffer.from(token.hpk).equals(Buffer.from(identity.hpk)) ||
    !checkTokenSignature(token).ok
  ) {
    return { refusal: 'the token was not issued by this holder' };
  }
  return { open, token };
}

/** Opens stream STREAMID for the facade whose mux-open PAYLOAD the relay forwarded. */
export function serveRelayStream(
  opts: RelayClientOptions,
  log: (line: string) => void,
  streams: Map<number, HolderStream>,
  sock: WebSocket,
  streamId: number,
  payload: Buffer,
): void {
  const opened = openStreamToken(payload, opts.identity);
  if ('refusal' in opened) return sendClose(sock, streamId, opened.refusal);
  const { open, token } = opened;
  const tid = token.payload.tid;
  // The relay's word for the facade's address: a claim, sanitised once here for every log line,
  // prompt and audit record, and never a policy `host` (SECURITY.md: the relay is untrusted).
  const peer = open.peer ? displayField(open.peer, 256) : undefined;
  const from = `relay stream${peer !== undefined ? ` (relay says from ${peer})` : ''} (token ${tid})`;
  const stream = new HolderStream(sock, streamId, () => streams.delete(streamId));
  streams.set(streamId, stream);
  const where = { ...(peer !== undefined ? { peer } : {}), tokenId: tid };
  // The facade's word, carried by the relay: worth a record, though the relay could forge it.
  stream.onSealReport = (r) => {
    // The relay or facade wrote this text: no control characters reach the terminal or the log.
    const said = displayField(r.slice('sealed channel: '.length), 200);
    const reason = `sealed channel: the facade reported: ${said}`;
    void recordSealFailure(opts.audit, where, reason).then(() => log(`${from} closed: ${reason}`));
  };
  const unsealed = opts.benchUnsealed === BENCH_UNSEALED;
  void (unsealed ? acceptUnsealedForBench : acceptSealedStream)(stream, {
    credentials: opts.seal,
    checkSecret: (hash) => opts.checkSecret(tid, hash),
    // Before the TLS socket is torn down, so the facade hears this reason and no other.
    refuse: (why) => stream.closeWith(`sealed channel: ${why}`),
  }).then(async (sealed) => {
    if (!sealed.ok) {
      const reason = `sealed channel: ${sealed.reason}`;
      await recordSealFailure(opts.audit, where, reason);
      log(`${from} refused: ${reason}`);
      return;
    }
    const socket = sealed.socket;
    // After the handshake a broken, dropped, reordered or replayed record is a TLS error;
    // the tunnel reports it as its close reason, and it is audited here.
    onSealedError(socket, (e: Error) => {
      const reason = `sealed channel: ${describeSealError(e)}`;
      e.message = reason;
      stream.closeWith(reason);
      void recordSealFailure(opts.audit, where, reason).then(() =>
        log(`${from} closed: ${reason}`),
      );
    });
    socket.on('close', () => stream.destroy());
    const scoped = tokenScopedHolder(
      opts.holder,
      token,
      opts.tokens,
      opts.audit,
      peer,
      unsealed ? undefined : sealed.secretHash,
      // Revoked or expired after the stream opened: the next push lists nothing.
      unsealed ? undefined : () => opts.checkSecret(tid, sealed.secretHash),
    );
    stream.tunnel = serveTunnel(scoped, socket, {
      software: opts.software,
      requester: (claimed) => ({
        ...claimedRequester(claimed),
        front: 'relay',
        tokenId: tid,
        ...(peer !== undefined ? { relayPeer: peer } : {}),
      }),
      // Changes are watched on the whole holder (when it can report them, as Holder does);
      // each push re-reads `scoped`, so the facade still sees only the token's keys.
      onInventoryChange: (changed) =>
        (opts.holder as { onInventoryChange?: (fn: () => void) => () => void }).onInventoryChange?.(
          changed,
        ),
      ...linkLimits(opts.holder),
    });
  });
}

function sendData(sock: WebSocket, streamId: number, payload: Uint8Array): void {
  if (sock.readyState === WebSocket.OPEN) {
    sock.send(encodeMux(MuxKind.Data, streamId, payload), { binary: true });
  }
}

export function sendClose(sock: WebSocket, streamId: number, reason: string): void {
  if (sock.readyState === WebSocket.OPEN) {
    sock.send(encodeMuxClose(streamId, reason), { binary: true });
  }
}

/** One facade's byte stream inside the holder's relay connection. */
export class HolderStream extends Duplex {
  tunnel: TunnelServerHandle | undefined;
  /** Called when the facade ended the stream over a sealed-channel failure it saw. */
  onSealReport: ((reason: string) => void) | undefined;
  #closedRemotely = false;

  constructor(
    private readonly sock: WebSocket,
    private readonly id: number,
    private readonly forget: () => void,
  ) {
    super();
  }

  pushData(b: Buffer): void {
    if (!this.#closedRemotely) this.push(b);
  }

  /** Ends the stream telling the facade (through the relay) why. */
  closeWith(reason: string): void {
    if (!this.#closedRemotely) {
      this.#closedRemotely = true;
      this.forget();
      sendClose(this.sock, this.id, reason.slice(0, 200));
    }
    this.destroy();
  }

  remoteClosed(reason: string): void {
    if (this.#closedRemotely) return;
    if (reason.startsWith('sealed channel: ')) this.onSealReport?.(reason);
    this.#closedRemotely = true;
    this.push(null);
    this.destroy();
  }

  override _read(): void {
    // Flow control is the WebSocket's; tunnel frames are small and bounded by the tunnel.
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (e?: Error | null) => void): void {
    if (this.#closedRemotely || this.sock.readyState !== WebSocket.OPEN) {
      cb(new Error('the relay stream is closed'));
      return;
    }
    for (let off = 0; off < chunk.length; off += MAX_DATA_CHUNK) {
      sendData(this.sock, this.id, chunk.subarray(off, off + MAX_DATA_CHUNK));
    }
    cb();
  }

  // TLS hands over several records at once; one mux frame (one WebSocket message) carries them.
  override _writev(
    chunks: { chunk: Buffer; encoding: BufferEncoding }[],
    cb: (e?: Error | null) => void,
  ): void {
    const all = chunks.length === 1 ? chunks[0]!.chunk : Buffer.concat(chunks.map((c) => c.chunk));
    this._write(all, chunks[0]!.encoding, cb);
  }

  override _final(cb: (e?: Error | null) => void): void {
    this.#sendClose();
    cb();
  }

  override _destroy(err: Error | null, cb: (e?: Error | null) => void): void {
    this.forget();
    // TLS tears this stream down before it emits the error that says why; wait for closeWith.
    setImmediate(() => this.#sendClose());
    cb(err);
  }

  #sendClose(): void {
    this.forget();
    if (this.#closedRemotely) return;
    this.#closedRemotely = true;
    sendClose(this.sock, this.id, 'closed by the holder');
  }
}

/** A sealed-channel failure in the audit log: op `channel`, no key, the reason says what happened. */
async function recordSealFailure(
  audit: { append(rec: AuditInput): Promise<void> },
  where: { peer?: string; tokenId: string },
  reason: string,
): Promise<void> {
  // Anyone holding a token's public part (or a hostile relay) can open streams that fail: each
  // token gets a bucket of records, and what it suppresses is counted into the next one.
  const suppressed = channelRecords.take(where.tokenId);
  if (suppressed === undefined) return;
  const text = suppressed > 0 ? `${reason} (and ${suppressed} more not recorded)` : reason;
  await audit
    .append({ front: 'relay', ...where, op: 'channel', decision: 'failed', reason: text })
    .catch(() => undefined);
}

/** Per token: a burst of 60 channel-failure records, then one a second. */
class ChannelRecordBudget {
  readonly #buckets = new Map<string, { tokens: number; at: number; suppressed: number }>();

  /** Undefined when this record must be dropped; else how many were dropped before it. */
  take(tokenId: string, now = Date.now()): number | undefined {
    let b = this.#buckets.get(tokenId);
    if (!b) {
      if (this.#buckets.size >= 10_000) this.#buckets.clear();
      b = { tokens: 60, at: now, suppressed: 0 };
      this.#buckets.set(tokenId, b);
    }
    b.tokens = Math.min(60, b.tokens + (now - b.at) / 1000);
    b.at = now;
    if (b.tokens < 1) {
      b.suppressed++;
      return undefined;
    }
    b.tokens -= 1;
    const n = b.suppressed;
    b.suppressed = 0;
    return n;
  }
}
const channelRecords = new ChannelRecordBudget();

/** Marks a relay client that serves streams unsealed; see RelayClientOptions.benchUnsealed. */
export const BENCH_UNSEALED: unique symbol = Symbol('keytether bench: unsealed relay streams');

/**
 * The bench's stand-in for acceptSealedStream: the relay stream itself carries the tunnel, and no
 * secret is proven (the token registry then checks everything but the secret). The stream is not
 * a TLS socket; what the caller does with one (error listeners, close, the tunnel) works on any
 * Duplex, and the seal's options do not apply.
 */
function acceptUnsealedForBench(raw: Duplex, _opts: SealAcceptOptions): Promise<SealAcceptResult> {
  return Promise.resolve({ ok: true, socket: raw as tls.TLSSocket, secretHash: '' });
}
