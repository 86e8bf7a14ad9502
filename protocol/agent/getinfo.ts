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
  'std_session_env',
  'std_startup_env',
  'getenv',
  'connections',
  'jent_active',
]);

/**
 * common/session-env.c stdenvnames of gpg-agent 2.4 (and master): the variables gpg forwards as
 * OPTIONs. 2.2 lacks the last one; keytether reports a 2.4-or-newer version, so it lists 2.4's.
 */
export const STD_ENV_NAMES: readonly string[] = Object.freeze([
  'GPG_TTY',
  'TERM',
  'DISPLAY',
  'XAUTHORITY',
  'XMODIFIERS',
  'WAYLAND_DISPLAY',
  'XDG_SESSION_TYPE',
  'QT_QPA_PLATFORM',
  'GTK_IM_MODULE',
  'DBUS_SESSION_BUS_ADDRESS',
  'QT_IM_MODULE',
  'INSIDE_EMACS',
  'PINENTRY_USER_DATA',
  'PINENTRY_GEOM_HINT',
]);

export interface GetInfoContext {
  session: AgentSession;
  version: string;
  pid: number;
}

/** Returns the data to send (a list: one D line each), or undefined for a plain OK. */
export function getInfo(args: string, c: GetInfoContext): string | string[] | undefined {
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
    case 'std_env_names':
      // Each name NUL-terminated, as the agent sends strlen(name)+1 bytes.
      return STD_ENV_NAMES.map((n) => `${n}\0`);
    case 'scd_running':
      throw new GpgError(ErrorCode.FALSE);
    default:
      if (NOT_SUPPORTED.has(what)) throw new GpgError(ErrorCode.NOT_SUPPORTED);
      throw paramError('unknown value for WHAT');
  }
}
