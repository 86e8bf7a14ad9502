// Resolves `[USER@]HOST` plus `-p`/`-i`/`-o` and ssh_config into the settings one connection
// needs, the way OpenSSH does: the first value obtained wins, command-line options beat
// ~/.ssh/config, which beats /etc/ssh/ssh_config. Parsing and Host/Match evaluation come from the
// `ssh-config` package; this module adds Include, token expansion and validation.

import os from 'node:os';
import path from 'node:path';
import SSHConfig from 'ssh-config';
import { UsageError, UserError } from '../../system/user-error.js';
import { FORBIDDEN_NAME_CHARS, expandTokens, parsePort, parseTarget } from './destination.js';
import { expandTilde, readConfigText } from './config-files.js';
import { resolveProxy, type ProxySettings } from './proxy-config.js';

export { expandTokens, parsePort, parseTarget } from './destination.js';

export type StrictHostKeyChecking = 'yes' | 'no' | 'ask' | 'accept-new';

export interface SshTarget {
  /** The host as given (the ssh_config alias). */
  host: string;
  /** What to connect to (HostName, else host). */
  hostName: string;
  user: string;
  port: number;
  /** Absolute paths, in the order to try them. */
  identityFiles: string[];
  /** True when no IdentityFile was configured and these are OpenSSH's defaults (may not exist). */
  identityFilesDefaulted: boolean;
  identitiesOnly: boolean;
  /** Agent socket to use: a path, or undefined for none (IdentityAgent none / no SSH_AUTH_SOCK). */
  identityAgent: string | undefined;
  /** UserKnownHostsFile: checked, and the first one is where new keys are recorded. */
  knownHostsFiles: string[];
  /** GlobalKnownHostsFile: checked only. */
  globalKnownHostsFiles: string[];
  strictHostKeyChecking: StrictHostKeyChecking;
  /** HostKeyAlias: the name to look up in known_hosts instead of hostName. */
  hostKeyAlias: string | undefined;
  hashKnownHosts: boolean;
  connectTimeoutMs: number | undefined;
  serverAliveIntervalMs: number | undefined;
  serverAliveCountMax: number | undefined;
  /** ProxyJump as configured or given with -J (undefined for none). */
  proxyJump: string | undefined;
  /**
   * The hosts to pass through, first one first, each resolved from its own config block as
   * OpenSSH does (a first hop's own ProxyJump is spliced in front of it).
   */
  jumps: SshTarget[];
  /** ProxyCommand with its %-tokens expanded, when it (not ProxyJump) applies. */
  proxyCommand: string | undefined;
  /** Plain sentences about configuration that was ignored. */
  unsupported: string[];
}

export interface ResolveSshTargetOptions {
  /** `[USER@]HOST` or `ssh://[USER@]HOST[:PORT]`. */
  target: string;
  /** `-p PORT`: beats everything else. */
  port?: number;
  /** `-i FILE` (repeatable): tried before configured IdentityFiles. */
  identities?: string[];
  /** `-o Name=Value` (repeatable): beat the config files. */
  options?: string[];
  /** `-J [USER@]HOST[:PORT][,…]`: ProxyJump given on the command line. */
  jump?: string;
  /** User config; default `~/.ssh/config`; null for none. */
  configFile?: string | null;
  /** System config; default `/etc/ssh/ssh_config`; null for none. */
  systemConfigFile?: string | null;
  env?: NodeJS.ProcessEnv;
  /** Home directory for `~` and `%d` (default: HOME from env, else the OS's). */
  home?: string;
  /** Local user name for `%u` (default: the OS's). */
  localUser?: string;
}

const MAX_OPTION_LENGTH = 4096;
const DEFAULT_IDENTITIES = [
  'id_rsa',
  'id_ecdsa',
  'id_ecdsa_sk',
  'id_ed25519',
  'id_ed25519_sk',
  'id_xmss',
  'id_dsa',
];
const NOT_ALLOWED_ON_COMMAND_LINE = new Set(['host', 'match', 'include']);

/** `-o Name=Value` or `-o "Name Value"` → one ssh_config line. */
function optionToLine(option: string): string {
  if (option.length > MAX_OPTION_LENGTH || /[\r\n\0]/.test(option)) {
    throw new UsageError(`-o ${JSON.stringify(option.slice(0, 40))} is not a valid ssh option`);
  }
  const m = /^\s*([A-Za-z][A-Za-z0-9]*)\s*(?:=|\s)\s*(.*?)\s*$/.exec(option);
  if (!m || m[2] === '') {
    throw new UsageError(`-o ${JSON.stringify(option)} is not of the form Name=Value`);
  }
  const name = m[1] ?? '';
  if (NOT_ALLOWED_ON_COMMAND_LINE.has(name.toLowerCase())) {
    throw new UsageError(`-o ${name} is not allowed on the command line; put it in ~/.ssh/config`);
  }
  return `${name} ${m[2]}`;
}

