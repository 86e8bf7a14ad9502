// The workstation's own ssh-agent as a back end (OpenSSH's ssh-agent, gpg-agent's ssh socket with
// its sshcontrol keys, a token's agent): its keys are offered to the ssh-agent fronts with the
// holder's policy, prompts and audit in front of them. They can only make SSH signatures: the
// agent signs data, never an OpenPGP digest, so gpg never sees them.

import net from 'node:net';
import { ErrorCode, GpgError } from '../../protocol/gpg-error.js';
import type { Inventory, KeyEntry } from '../../protocol/keyholder.js';
import { keygrip, publicKeySexp } from '../../protocol/keygrip.js';
import { SshAgentClient, type AgentIdentity } from '../../protocol/ssh-agent/client.js';
import { publicKeyFromBlob, sigValFromSsh } from '../../protocol/ssh-agent/keys.js';
import { sshFingerprint } from '../../protocol/ssh-agent/index.js';
import { SIGN_FLAGS } from '../../protocol/ssh-agent/wire.js';
import { LIMITS } from '../../protocol/tunnel/messages.js';
import type { Backend, KeyOperator, OpenContext } from './backend.js';

export interface SshAgentBackendOptions {
  /** The agent's socket (SSH_AUTH_SOCK). */
  socket: string;
  /** How long the key list is reused (ms); default 1000. */
  listTtlMs?: number;
  /** How long a signature may take, a touch or a PIN on a token included (ms); default 120 s. */
  signTimeoutMs?: number;
}

const CONNECT_TIMEOUT_MS = 5_000;

export class SshAgentBackend implements Backend {
  readonly name = 'ssh-agent';
  readonly #opts: SshAgentBackendOptions;
  /** keygrip → the agent's key blob. */
  readonly #blobs = new Map<string, Buffer>();
  #listed: { at: number; inv: Inventory } | undefined;
  #listing: Promise<Inventory> | undefined;

  constructor(opts: SshAgentBackendOptions) {
    this.#opts = opts;
  }

  /** A fresh connection per use: the agent is local, and a stale one would fail a request. */
  #connect(): Promise<SshAgentClient> {
    return new Promise((resolve, reject) => {
      const s = net.connect(this.#opts.socket);
      const timer = setTimeout(() => {
        s.destroy();
        reject(new Error('the connection timed out'));
      }, CONNECT_TIMEOUT_MS);
      s.once('connect', () => {
        clearTimeout(timer);
        resolve(new SshAgentClient(s));
      });
      s.once('error', (e: NodeJS.ErrnoException) => {
        clearTimeout(timer);
        reject(new Error(e.code ?? e.message));
      });
    });
  }

  async inventory(): Promise<Inventory> {
    const ttl = this.#opts.listTtlMs ?? 1000;
    if (this.#listed && Date.now() - this.#listed.at < ttl) return this.#listed.inv;
    this.#listing ??= this.#list().finally(() => (this.#listing = undefined));
    return this.#listing;
  }

  async #list(): Promise<Inventory> {
    let ids: AgentIdentity[];
    try {
      const c = await this.#connect();
      try {
        ids = await c.identities();
      } finally {
        c.close();
      }
    } catch {
      // An agent that is not running has no keys; it may start later.
      ids = [];
    }
    const keys: KeyEntry[] = [];
    this.#blobs.clear();
    for (const id of ids) {
      const pk = publicKeyFromBlob(id.blob);
      if (!pk) continue;
      const grip = keygrip(pk.params);
      if (this.#blobs.has(grip)) continue;
      this.#blobs.set(grip, id.blob);
      const fpr = sshFingerprint(id.blob);
      keys.push({
        keygrip: grip,
        fingerprint: fpr,
        primaryFingerprint: fpr,
        algorithm: pk.algorithm,
        usage: ['auth'],
        publicKey: publicKeySexp(pk.params),
        protection: '-',
        ...(id.comment ? { comment: id.comment.slice(0, LIMITS.keyCommentChars) } : {}),
      });
    }
    const inv: Inventory = { keys, certificates: [] };
    this.#listed = { at: Date.now(), inv };
    return inv;
  }

  async open(entry: KeyEntry, ctx: OpenContext): Promise<KeyOperator> {
    const blob = this.#blobs.get(entry.keygrip.toUpperCase());
    if (!blob) throw new GpgError(ErrorCode.NO_SECKEY);
    const refuse = (): never => {
      throw new GpgError(
        ErrorCode.NOT_SUPPORTED,
        'a key of the workstation ssh-agent only makes SSH signatures',
      );
    };
    return {
      sign: refuse,
      decrypt: refuse,
      signSsh: async (data, hash) => {
        if (ctx.signal?.aborted) throw new GpgError(ErrorCode.CANCELED);
        const flags =
          entry.algorithm.startsWith('rsa') && hash === 'sha512'
            ? SIGN_FLAGS.RSA_SHA2_512
            : entry.algorithm.startsWith('rsa') && hash === 'sha256'
              ? SIGN_FLAGS.RSA_SHA2_256
              : 0;
        let c: SshAgentClient;
        try {
          c = await this.#connect();
        } catch (e) {
          throw new GpgError(
            ErrorCode.NO_AGENT,
            `cannot reach the workstation's ssh-agent at ${this.#opts.socket} (${(e as Error).message})`,
          );
        }
        const stop = (): void => c.close();
        ctx.signal?.addEventListener('abort', stop, { once: true });
        try {
          const sig = await c.sign(blob, data, flags, this.#opts.signTimeoutMs ?? 120_000);
          return sigValFromSsh(sig);
        } catch (e) {
          if (ctx.signal?.aborted) throw new GpgError(ErrorCode.CANCELED);
          throw new GpgError(
            ErrorCode.GENERAL,
            `the workstation's ssh-agent did not sign: ${(e as Error).message}`,
          );
        } finally {
          ctx.signal?.removeEventListener('abort', stop);
          c.close();
        }
      },
    };
  }
}
