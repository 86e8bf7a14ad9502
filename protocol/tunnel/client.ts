// The facade's end of a tunnel (Go's agent.NewClient): something that is a KeyHolder again, so
// the one Assuan agent server runs on top of it unchanged. The inventory is whatever the holder
// last pushed; each sign/decrypt is exactly one request frame and one response frame.

import type { Duplex } from 'node:stream';
import { ErrorCode, GpgError } from '../gpg-error.js';
import type {
  DecryptRequest,
  DecryptResult,
  Inventory,
  KeyHolder,
  Requester,
  SignRequest,
  SshSignRequest,
} from '../keyholder.js';
import { Link, type PeerInfo, type TunnelOptions } from './link.js';
import { LIMITS, sanitize, type Message } from './messages.js';

export interface TunnelClientOptions extends TunnelOptions {
  /** How long inventory() waits for the holder's first push before failing. Default 10 s. */
  inventoryTimeoutMs?: number;
}

export interface TunnelClient extends KeyHolder {
  /** The holder's software and the agreed protocol; undefined until the handshake is done. */
  readonly peer: PeerInfo | undefined;
  /** Resolves once the handshake succeeded and the first inventory arrived; rejects on close. */
  readonly ready: Promise<void>;
  readonly closed: Promise<{ reason: string }>;
  /** Always there on a tunnel; a holder older than protocol 6 makes it refuse (Not supported). */
  sshSign(req: SshSignRequest, signal?: AbortSignal): Promise<Uint8Array>;
  /** Returns a function that removes the listener again. */
  on(ev: 'inventory', fn: (inv: Inventory) => void): () => void;
  on(ev: 'close', fn: (reason: string) => void): () => void;
  close(reason?: string): void;
}

export const DEFAULT_INVENTORY_TIMEOUT_MS = 10_000;

type Pending =
  | {
      kind: 'sign' | 'ssh-sign';
      resolve: (v: Uint8Array) => void;
      reject: (e: GpgError) => void;
      done(): void;
    }
  | {
      kind: 'decrypt';
      resolve: (v: DecryptResult) => void;
      reject: (e: GpgError) => void;
      done(): void;
    };

export function tunnelClient(stream: Duplex, opts: TunnelClientOptions): TunnelClient {
  return new Client(stream, opts);
}

class Client implements TunnelClient {
  peer: PeerInfo | undefined;
  readonly ready: Promise<void>;
  readonly closed: Promise<{ reason: string }>;
  private readonly link: Link;
  private readonly pending = new Map<number, Pending>();
  private readonly inventoryListeners: ((inv: Inventory) => void)[] = [];
  private readonly closeListeners: ((reason: string) => void)[] = [];
  private readonly inventoryTimeoutMs: number;
  private latest: Inventory | undefined;
  private waiters: { resolve: () => void; reject: (e: GpgError) => void }[] = [];
  private nextId = 1;
  private closeReason: string | undefined;
  /** Settles when the handshake is done (resolved) or the link closed (resolved too). */
  private readonly handshake: Promise<void>;
  private handshakeDone!: () => void;
  private resolveReady!: () => void;
  private rejectReady!: (e: Error) => void;
  private resolveClosed!: (v: { reason: string }) => void;

  constructor(stream: Duplex, opts: TunnelClientOptions) {
    this.inventoryTimeoutMs = opts.inventoryTimeoutMs ?? DEFAULT_INVENTORY_TIMEOUT_MS;
    this.ready = new Promise<void>((res, rej) => {
      this.resolveReady = res;
      this.rejectReady = rej;
    });
    // Callers that never await `ready` must not get an unhandled rejection when the link fails.
    this.ready.catch(() => {});
    this.closed = new Promise((r) => (this.resolveClosed = r));
    this.handshake = new Promise<void>((r) => (this.handshakeDone = r));
    this.link = new Link(stream, 'facade', opts, {
      onOpen: (peer) => {
        this.peer = peer;
        this.handshakeDone();
      },
      onMessage: (m) => this.onMessage(m),
      // Only the holder end receives requests.
      onInvalidRequest: () => {},
      onClose: (reason) => this.onClose(reason),
    });
  }

  on(ev: 'inventory', fn: (inv: Inventory) => void): () => void;
  on(ev: 'close', fn: (reason: string) => void): () => void;
  on(
    ev: 'inventory' | 'close',
    fn: ((inv: Inventory) => void) | ((reason: string) => void),
  ): () => void {
    const list: unknown[] = ev === 'inventory' ? this.inventoryListeners : this.closeListeners;
    list.push(fn);
    return () => {
      const i = list.indexOf(fn);
      if (i >= 0) list.splice(i, 1);
    };
  }