function first(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v[0] : v;
}

function list(v: string | string[] | undefined): string[] {
  if (v === undefined) return [];
  return Array.isArray(v) ? v : v.split(/\s+/).filter(Boolean);
}

function yesNo(v: string | undefined, name: string, dflt: boolean): boolean {
  if (v === undefined) return dflt;
  const s = v.toLowerCase();
  if (s === 'yes' || s === 'true') return true;
  if (s === 'no' || s === 'false') return false;
  throw new UserError(`ssh option ${name} must be yes or no, not ${JSON.stringify(v)}`);
}

function seconds(v: string | undefined, name: string): number | undefined {
  if (v === undefined || v.toLowerCase() === 'none') return undefined;
  if (!/^\d{1,6}$/.test(v)) {
    throw new UserError(`ssh option ${name} must be a number of seconds, not ${JSON.stringify(v)}`);
  }
  return Number(v) * 1000;
}

export function resolveSshTarget(opts: ResolveSshTargetOptions): SshTarget {
  return resolveWith(opts, (home) => {
    const state = { files: 0 };
    const configFile =
      opts.configFile === undefined ? path.join(home, '.ssh', 'config') : opts.configFile;
    const systemFile =
      opts.systemConfigFile === undefined ? '/etc/ssh/ssh_config' : opts.systemConfigFile;
    const texts: string[] = [];
    if (configFile) texts.push(readConfigText(configFile, path.join(home, '.ssh'), home, state, 0));
    if (systemFile) texts.push(readConfigText(systemFile, '/etc/ssh', home, state, 0));
    return texts;
  });
}

/**
 * resolveSshTarget over config texts already read (user file first, then system), without
 * Include: what the files say, for callers that hold them in memory. opts.configFile and
 * opts.systemConfigFile are not looked at.
 */
export function resolveSshTargetFromText(
  opts: ResolveSshTargetOptions,
  configTexts: readonly string[],
): SshTarget {
  return resolveWith(opts, () => configTexts);
}

function resolveWith(
  opts: ResolveSshTargetOptions,
  readConfigs: (home: string) => readonly string[],
): SshTarget {
  const env = opts.env ?? process.env;
  const home = opts.home ?? env.HOME ?? os.homedir();
  // `Host *` restarts an unconditional block so a file that ends inside a Host section does not
  // swallow the next file's settings.
  const configText = readConfigs(home)
    .flatMap((text) => ['Host *', text])
    .join('\n');
  return resolveOne(opts, { env, home, configText }, 0);
}

interface ResolveContext {
  env: NodeJS.ProcessEnv;
  home: string;
  configText: string;
}

