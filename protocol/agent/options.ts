// OPTION handling. Refusals must be exactly the ones gpg tolerates (§2.1): in restricted mode the
// environment options get FORBIDDEN with source GPG Agent, which makes gpg ask
// `GETINFO restricted` and stop sending them; any other error on them aborts gpg.

import { ErrorCode, GpgError } from '../gpg-error.js';
import type { AgentSession } from './session.js';

const ENV_OPTIONS: Readonly<Record<string, string>> = {
  display: 'DISPLAY',
  ttyname: 'GPG_TTY',
  ttytype: 'TERM',
  'lc-ctype': 'LC_CTYPE',
  'lc-messages': 'LC_MESSAGES',
  xauthority: 'XAUTHORITY',
  'pinentry-user-data': 'PINENTRY_USER_DATA',
};

/** Most environment entries one session keeps (gpg itself sends around ten). */
export const MAX_SESSION_ENV = 64;

const PINENTRY_MODES = new Set<string>(['ask', 'default', 'cancel', 'error', 'loopback']);

/** Options a restricted (extra-socket) connection may still set. */
const RESTRICTED_ALLOWED = new Set([
  'agent-awareness',
  'ephemeral',
  // The real extra socket forbids this, which breaks `gpg --pinentry-mode loopback` on servers.
  // keytether never asks the remote side for a passphrase (DESIGN "Trust boundaries"), so the
  // mode is harmless to accept.
  'pinentry-mode',
]);

export function applyOption(session: AgentSession, rawName: string, value: string | undefined) {
  const name = rawName.startsWith('--') ? rawName.slice(2) : rawName;
  if (session.restricted && !RESTRICTED_ALLOWED.has(name)) {
    throw new GpgError(ErrorCode.FORBIDDEN);
  }
  const envName = ENV_OPTIONS[name];
  if (envName !== undefined) {
    session.env.set(envName, value ?? '');
    return;
  }
  switch (name) {
    case 'putenv': {
      if (!value) throw new GpgError(ErrorCode.INV_VALUE);
      const eq = value.indexOf('=');
      if (eq < 0) session.env.delete(value);
      else {
        const key = value.slice(0, eq);
        // gpg sends about ten of these; the cap bounds a hostile client. Extra ones are accepted
        // and dropped rather than refused, because an error here would abort gpg.
        if (!session.env.has(key) && session.env.size >= MAX_SESSION_ENV) return;
        session.env.set(key, value.slice(eq + 1));
      }
      return;
    }
    case 'pinentry-mode':
      if (value === undefined || !PINENTRY_MODES.has(value)) {
        throw new GpgError(ErrorCode.INV_VALUE);
      }
      // cancel/error are carried to the holder, which answers them as gpg-agent does instead of
      // prompting; ask, default and loopback all mean the holder's own pinentry (the server
      // never supplies a passphrase).
      session.noPrompt = value === 'cancel' || value === 'error' ? value : undefined;
      return;
    case 'pretend-request-origin':
      // Like the real agent: a client may ask to be treated as remote, never the reverse, and a
      // bad value errs on the restricted side.
      if (value === 'none' || value === 'local') return;
      session.restricted = true;
      if (value !== 'remote' && value !== 'browser') throw new GpgError(ErrorCode.INV_VALUE);
      return;
    case 'ephemeral':
      session.ephemeral = value === undefined || value === '' || value !== '0';
      return;
    case 'agent-awareness':
    case 'allow-pinentry-notify':
    case 'use-cache-for-signing':
    case 'cache-ttl-opt-preset':
    case 's2k-count':
      // Accepted for compatibility; caching and pinentry are the holder's business.
      return;
    default:
      throw new GpgError(ErrorCode.UNKNOWN_OPTION);
  }
}
