// One end of a tunnel link, shared by both roles: framing, the hello exchange, keepalive, the
// dead-peer timer and an orderly close that tells the peer why. It owns the stream handed to it
// and never throws into the stream's event handlers; every failure becomes a close with a reason.

import type { Duplex } from 'node:stream';
import { DEFAULT_MAX_FRAME_BYTES, FrameReader } from './framing.js';
import {
  MIN_TUNNEL_PROTOCOL,
  TUNNEL_PROTOCOL,
  negotiate,
  place,
  type HelloInfo,
  type Role,
} from './handshake.js';
import {
  HelloSchema,
  LIMITS,
  decodePayload,
  encodeFrame,
  sanitize,
  type Message,
  type MessageType,
  type OutHeader,
} from './messages.js';

export type FrameDirection = 'in' | 'out';

export interface TunnelOptions {
  /** `keytether/<version>`, shown to the peer in version-mismatch advice. */
  software: string;
  /** Largest frame accepted from the peer (payload bytes). Default 1 MiB. */
  maxFrameBytes?: number;
  /** How often to send a ping once the link is up. Default 15 s. */
  keepaliveMs?: number;
  /** Close the link when nothing at all arrived for this long. Default 45 s. */
  deadPeerMs?: number;
  /** Called for every frame sent or received (type is `invalid` for undecodable ones). */
  onFrame?: (dir: FrameDirection, type: string, bytes: number) => void;
  /** Override the announced protocol range (tests of version mismatch; leave unset otherwise). */
  protocol?: number;
  minProtocol?: number;
}

export interface PeerInfo {
  software: string;
  /** The protocol both sides agreed on. */
  protocol: number;
  /** The peer's own newest protocol. */
  peerProtocol: number;
}

export interface LinkHandlers {
  onOpen(peer: PeerInfo): void;
  onMessage(message: Message): void;
  /** A request that parsed as a frame but failed validation: answer it, keep the link. */
  onInvalidRequest(id: number, reason: string): void;
  onClose(reason: string): void;
}

export const DEFAULT_KEEPALIVE_MS = 15_000;
export const DEFAULT_DEAD_PEER_MS = 45_000;
/** How long a closing link waits for its last frame to drain before destroying the stream. */
const CLOSE_LINGER_MS = 1000;
/** Queued bytes above which a multi-frame sender waits for 'drain'. */
const DRAIN_BELOW_BYTES = 1 << 20;

const ACCEPTS: Record<Role, ReadonlySet<MessageType>> = {
  holder: new Set(['sign', 'decrypt', 'cancel', 'content', 'ssh-sign']),
  facade: new Set(['inventory', 'sign-result', 'decrypt-result', 'ssh-sign-result', 'error']),
};

function positiveMs(value: number | undefined, fallback: number, name: string): number {
  if (value === undefined) return fallback;
  if (!Number.isFinite(value) || value <= 0 || value > 0x7fffffff) {
    throw new RangeError(`${name} must be a positive number of milliseconds`);
  }
  return value;
}

export class Link {
  readonly role: Role;
  readonly peerPlace: string;
  private readonly stream: Duplex;
  private readonly handlers: LinkHandlers;
  private readonly reader: FrameReader;
  private readonly onFrame: TunnelOptions['onFrame'];
  private readonly local: HelloInfo;
  private readonly keepaliveMs: number;
  private readonly maxBacklog: number;
  private deadTimer: NodeJS.Timeout | undefined;
  private keepaliveTimer: NodeJS.Timeout | undefined;
  private peerMaxFrame = DEFAULT_MAX_FRAME_BYTES;
  private opened = false;
  private sawFrame = false;
  /** The start of what the peer sent before its first frame, to recognise a shell banner. */
  private firstBytes: Buffer | null = null;
  private closeReason: string | null = null;