function resolveOne(opts: ResolveSshTargetOptions, ctx: ResolveContext, depth: number): SshTarget {
  const { env, home } = ctx;
  const localUser = opts.localUser ?? safeUserName(env);
  const parsed = parseTarget(opts.target);

  const lines = (opts.options ?? []).map(optionToLine);
  // -J is ssh's ProxyJump option given first, so it beats -o ProxyJump/ProxyCommand.
  if (opts.jump !== undefined) lines.unshift(optionToLine(`ProxyJump=${opts.jump}`));
  const texts = [lines.join('\n'), ctx.configText];

  let computed: Record<string, string | string[]>;
  try {
    computed = SSHConfig.parse(texts.join('\n')).compute(
      parsed.user === undefined ? { Host: parsed.host } : { Host: parsed.host, User: parsed.user },
      // `Match exec` would run shell commands from the config; keytether does not.
      { ignoreCase: true, matchExec: false },
    );
  } catch (e) {
    throw new UserError(`cannot parse ssh config: ${e instanceof Error ? e.message : String(e)}`);
  }
  const get = (k: string): string | undefined => first(computed[k]);
  const unsupported: string[] = [];

  const hostNameRaw = get('hostname');
  const hostName = hostNameRaw
    ? expandTokens(hostNameRaw, { h: parsed.host, n: parsed.host }, 'HostName')
    : parsed.host;
  if (FORBIDDEN_NAME_CHARS.test(hostName) || hostName.startsWith('-') || hostName === '') {
    throw new UserError(
      `ssh config gives ${JSON.stringify(hostName)} as HostName, which is not valid`,
    );
  }
  const user = parsed.user ?? get('user') ?? localUser;
  const portText = get('port');
  const port = opts.port ?? parsed.port ?? (portText ? parsePort(portText, 'ssh option Port') : 22);

  const tokens: Record<string, string> = {
    h: hostName,
    n: parsed.host,
    p: String(port),
    r: user,
    u: localUser,
    d: home,
    i: String(process.getuid?.() ?? ''),
    l: os.hostname(),
    L: os.hostname().split('.')[0] ?? '',
  };
  const pathOf = (p: string, what: string): string => {
    const expanded = expandTilde(expandTokens(p, tokens, what), home);
    return path.isAbsolute(expanded) ? expanded : path.join(home, '.ssh', expanded);
  };

  const configured = [...(opts.identities ?? []), ...list(computed['identityfile'])];
  const identityFilesDefaulted = configured.length === 0;
  const identityFiles = identityFilesDefaulted
    ? DEFAULT_IDENTITIES.map((n) => path.join(home, '.ssh', n))
    : dedupe(
        configured.filter((f) => f.toLowerCase() !== 'none').map((f) => pathOf(f, 'IdentityFile')),
      );

  const userKnown = list(computed['userknownhostsfile']);
  const knownHostsFiles =
    userKnown.length === 0
      ? [path.join(home, '.ssh', 'known_hosts'), path.join(home, '.ssh', 'known_hosts2')]
      : userKnown[0]?.toLowerCase() === 'none'
        ? []
        : userKnown.map((f) => pathOf(f, 'UserKnownHostsFile'));
  const globalKnown = list(computed['globalknownhostsfile']);
  const globalKnownHostsFiles =
    globalKnown.length === 0
      ? ['/etc/ssh/ssh_known_hosts', '/etc/ssh/ssh_known_hosts2']
      : globalKnown[0]?.toLowerCase() === 'none'
        ? []
        : globalKnown.map((f) => pathOf(f, 'GlobalKnownHostsFile'));

  const strictRaw = (get('stricthostkeychecking') ?? 'ask').toLowerCase();
  const strictMap: Record<string, StrictHostKeyChecking> = {
    yes: 'yes',
    true: 'yes',
    ask: 'ask',
    'accept-new': 'accept-new',
    no: 'no',
    off: 'no',
    false: 'no',
  };
  const strictHostKeyChecking = strictMap[strictRaw];
  if (!strictHostKeyChecking) {
    throw new UserError(
      `ssh option StrictHostKeyChecking has an unknown value ${JSON.stringify(strictRaw)}`,
    );
  }

  const agentRaw = get('identityagent');
  let identityAgent: string | undefined = env.SSH_AUTH_SOCK || undefined;
  if (agentRaw !== undefined) {
    if (agentRaw.toLowerCase() === 'none') identityAgent = undefined;
    else if (agentRaw === 'SSH_AUTH_SOCK') identityAgent = env.SSH_AUTH_SOCK || undefined;
    else if (agentRaw.startsWith('$')) identityAgent = env[agentRaw.slice(1)] || undefined;
    else identityAgent = pathOf(agentRaw, 'IdentityAgent');
  }

  const proxy: ProxySettings = resolveProxy(computed, tokens, depth, (hop, hopDepth) =>
    resolveOne(
      // Command-line -p/-i/-o are the destination's; a hop has only its own config block.
      {
        ...hop,
        ...(opts.env ? { env: opts.env } : {}),
        ...(opts.localUser !== undefined ? { localUser: opts.localUser } : {}),
      },
      ctx,
      hopDepth,
    ),
  );
  if (get('certificatefile')) unsupported.push('CertificateFile is not supported yet');

  return {
    host: parsed.host,
    hostName,
    user,
    port,
    identityFiles,
    identityFilesDefaulted,
    identitiesOnly: yesNo(get('identitiesonly'), 'IdentitiesOnly', false),
    identityAgent,
    knownHostsFiles,
    globalKnownHostsFiles,
    strictHostKeyChecking,
    hostKeyAlias: get('hostkeyalias'),
    hashKnownHosts: yesNo(get('hashknownhosts'), 'HashKnownHosts', false),
    connectTimeoutMs: seconds(get('connecttimeout'), 'ConnectTimeout'),
    serverAliveIntervalMs: seconds(get('serveraliveinterval'), 'ServerAliveInterval'),
    serverAliveCountMax: count(get('serveralivecountmax'), 'ServerAliveCountMax'),
    ...proxy,
    unsupported,
  };
}

function count(v: string | undefined, name: string): number | undefined {
  if (v === undefined) return undefined;
  if (!/^\d{1,4}$/.test(v))
    throw new UserError(`ssh option ${name} must be a number, not ${JSON.stringify(v)}`);
  return Number(v);
}

function dedupe(xs: string[]): string[] {
  return [...new Set(xs)];
}

function safeUserName(env: NodeJS.ProcessEnv): string {
  try {
    return os.userInfo().username;
  } catch {
    return env.USER ?? env.LOGNAME ?? 'root';
  }
}
