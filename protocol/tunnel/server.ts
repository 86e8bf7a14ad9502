// The holder's end of a tunnel (Go's agent.ServeAgent): answers sign/decrypt requests from the
// facade with a KeyHolder and pushes the holder's inventory whenever it changes. The facade is
// on a server the workstation does not fully trust, so everything it sends is validated first and
// its claims about the requester can be rewritten by the transport (`requester` option).

import type { Duplex } from 'node:stream';
import { ErrorCode, GpgError, toGpgError } from '../gpg-error.js';
import type { Inventory, KeyHolder, Requester, SignContent } from '../keyholder.js';
import { Link, type PeerInfo, type TunnelOptions } from './link.js';
import { InventorySchema, LIMITS, sanitize, type Message, type MessageOf } from './messages.js';

export interface TunnelServerOptions extends TunnelOptions {
  /**
   * Rewrites the requester the facade claims before the holder sees it; the transport knows
   * facts the remote side cannot be trusted to report (front, host, token).
   */
  requester?: (claimed: Requester) => Requester;
  /** Registers a change listener; the returned function unsubscribes when the link closes. */
  onInventoryChange?: (changed: () => void) => (() => void) | void;
  /** Requests served at once on one link; more are refused (Limit reached). Default 32. */
  maxInFlight?: number;
  /**
   * One sentence when the link first goes over maxInFlight, for the caller's log; not again
   * until it has been back under it, so a flood is one line, not one per request.
   */
  onLimit?: (sentence: string) => void;
}

export interface TunnelServerHandle {
  /** Re-reads the holder's inventory and pushes it to the facade. */
  inventoryChanged(): void;
  close(reason?: string): void;
  /** Resolves once the handshake succeeded and the first inventory was sent. */
  readonly ready: Promise<PeerInfo>;
  /** Resolves (never rejects) when the link is gone, with the reason. */
  readonly closed: Promise<{ reason: string }>;
}

/** gpg has one request open per connection; 32 at once on a link is a flood, not a build. */
export const DEFAULT_MAX_IN_FLIGHT = 32;

