// The holders behind one facade socket. Two SSH sessions to the same account share the fixed
// agent-socket path; instead of fighting over it, every session's holder joins one set and each
// operation goes to a holder that has the key. Ending one session leaves the others working.

import { newestVersion } from '../protocol/agent/version.js';
import { ErrorCode, GpgError } from '../protocol/gpg-error.js';
import type {
  Certificate,
  DecryptRequest,
  DecryptResult,
  Inventory,
  KeyEntry,
  KeyHolder,
  SignRequest,
  SshSignRequest,
} from '../protocol/keyholder.js';

/** Bounds the merged inventory whatever the holders push (each is already size-checked). */
const MAX_MEMBERS = 64;

export class HolderSet implements KeyHolder {
  /** Newest last: the most recent session is most likely the one the user is working in. */
  private readonly members: KeyHolder[] = [];
  private readonly emptyListeners: (() => void)[] = [];
  private readonly addListeners: (() => void)[] = [];

  get size(): number {
    return this.members.length;
  }

  /** Adds a holder; returns the function that removes it again. */
  add(holder: KeyHolder): () => void {
    if (this.members.length >= MAX_MEMBERS) {
      throw new GpgError(ErrorCode.GENERAL, 'too many sessions share this socket');
    }
    this.members.push(holder);
    for (const fn of this.addListeners.splice(0)) fn();
    let removed = false;
    return () => {
      if (removed) return;
      removed = true;
      const i = this.members.indexOf(holder);
      if (i >= 0) this.members.splice(i, 1);
      if (this.members.length === 0) for (const fn of this.emptyListeners.splice(0)) fn();
    };
  }

  /** Called once, the next time the last holder leaves. */
  onEmpty(fn: () => void): void {
    this.emptyListeners.push(fn);
  }

  /** Called once, the next time a holder joins. */
  onAdded(fn: () => void): void {
    this.addListeners.push(fn);
  }

  async inventory(): Promise<Inventory> {
    const invs = await this.inventories();
    const keys = new Map<string, KeyEntry>();
    const certs = new Map<string, Certificate>();
    // Newest first, so the entry gpg sees (cached flag, protection) is the one that will answer.
    for (const { inv } of invs) {
      for (const k of inv.keys) if (!keys.has(k.keygrip)) keys.set(k.keygrip, k);
      for (const c of inv.certificates) if (!certs.has(c.fingerprint)) certs.set(c.fingerprint, c);
    }
    const agentVersion = newestVersion(...invs.map(({ inv }) => inv.agentVersion));
    return {
      keys: [...keys.values()],
      certificates: [...certs.values()],
      ...(agentVersion !== undefined ? { agentVersion } : {}),
    };
  }

  async sign(req: SignRequest, signal?: AbortSignal): Promise<Uint8Array> {
    return (await this.holderFor(req.keygrip)).sign(req, signal);
  }

  async decrypt(req: DecryptRequest, signal?: AbortSignal): Promise<DecryptResult> {
    return (await this.holderFor(req.keygrip)).decrypt(req, signal);
  }

  async sshSign(req: SshSignRequest, signal?: AbortSignal): Promise<Uint8Array> {
    const holder = await this.holderFor(req.keygrip);
    if (!holder.sshSign) {
      throw new GpgError(ErrorCode.NOT_SUPPORTED, 'this key holder makes no ssh signatures');
    }
    return holder.sshSign(req, signal);
  }

  private async inventories(): Promise<{ holder: KeyHolder; inv: Inventory }[]> {
    const members = [...this.members].reverse();
    if (members.length === 0) throw new GpgError(ErrorCode.NO_AGENT);
    const settled = await Promise.allSettled(
      members.map(async (holder) => ({ holder, inv: await holder.inventory() })),
    );
    const ok = settled.flatMap((s) => (s.status === 'fulfilled' ? [s.value] : []));
    if (ok.length === 0) throw new GpgError(ErrorCode.NO_AGENT);
    return ok;
  }

  private async holderFor(keygrip: string): Promise<KeyHolder> {
    for (const { holder, inv } of await this.inventories()) {
      if (inv.keys.some((k) => k.keygrip === keygrip)) return holder;
    }
    throw new GpgError(ErrorCode.NO_SECKEY);
  }
}