  constructor(stream: Duplex, role: Role, opts: TunnelOptions, handlers: LinkHandlers) {
    this.stream = stream;
    this.role = role;
    this.peerPlace = place(role === 'holder' ? 'facade' : 'holder');
    this.handlers = handlers;
    this.reader = new FrameReader(opts.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES);
    this.onFrame = opts.onFrame;
    this.keepaliveMs = positiveMs(opts.keepaliveMs, DEFAULT_KEEPALIVE_MS, 'keepaliveMs');
    const deadPeerMs = positiveMs(opts.deadPeerMs, DEFAULT_DEAD_PEER_MS, 'deadPeerMs');
    if (!/^[\x20-\x7e]{1,100}$/.test(opts.software)) {
      throw new RangeError('software must be 1 to 100 printable ASCII characters');
    }
    this.maxBacklog = Math.max(8 << 20, 4 * this.reader.maxFrameBytes);
    this.local = {
      protocol: opts.protocol ?? TUNNEL_PROTOCOL,
      minProtocol: opts.minProtocol ?? MIN_TUNNEL_PROTOCOL,
      software: opts.software,
      role,
    };

    stream.on('data', this.onData);
    stream.on('end', () => this.onEnd());
    stream.on('close', () => this.onEnd());
    // Kept for the stream's whole life: a late EPIPE after close must not crash the process.
    stream.on('error', (e: Error) =>
      this.close(`connection to the ${this.peerPlace} failed: ${sanitize(e.message, 200)}`, false),
    );

    this.deadTimer = setTimeout(
      () =>
        this.close(
          this.opened
            ? `no answer from the ${this.peerPlace} for ${seconds(deadPeerMs)}`
            : `the ${this.peerPlace} did not start the tunnel protocol within ${seconds(deadPeerMs)}`,
        ),
      deadPeerMs,
    );
    this.deadTimer.unref();

    this.send({
      type: 'hello',
      protocol: this.local.protocol,
      minProtocol: this.local.minProtocol,
      software: this.local.software,
      role,
      maxFrameBytes: this.reader.maxFrameBytes,
    });
  }

  get closed(): boolean {
    return this.closeReason !== null;
  }

  get isOpen(): boolean {
    return this.opened && this.closeReason === null;
  }

  /**
   * Resolves once what was written has mostly gone out (or the link closed): a payload sent in
   * many frames waits here between frames instead of queueing megabytes at once.
   */
  drained(): Promise<void> {
    if (this.closeReason !== null || this.stream.writableLength < DRAIN_BELOW_BYTES) {
      return Promise.resolve();
    }
    return new Promise<void>((resolve) => {
      const done = () => {
        this.stream.off('drain', done);
        this.stream.off('close', done);
        resolve();
      };
      this.stream.on('drain', done);
      this.stream.on('close', done);
    });
  }

  /**
   * Sends one message. Returns false (sending nothing) when the link is closed or the frame would
   * be larger than the peer accepts. `wipe` zeroes the frame once written (decrypted values).
   */
  send(header: OutHeader, body?: Uint8Array, wipe = false): boolean {
    if (this.closeReason !== null) return false;
    const frame = encodeFrame(header, body);
    if (frame.length - 4 > this.peerMaxFrame) {
      if (wipe) frame.fill(0);
      return false;
    }
    this.report('out', header.type, frame.length);
    try {
      this.stream.write(frame, wipe ? () => frame.fill(0) : undefined);
    } catch (e) {
      this.close(`could not write to the ${this.peerPlace}: ${sanitize(String(e), 200)}`, false);
      return false;
    }
    if (this.stream.writableLength > this.maxBacklog) {
      this.close(
        `the ${this.peerPlace} stopped reading (more than ${this.maxBacklog} bytes queued)`,
      );
      return false;
    }
    return true;
  }

  /** Ends the link: tells the peer why (when it can), ends the stream, reports once. */
  close(reason: string, notifyPeer = true): void {
    if (this.closeReason !== null) return;
    if (notifyPeer && this.stream.writable) {
      const short = sanitize(reason, LIMITS.reasonChars);
      try {
        const frame = encodeFrame({ type: 'close', reason: short });
        this.report('out', 'close', frame.length);
        this.stream.write(frame);
      } catch {
        // The stream is already failing; the peer will see EOF instead.
      }
    }
    this.closeReason = reason;
    clearTimeout(this.deadTimer);
    clearInterval(this.keepaliveTimer);
    this.reader.reset();
    try {
      this.stream.end();
    } catch {
      // Ending an already-broken stream is not our failure to report.
    }
    const stream = this.stream;
    const linger = setTimeout(() => stream.destroy(), CLOSE_LINGER_MS);
    linger.unref();
    stream.once('close', () => clearTimeout(linger));
    try {
      this.handlers.onClose(reason);
    } catch {
      // A close handler's bug must not escape into the stream's event loop.
    }
  }