  close(reason = 'closed by the server'): void {
    this.link.close(reason);
  }

  async inventory(): Promise<Inventory> {
    if (this.latest) return this.latest;
    if (this.closeReason !== undefined) throw this.noAgent();
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== waiter);
        reject(new GpgError(ErrorCode.NO_AGENT, 'no key inventory from the workstation'));
      }, this.inventoryTimeoutMs);
      timer.unref();
      const waiter = {
        resolve: () => {
          clearTimeout(timer);
          resolve();
        },
        reject: (e: GpgError) => {
          clearTimeout(timer);
          reject(e);
        },
      };
      this.waiters.push(waiter);
    });
    if (!this.latest) throw this.noAgent();
    return this.latest;
  }

  /** What of REQUESTER the holder's schema takes: before protocol 4 it refuses `parents`. */
  private requesterFor(requester: Requester): Requester {
    if ((this.peer?.protocol ?? 1) >= 4) return requester;
    const { name: _name, parents: _parents, ...older } = requester;
    return older;
  }

  /**
   * The no-prompt mode, for a holder that takes it (protocol 5). An older holder's strict schema
   * would refuse the request; it gets none and may prompt, as it always did.
   */
  private pinentryModeFor(mode: SignRequest['pinentryMode']): {
    pinentryMode?: 'cancel' | 'error';
  } {
    return mode !== undefined && (this.peer?.protocol ?? 1) >= 5 ? { pinentryMode: mode } : {};
  }

  sign(req: SignRequest, signal?: AbortSignal): Promise<Uint8Array> {
    // Built when sent: what the holder accepts is known only after the handshake.
    const header = () => ({
      type: 'sign' as const,
      keygrip: req.keygrip,
      hashAlgo: req.hashAlgo,
      ...(req.description !== undefined ? { description: req.description } : {}),
      requester: this.requesterFor(req.requester),
      ...this.pinentryModeFor(req.pinentryMode),
    });
    // A holder on protocol 1 cannot take the payload; it then signs blind, as it always did.
    const content = req.content;
    if (!content || (this.peer?.protocol ?? 1) < 2) {
      return this.request('sign', signal, (id) => this.link.send({ ...header(), id }, req.digest));
    }
    // The git objects need protocol 4: an older holder's strict schema would refuse the request.
    const objects =
      (this.peer?.protocol ?? 1) >= 4 && (content.objects?.length ?? 0) <= LIMITS.gitObjectBytes
        ? content.objects
        : undefined;
    return this.request('sign', signal, async (id) => {
      const parts: ['data' | 'objects', Uint8Array][] = [['data', content.data]];
      if (objects && objects.length > 0) parts.push(['objects', objects]);
      for (const [part, bytes] of parts) {
        for (let offset = 0; offset < bytes.length; offset += LIMITS.contentChunkBytes) {
          const piece = bytes.subarray(offset, offset + LIMITS.contentChunkBytes);
          const frame = part === 'data' ? { offset } : { offset, part };
          if (!this.link.send({ type: 'content', id, ...frame }, piece)) return false;
          await this.link.drained();
          if (signal?.aborted) return true;
        }
      }
      const meta = {
        kind: content.kind,
        mode: content.mode,
        time: content.time,
        bytes: content.data.length,
        ...(content.name !== undefined ? { name: content.name } : {}),
        ...(objects && objects.length > 0 ? { objectBytes: objects.length } : {}),
      };
      return this.link.send({ ...header(), id, content: meta }, req.digest);
    });
  }

  async sshSign(req: SshSignRequest, signal?: AbortSignal): Promise<Uint8Array> {
    if (req.data.length > LIMITS.sshDataBytes) {
      throw new GpgError(ErrorCode.INV_LENGTH, 'ssh-agent data too large for the tunnel');
    }
    if (!this.link.isOpen && this.closeReason === undefined) await this.handshake;
    // An older holder would read an unknown message type as bad data and drop the whole link.
    if (this.peer && this.peer.protocol < 6) {
      throw new GpgError(
        ErrorCode.NOT_SUPPORTED,
        `the workstation's keytether (${sanitize(this.peer.software, 60)}) has no ssh-agent support; upgrade it`,
      );
    }
    return this.request('ssh-sign', signal, (id) =>
      this.link.send(
        {
          type: 'ssh-sign',
          id,
          keygrip: req.keygrip,
          ...(req.hash !== undefined ? { hash: req.hash } : {}),
          purpose: req.purpose,
          ...(req.subject !== undefined ? { subject: req.subject } : {}),
          ...(req.destination !== undefined ? { destination: req.destination } : {}),
          requester: this.requesterFor(req.requester),
        },
        req.data,
      ),
    );
  }

  decrypt(req: DecryptRequest, signal?: AbortSignal): Promise<DecryptResult> {
    return this.request('decrypt', signal, (id) =>
      this.link.send(
        {
          type: 'decrypt',
          id,
          keygrip: req.keygrip,
          ...(req.description !== undefined ? { description: req.description } : {}),
          requester: this.requesterFor(req.requester),
          ...this.pinentryModeFor(req.pinentryMode),
        },
        req.ciphertext,
      ),
    );
  }

  private async request<K extends Pending['kind']>(
    kind: K,
    signal: AbortSignal | undefined,
    send: (id: number) => boolean | Promise<boolean>,
  ): Promise<K extends 'decrypt' ? DecryptResult : Uint8Array> {
    if (!this.link.isOpen) {
      if (this.closeReason !== undefined) throw this.noAgent();
      // Requests made while the handshake is still running wait for it.
      await this.handshake;
      if (!this.link.isOpen) throw this.noAgent();
    }
    if (signal?.aborted) throw new GpgError(ErrorCode.CANCELED);
    const id = this.nextId;
    this.nextId = this.nextId >= 0xffffffff ? 1 : this.nextId + 1;
    return new Promise((resolve, reject) => {
      const failSend = () => {
        this.pending.delete(id);
        entry.done();
        reject(
          this.link.closed
            ? this.noAgent()
            : new GpgError(ErrorCode.INV_LENGTH, 'request too large for the tunnel'),
        );
      };
      const onAbort = () => {
        if (!this.pending.delete(id)) return;
        this.link.send({ type: 'cancel', id });
        reject(new GpgError(ErrorCode.CANCELED));
      };
      const entry = {
        kind,
        resolve,
        reject,
        done: () => signal?.removeEventListener('abort', onAbort),
      } as unknown as Pending;
      this.pending.set(id, entry);
      signal?.addEventListener('abort', onAbort, { once: true });
      const sent = send(id);
      if (sent === false) failSend();
      else if (sent !== true) {
        void sent.then(
          (ok) => {
            if (!ok && this.pending.has(id)) failSend();
          },
          () => this.pending.has(id) && failSend(),
        );
      }
    });
  }

  private onMessage(m: Message): void {
    switch (m.type) {
      case 'inventory': {
        const inv: Inventory = {
          keys: m.keys.map((k) => ({ ...k, publicKey: k.publicKey })),
          certificates: m.certificates,
          ...(m.agentVersion !== undefined ? { agentVersion: m.agentVersion } : {}),
        };
        const first = this.latest === undefined;
        this.latest = inv;
        for (const w of this.waiters.splice(0)) w.resolve();
        if (first) this.resolveReady();
        for (const fn of this.inventoryListeners) safeCall(() => fn(inv));
        return;
      }
      case 'sign-result':
      case 'ssh-sign-result':
      case 'decrypt-result':
      case 'error': {
        const p = this.pending.get(m.id);
        // Unknown ids are answers to requests this side already gave up on (cancelled).
        if (!p) {
          if (m.type === 'decrypt-result') m.body.fill(0);
          return;
        }
        if (m.type !== 'error' && m.type !== `${p.kind}-result`) {
          if (m.type === 'decrypt-result') m.body.fill(0);
          this.link.close(
            `bad data from the workstation: a ${m.type} answered a ${p.kind} request`,
          );
          return;
        }
        this.pending.delete(m.id);
        p.done();
        if (m.type === 'error') {
          p.reject(new GpgError(m.code, m.message || undefined, m.source));
        } else if (p.kind !== 'decrypt') {
          p.resolve(Buffer.from(m.body));
        } else {
          const value = Buffer.from(m.body);
          m.body.fill(0);
          p.resolve(
            m.type === 'decrypt-result' && m.padding !== undefined
              ? { value, padding: m.padding }
              : { value },
          );
        }
        return;
      }
    }
  }

  private onClose(reason: string): void {
    this.closeReason = reason;
    const err = this.noAgent();
    for (const p of this.pending.values()) {
      p.done();
      p.reject(err);
    }
    this.pending.clear();
    for (const w of this.waiters.splice(0)) w.reject(err);
    this.handshakeDone();
    this.rejectReady(new Error(reason));
    this.resolveClosed({ reason });
    for (const fn of this.closeListeners) safeCall(() => fn(reason));
  }

  private noAgent(): GpgError {
    return new GpgError(
      ErrorCode.NO_AGENT,
      this.closeReason ? `tunnel closed: ${this.closeReason}` : undefined,
    );
  }
}

function safeCall(fn: () => void): void {
  try {
    fn();
  } catch {
    // A listener's bug must not break the link or the other listeners.
  }
}