export function serveTunnel(
  holder: KeyHolder,
  stream: Duplex,
  opts: TunnelServerOptions,
): TunnelServerHandle {
  const inFlight = new Map<number, AbortController>();
  const maxInFlight = opts.maxInFlight ?? DEFAULT_MAX_IN_FLIGHT;
  let overLimit = false;
  let unsubscribe: (() => void) | void = undefined;
  let pushing = false;
  let pushAgain = false;
  let firstPushDone = false;

  let resolveClosed!: (v: { reason: string }) => void;
  const closed = new Promise<{ reason: string }>((r) => (resolveClosed = r));
  let resolveReady!: (p: PeerInfo) => void;
  let rejectReady!: (e: Error) => void;
  const ready = new Promise<PeerInfo>((res, rej) => {
    resolveReady = res;
    rejectReady = rej;
  });
  ready.catch(() => {});
  let peer: PeerInfo | undefined;
  // Payloads arriving in `content` frames ahead of their sign request, by request id. One link
  // buffers at most one maximal payload (and its git objects) in all, so a facade cannot make the
  // holder hoard memory.
  interface Pending {
    data: Buffer[];
    dataBytes: number;
    objects: Buffer[];
    objectBytes: number;
  }
  const contents = new Map<number, Pending>();
  const refusedContent = new Set<number>();
  let bufferedContent = 0;
  const dropContent = (id: number): Pending | undefined => {
    const c = contents.get(id);
    if (!c) return undefined;
    contents.delete(id);
    bufferedContent -= c.dataBytes + c.objectBytes;
    return c;
  };
  const takeContent = (msg: MessageOf<'content'>): void => {
    if (refusedContent.has(msg.id)) return;
    if (inFlight.has(msg.id)) {
      link.close(`bad data from the ${link.peerPlace}: content for request ${msg.id} after it`);
      return;
    }
    const c = contents.get(msg.id) ?? { data: [], dataBytes: 0, objects: [], objectBytes: 0 };
    const refuse = (why: string) => {
      dropContent(msg.id);
      refusedContent.add(msg.id);
      replyError(msg.id, new GpgError(ErrorCode.INV_DATA, why));
    };
    const isObjects = msg.part === 'objects';
    const have = isObjects ? c.objectBytes : c.dataBytes;
    if (msg.offset !== have) return refuse('the payload arrived out of order');
    if (isObjects && have + msg.body.length > LIMITS.gitObjectBytes) {
      return refuse(`the git objects are larger than ${LIMITS.gitObjectBytes >> 20} MiB`);
    }
    if (!isObjects && bufferedContent + msg.body.length > LIMITS.contentBytes) {
      return refuse(`the payload is larger than ${LIMITS.contentBytes >> 20} MiB`);
    }
    if (bufferedContent + msg.body.length > LIMITS.contentBytes + LIMITS.gitObjectBytes) {
      return refuse('more payload than one request may bring');
    }
    if (isObjects) {
      c.objects.push(Buffer.from(msg.body));
      c.objectBytes += msg.body.length;
    } else {
      c.data.push(Buffer.from(msg.body));
      c.dataBytes += msg.body.length;
    }
    bufferedContent += msg.body.length;
    contents.set(msg.id, c);
  };

  const replyError = (id: number, e: unknown): void => {
    const err = toGpgError(e);
    link.send({
      type: 'error',
      id,
      code: err.code === 0 ? ErrorCode.GENERAL : err.code,
      source: err.source & 127,
      ...(err.detail ? { message: sanitize(err.detail, LIMITS.errorMessageChars) } : {}),
    });
  };

  // Inventory reads are serialised and coalesced: a burst of changes costs one or two pushes,
  // and the facade always ends up with the latest.
  const pushInventory = async (): Promise<void> => {
    if (pushing) {
      pushAgain = true;
      return;
    }
    pushing = true;
    try {
      do {
        pushAgain = false;
        let header;
        let inv: Inventory;
        try {
          inv = await holder.inventory();
          header = {
            type: 'inventory' as const,
            // SSH-only keys (an ssh-agent back end, imported OpenSSH keys) have no OpenPGP
            // fingerprint, which a facade before protocol 7 requires of every key.
            // A comment came with protocol 8; an older facade's strict schema refuses it.
            keys: inv.keys
              .filter((k) => (peer?.protocol ?? 1) >= 7 || isOpenPgpKey(k))
              .map(({ comment, ...k }) => ({
                ...k,
                ...(comment !== undefined && (peer?.protocol ?? 1) >= 8 ? { comment } : {}),
                publicKey: Buffer.from(k.publicKey).toString('base64'),
              })),
            certificates: inv.certificates,
            // A protocol-2 facade's schema is strict and would refuse the whole inventory.
            ...(inv.agentVersion !== undefined && (peer?.protocol ?? 1) >= 3
              ? { agentVersion: inv.agentVersion }
              : {}),
          };
        } catch (e) {
          // A later failure keeps the facade on the last good inventory; a first one leaves it
          // with nothing to serve, so the user should hear why.
          if (!firstPushDone) {
            link.close(`the key holder could not list its keys: ${toGpgError(e).message}`);
          }
          return;
        }
        if (link.closed) return;
        // Checked here, by the same schema the facade uses, so a holder bug is reported where
        // it can be fixed instead of as "bad data" on a server.
        const valid = InventorySchema.safeParse(header);
        if (!valid.success) {
          const issue = valid.error.issues[0];
          link.close(
            `the key holder's inventory is invalid (${sanitize(`${issue?.path.join('.')}: ${issue?.message}`, 200)})`,
          );
          return;
        }
        if (!link.send(header)) {
          if (!link.closed) {
            link.close(
              `the key inventory (${inv.keys.length} keys, ${inv.certificates.length} certificates) is larger than the server accepts in one frame; raise maxFrameBytes on the server`,
            );
          }
          return;
        }
        if (!firstPushDone && peer) {
          firstPushDone = true;
          resolveReady(peer);
        }
      } while (pushAgain && !link.closed);
    } finally {
      pushing = false;
    }
  };

  const serve = async (
    msg: MessageOf<'sign'> | MessageOf<'decrypt'> | MessageOf<'ssh-sign'>,
  ): Promise<void> => {
    if (refusedContent.delete(msg.id)) return; // already answered with the refusal
    if (inFlight.has(msg.id)) {
      link.close(`bad data from the ${link.peerPlace}: request id ${msg.id} is already in use`);
      return;
    }
    if (inFlight.size >= maxInFlight) {
      const sentence = `more than ${maxInFlight} requests at once on this link`;
      replyError(msg.id, new GpgError(ErrorCode.LIMIT_REACHED, sentence));
      if (!overLimit) {
        overLimit = true;
        try {
          opts.onLimit?.(`the ${link.peerPlace} sent ${sentence}; refusing the rest`);
        } catch {
          // A failing logger must not change what the facade hears.
        }
      }
      return;
    }
    if (inFlight.size < maxInFlight / 2) overLimit = false;
    const controller = new AbortController();
    inFlight.set(msg.id, controller);
    try {
      let requester: Requester = msg.requester;
      if (opts.requester) requester = opts.requester(requester);
      if (msg.type === 'ssh-sign') {
        if (!holder.sshSign) {
          throw new GpgError(ErrorCode.NOT_SUPPORTED, 'this key holder makes no ssh signatures');
        }
        const sig = await holder.sshSign(
          {
            keygrip: msg.keygrip,
            data: Buffer.from(msg.body),
            purpose: msg.purpose,
            ...(msg.hash !== undefined ? { hash: msg.hash } : {}),
            ...(msg.subject !== undefined ? { subject: msg.subject } : {}),
            ...(msg.destination !== undefined ? { destination: msg.destination } : {}),
            requester,
          },
          controller.signal,
        );
        if (controller.signal.aborted || link.closed) return;
        if (
          sig.length > LIMITS.sigValBytes ||
          !link.send({ type: 'ssh-sign-result', id: msg.id }, sig)
        ) {
          replyError(msg.id, new GpgError(ErrorCode.GENERAL, 'signature too large for the tunnel'));
        }
        return;
      }
      const common = {
        keygrip: msg.keygrip,
        requester,
        ...(msg.description !== undefined ? { description: msg.description } : {}),
        ...(msg.pinentryMode !== undefined ? { pinentryMode: msg.pinentryMode } : {}),
      };
      if (msg.type === 'sign') {
        const pending = dropContent(msg.id);
        const meta = msg.content;
        let content: SignContent | undefined;
        if (meta) {
          const data = Buffer.concat(pending?.data ?? []);
          const objects = Buffer.concat(pending?.objects ?? []);
          if (data.length !== meta.bytes || objects.length !== (meta.objectBytes ?? 0)) {
            throw new GpgError(ErrorCode.INV_DATA, 'the payload is incomplete');
          }
          content = {
            kind: meta.kind,
            mode: meta.mode,
            time: meta.time,
            data,
            ...(meta.name !== undefined ? { name: meta.name } : {}),
            ...(objects.length > 0 ? { objects } : {}),
          };
        }
        const sig = await holder.sign(
          {
            ...common,
            hashAlgo: msg.hashAlgo,
            digest: Buffer.from(msg.body),
            ...(content ? { content } : {}),
          },
          controller.signal,
        );
        if (controller.signal.aborted || link.closed) return;
        if (
          sig.length > LIMITS.sigValBytes ||
          !link.send({ type: 'sign-result', id: msg.id }, sig)
        ) {
          replyError(msg.id, new GpgError(ErrorCode.GENERAL, 'signature too large for the tunnel'));
        }
      } else {
        const result = await holder.decrypt(
          { ...common, ciphertext: Buffer.from(msg.body) },
          controller.signal,
        );
        try {
          if (controller.signal.aborted || link.closed) return;
          const header = {
            type: 'decrypt-result' as const,
            id: msg.id,
            ...(result.padding !== undefined ? { padding: result.padding } : {}),
          };
          if (
            result.value.length > LIMITS.decryptedBytes ||
            !link.send(header, result.value, true)
          ) {
            replyError(msg.id, new GpgError(ErrorCode.GENERAL, 'decrypted value too large'));
          }
        } finally {
          // The frame holds its own copy; this one is no longer needed by anyone.
          if (result.value instanceof Uint8Array) result.value.fill(0);
        }
      }
    } catch (e) {
      if (!controller.signal.aborted) replyError(msg.id, e);
    } finally {
      inFlight.delete(msg.id);
    }
  };

  const link: Link = new Link(stream, 'holder', opts, {
    onOpen(info) {
      peer = info;
      void pushInventory();
    },
    onMessage(msg: Message) {
      switch (msg.type) {
        case 'sign':
        case 'decrypt':
        case 'ssh-sign':
          void serve(msg);
          return;
        case 'content':
          takeContent(msg);
          return;
        case 'cancel':
          dropContent(msg.id);
          refusedContent.delete(msg.id);
          inFlight.get(msg.id)?.abort(new GpgError(ErrorCode.CANCELED, 'cancelled by the server'));
          return;
      }
    },
    onInvalidRequest(id, reason) {
      replyError(id, new GpgError(ErrorCode.INV_DATA, reason));
    },
    onClose(reason) {
      for (const c of inFlight.values()) {
        c.abort(new GpgError(ErrorCode.CANCELED, 'the tunnel closed'));
      }
      inFlight.clear();
      contents.clear();
      bufferedContent = 0;
      try {
        if (typeof unsubscribe === 'function') unsubscribe();
      } catch {
        // Unsubscribing is best effort; the link is gone either way.
      }
      rejectReady(new Error(reason));
      resolveClosed({ reason });
    },
  });

  try {
    unsubscribe = opts.onInventoryChange?.(() => {
      if (link.isOpen) void pushInventory();
    });
  } catch (e) {
    link.close(`could not watch the key inventory: ${sanitize(String(e), 100)}`, true);
  }

  return {
    inventoryChanged() {
      if (link.isOpen) void pushInventory();
    },
    close(reason = 'closed by the workstation') {
      link.close(reason);
    },
    ready,
    closed,
  };
}

/** An SSH-only key is known by its `SHA256:` fingerprint instead. */
function isOpenPgpKey(k: { fingerprint: string }): boolean {
  return !k.fingerprint.startsWith('SHA256:');
}
