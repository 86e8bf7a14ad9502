// GETINFO. gpg's own flows only ask `version` (an error there is fatal) and, after a FORBIDDEN
// OPTION, `restricted`; the rest is answered the way the real agent does where that is cheap.

import { ErrorCode, GpgError } from '../gpg-error.js';
import type { AgentSession } from './session.js';
import { paramError, parseArgs } from './args.js';

/** What `GETINFO s2k_count` reports; gpg uses it for --symmetric (gpg's long-standing default). */
export const S2K_COUNT = '65011712';

/** Answered on the extra socket too (agent/command.c cmd_getinfo). */
const RESTRICTED_ALLOWED = new Set([
  'version',
  'cmd_has_option',
  's2k_count',
  'restricted',
  'ephemeral',
]);

/** Real subcommands that describe the agent host; a forwarded agent has nothing true to say. */
const NOT_SUPPORTED = new Set([
  'socket_name',
  'ssh_socket_name',
  's2k_count_cal',
  's2k_time',
  'std_env_names',
  'std_session_env',
  'std_startup_env',
  'getenv',
  'connections',
  'jent_active',
]);

export interface GetInfoContext {
  session: AgentSession;
  version: string;
  pid: number;
}

/** Returns the data to send, or undefined for a plain OK. */
export function getInfo(args: string, c: GetInfoContext): string | undefined {
  const words = parseArgs(args).words;
  const what = words[0] ?? '';
  if (c.session.restricted && !RESTRICTED_ALLOWED.has(what)) {
    throw new GpgError(ErrorCode.FORBIDDEN);
  }
  switch (what) {
    case 'version':
      return c.version;
    case 'pid':
      return String(c.pid);
    case 'restricted':
      if (c.session.restricted) return undefined;
      throw new GpgError(ErrorCode.FALSE);
    case 'ephemeral':
      if (c.session.ephemeral) return undefined;
      throw new GpgError(ErrorCode.FALSE);
    case 'cmd_has_option':
      if (words.length < 3) throw new GpgError(ErrorCode.MISSING_VALUE);
      // The only options the real agent reports belong to commands keytether forbids.
      throw new GpgError(ErrorCode.FALSE);
    case 's2k_count':
      return S2K_COUNT;
    case 'scd_running':
      throw new GpgError(ErrorCode.FALSE);
    default:
      if (NOT_SUPPORTED.has(what)) throw new GpgError(ErrorCode.NOT_SUPPORTED);
      throw paramError('unknown value for WHAT');
  }
}
