// The holder `keytether connect`'s facade serves: whichever relayed tunnel is up right now, so
// the facade's socket outlives each relay connection (server/connect.ts makes and replaces them).

import { ErrorCode, GpgError } from '../protocol/gpg-error.js';
import type {
  DecryptRequest,
  DecryptResult,
  Inventory,
  KeyHolder,
  SignRequest,
  SshSignRequest,
} from '../protocol/keyholder.js';
import type { TunnelClient } from '../protocol/tunnel/index.js';

/**
 * A KeyHolder that is whichever tunnel is up right now. Between tunnels the inventory is the last
 * one seen (so gpg's chatty commands keep working) and operations fail at once with NO_AGENT,
 * which gpg reports as an agent error instead of hanging.
 */
export class RelayHolder implements KeyHolder {
  #tunnel: TunnelClient | undefined;
  #last: Inventory | undefined;

  set(tunnel: TunnelClient | undefined): void {
    this.#tunnel = tunnel;
    tunnel?.on('inventory', (inv) => (this.#last = inv));
    tunnel?.on('close', () => {
      if (this.#tunnel === tunnel) this.#tunnel = undefined;
    });
  }

  get current(): TunnelClient | undefined {
    return this.#tunnel;
  }

  async inventory(): Promise<Inventory> {
    if (this.#tunnel) {
      try {
        return (this.#last = await this.#tunnel.inventory());
      } catch (e) {
        if (this.#last) return this.#last;
        throw e;
      }
    }
    if (this.#last) return this.#last;
    throw this.#down();
  }

  sign(req: SignRequest, signal?: AbortSignal): Promise<Uint8Array> {
    return this.#tunnel ? this.#tunnel.sign(req, signal) : Promise.reject(this.#down());
  }

  decrypt(req: DecryptRequest, signal?: AbortSignal): Promise<DecryptResult> {
    return this.#tunnel ? this.#tunnel.decrypt(req, signal) : Promise.reject(this.#down());
  }

  sshSign(req: SshSignRequest, signal?: AbortSignal): Promise<Uint8Array> {
    return this.#tunnel ? this.#tunnel.sshSign(req, signal) : Promise.reject(this.#down());
  }

  #down(): GpgError {
    return new GpgError(ErrorCode.NO_AGENT, 'the relay connection to the holder is down');
  }
}
