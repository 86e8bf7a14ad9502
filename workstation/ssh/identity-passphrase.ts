// Asks for an encrypted SSH identity file's passphrase through the same pinentry program the
// holder uses for its own keys, worded like OpenSSH's prompt, with gpg-agent's retry line.

import { ErrorCode, GpgError } from '../../protocol/gpg-error.js';
import { Pinentry, type PassphraseAsker } from '../pinentry/pinentry.js';
import type { AskPassphrase } from './identity-agent.js';

export interface IdentityPinentryOptions {
  /** Program name or path (config `pinentry-program`, --pinentry-program); default 'pinentry'. */
  program?: string | undefined;
  timeoutMs?: number;
  env?: NodeJS.ProcessEnv;
}

/** An AskPassphrase over a pinentry; a Pinentry is made from `opts` unless one is given. */
export function pinentryAskPassphrase(
  opts: IdentityPinentryOptions | PassphraseAsker = {},
): AskPassphrase {
  const asker: PassphraseAsker =
    'getPassphrase' in opts
      ? opts
      : new Pinentry({
          program: opts.program ?? 'pinentry',
          ...(opts.timeoutMs !== undefined ? { timeoutMs: opts.timeoutMs } : {}),
          ...(opts.env ? { env: opts.env } : {}),
          title: 'keytether ssh',
        });
  return async ({ file, login, attempt, tries }) => {
    try {
      return await asker.getPassphrase({
        keygrip: '',
        description: `Enter the passphrase for the SSH key ${file}${login ? ` to log in as ${login}` : ''}.`,
        prompt: 'Passphrase:',
        ...(attempt > 1 ? { error: `Bad Passphrase (try ${attempt} of ${tries})` } : {}),
      });
    } catch (e) {
      if (e instanceof GpgError && e.code === ErrorCode.CANCELED) {
        throw new Error('passphrase entry cancelled');
      }
      if (e instanceof GpgError && e.code === ErrorCode.TIMEOUT) {
        throw new Error('no passphrase entered in time');
      }
      throw new Error(e instanceof Error ? e.message : String(e));
    }
  };
}
