// What one gpg connection has told the agent so far. gpg sends RESET before every
// SIGKEY/SETKEY sequence, so nothing here outlives a signing or decryption attempt by much.

import type { NoPromptMode } from '../keyholder.js';
import type { HashSetting } from './args.js';

export class AgentSession {
  /** Extra-socket behaviour (§3); can be switched on mid-session by pretend-request-origin. */
  restricted: boolean;
  keygrip: string | undefined;
  hash: HashSetting | undefined;
  /** SETKEYDESC text, decoded; consumed by the next PKSIGN/PKDECRYPT. */
  keyDescription: string | undefined;
  /**
   * The client's environment (ttyname, display, putenv …); PINENTRY_USER_DATA carries the
   * git-sign shim's content nonce. The holder never unlocks with the client's terminal.
   */
  readonly env = new Map<string, string>();
  ephemeral = false;
  /**
   * `OPTION pinentry-mode`: `cancel`/`error` travel with each request so the holder never
   * prompts for it. `loopback` is treated as `ask`: the server never supplies the passphrase.
   * Kept across RESET, as by gpg-agent (an option, not part of the key selection).
   */
  noPrompt: NoPromptMode | undefined;

  constructor(restricted: boolean) {
    this.restricted = restricted;
  }

  /** RESET: forget the key, hash and description (the real agent's reset_notify). */
  reset(): void {
    this.keygrip = undefined;
    this.clearHash();
    this.keyDescription = undefined;
  }

  clearHash(): void {
    this.hash?.digest.fill(0);
    this.hash = undefined;
  }

  takeDescription(): string | undefined {
    const d = this.keyDescription;
    this.keyDescription = undefined;
    return d;
  }
}