  private report(dir: FrameDirection, type: string, bytes: number): void {
    if (!this.onFrame) return;
    try {
      this.onFrame(dir, type, bytes);
    } catch {
      // Counting hooks must not change the protocol's behaviour.
    }
  }

  private readonly onData = (chunk: unknown): void => {
    if (this.closeReason !== null) return;
    const buf = Buffer.isBuffer(chunk)
      ? chunk
      : typeof chunk === 'string'
        ? Buffer.from(chunk, 'latin1')
        : chunk instanceof Uint8Array
          ? Buffer.from(chunk.buffer, chunk.byteOffset, chunk.length)
          : null;
    if (buf === null) {
      this.close('the stream delivered something other than bytes');
      return;
    }
    this.deadTimer?.refresh();
    if (!this.sawFrame && this.firstBytes === null) {
      this.firstBytes = Buffer.from(buf.subarray(0, 64));
    }
    for (const ev of this.reader.push(buf)) {
      if (this.closeReason !== null) return;
      if (ev.type === 'error') {
        this.report('in', 'invalid', ev.length ?? 0);
        this.close(this.badData(ev.reason));
        return;
      }
      this.sawFrame = true;
      this.firstBytes = null;
      this.onPayload(ev.payload, ev.bytes);
    }
  };

  private onEnd(): void {
    if (this.closeReason !== null) return;
    const cut = this.reader.end();
    this.close(
      cut
        ? `the connection to the ${this.peerPlace} ended inside a frame`
        : this.opened
          ? `the ${this.peerPlace} closed the connection`
          : `the ${this.peerPlace} closed the connection before the tunnel handshake`,
      false,
    );
  }

  private badData(reason: string): string {
    const head = this.sawFrame ? null : this.firstBytes;
    if (head && looksLikeText(head)) {
      const text = sanitize(head.toString('latin1').replace(/\s+/g, ' ').trim(), 60);
      return (
        `the ${this.peerPlace} sent text instead of the keytether tunnel protocol ("${text}"); ` +
        `check that nothing (a login script, a banner) writes to its standard output`
      );
    }
    return `bad data from the ${this.peerPlace}: ${reason}`;
  }

  private onPayload(payload: Buffer, bytes: number): void {
    const decoded = decodePayload(payload);
    if (!decoded.ok) {
      this.report('in', decoded.type ?? 'invalid', bytes);
      if (decoded.id !== undefined && this.opened && this.role === 'holder') {
        this.handlers.onInvalidRequest(decoded.id, decoded.reason);
      } else {
        this.close(this.badData(decoded.reason));
      }
      return;
    }
    const message = decoded.message;
    this.report('in', message.type, bytes);
    switch (message.type) {
      case 'hello':
        this.onHello(message);
        return;
      case 'close':
        this.close(
          `the ${this.peerPlace} closed the tunnel: ${sanitize(message.reason, LIMITS.reasonChars)}`,
          false,
        );
        return;
      case 'ping':
        if (this.opened) this.send({ type: 'pong' });
        return;
      case 'pong':
        return;
    }
    if (!this.opened) {
      this.close(this.badData(`a ${message.type} message arrived before the handshake`));
      return;
    }
    if (!ACCEPTS[this.role].has(message.type)) {
      this.close(this.badData(`unexpected ${message.type} message`));
      return;
    }
    this.handlers.onMessage(message);
  }

  private onHello(hello: ReturnType<typeof HelloSchema.parse>): void {
    if (this.opened) {
      this.close(this.badData('a second hello'));
      return;
    }
    const n = negotiate(this.local, hello);
    if (!n.ok) {
      this.close(n.reason);
      return;
    }
    this.opened = true;
    if (hello.maxFrameBytes !== undefined) this.peerMaxFrame = hello.maxFrameBytes;
    this.keepaliveTimer = setInterval(() => this.send({ type: 'ping' }), this.keepaliveMs);
    this.keepaliveTimer.unref();
    this.handlers.onOpen({
      software: hello.software,
      protocol: n.protocol,
      peerProtocol: hello.protocol,
    });
  }
}

function seconds(ms: number): string {
  return ms >= 1000 ? `${Math.round(ms / 100) / 10} s` : `${ms} ms`;
}

function looksLikeText(bytes: Buffer): boolean {
  if (bytes.length < 4) return false;
  for (const b of bytes) {
    if (!((b >= 0x20 && b < 0x7f) || b === 0x09 || b === 0x0a || b === 0x0d)) return false;
  }
  return true;
}
