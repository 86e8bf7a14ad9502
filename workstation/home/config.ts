// The holder's settings: `$KEYTETHER_HOME/config.toml` (or `--config FILE`) overlaid by flags.
// Names follow gpg-agent's where gpg-agent has the setting, so users can carry their habits over.

import { readFile, stat } from 'node:fs/promises';
import { homedir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { parse as parseToml, TomlError } from 'smol-toml';
import { z } from 'zod';
import {
  DEFAULT_REQUEST_LIMITS,
  limitsFromFile,
  limitsSchemaShape,
  type RequestLimits,
} from './limits-config.js';
import { ConfigError, valueAt } from './config-error.js';
import { duration, parseDuration } from './duration.js';
import { parsePolicyFlag, ruleSchema, toRule, type PolicyRule } from './policy-rules.js';

export { ConfigError } from './config-error.js';
export { formatDuration, parseDuration } from './duration.js';
export {
  parsePolicyFlag,
  POLICY_RULE_KEYS,
  type Front,
  type PolicyAction,
  type PolicyRule,
} from './policy-rules.js';

export interface Config {
  pinentryProgram: string | undefined;
  pinentryTimeoutMs: number;
  /** Idle time after which an unlocked key is forgotten; each use restarts it. */
  defaultCacheTtlMs: number;
  /** Absolute lifetime of an unlocked key, however often it is used. */
  maxCacheTtlMs: number;
  /**
   * `auto`: keytether's keystore and, when its GNUPGHOME holds secret keys, the workstation's
   * gpg-agent (the keystore wins a keygrip both have).
   */
  backend: 'builtin' | 'gpg-agent' | 'auto';
  /** GNUPGHOME of the gpg-agent back end (absolute); undefined: $GNUPGHOME or ~/.gnupg. */
  gnupgHome: string | undefined;
  /**
   * The workstation's own ssh-agent socket whose keys the holder also offers for SSH signatures
   * (absolute); undefined: none. `SSH_AUTH_SOCK` in the file means that variable at start.
   */
  sshAgentBackend: string | undefined;
  /** `write`: audit records reach the kernel before a result is sent; `fsync`: also the disk. */
  auditSync: 'write' | 'fsync';
  socket: string | undefined;
  relay: string[];
  /** The longest `--ttl` `keytether token create` accepts. */
  tokenMaxTtlMs: number;
  /** User rules in file order, flag rules first; the built-in defaults are in policy.ts. */
  policy: PolicyRule[];
  /** Per link, origin, token and key (limits-config.ts). */
  limits: RequestLimits;
  /** The file the settings were read from, or undefined when none existed. */
  file: string | undefined;
}

export const DEFAULT_CONFIG: Readonly<Config> = Object.freeze({
  pinentryProgram: undefined,
  pinentryTimeoutMs: 60_000,
  defaultCacheTtlMs: 600_000,
  maxCacheTtlMs: 7_200_000,
  backend: 'auto',
  gnupgHome: undefined,
  sshAgentBackend: undefined,
  auditSync: 'write',
  socket: undefined,
  relay: [],
  tokenMaxTtlMs: 30 * 86_400_000,
  policy: [],
  limits: DEFAULT_REQUEST_LIMITS,
  file: undefined,
});

const MAX_CONFIG_BYTES = 1024 * 1024;
const MAX_RULES = 1000;
const fileSchema = z.strictObject({
  'pinentry-program': z.string().min(1).max(4096).optional(),
  'pinentry-timeout': duration.optional(),
  'default-cache-ttl': duration.optional(),
  'max-cache-ttl': duration.optional(),
  backend: z.enum(['builtin', 'gpg-agent', 'auto']).optional(),
  'audit-sync': z.enum(['write', 'fsync']).optional(),
  'gnupg-home': z.string().min(1).max(4096).optional(),
  'ssh-agent-backend': z.string().min(1).max(4096).optional(),
  socket: z.string().min(1).max(4096).optional(),
  // One relay is the common case, so a bare string is accepted as well as a list.
  relay: z
    .union([z.string().min(1).max(2048), z.array(z.string().min(1).max(2048)).max(64)])
    .optional(),
  'token-max-ttl': duration.optional(),
  ...limitsSchemaShape,
  policy: z.array(ruleSchema).max(MAX_RULES).optional(),
});

/** Every setting config.toml accepts, and every field of a `[[policy]]` rule (for the docs' test). */
export const CONFIG_KEYS: readonly string[] = Object.keys(fileSchema.shape);

/** Best-effort line of a setting in the TOML text, so the message can point at it. */
function findLine(text: string, path: PropertyKey[]): number | undefined {
  const lines = text.split(/\r?\n/);
  const keyRe = (k: string) =>
    new RegExp(`^\\s*(${escapeRe(k)}|"${escapeRe(k)}"|'${escapeRe(k)}')\\s*(=|\\.)`);
  const headerRe = /^\s*\[/;
  const [top, index, inner] = path;
  if (typeof top !== 'string') return undefined;
  if (top === 'policy' && typeof index === 'number') {
    let seen = -1;
    for (let i = 0; i < lines.length; i++) {
      if (/^\s*\[\[\s*policy\s*\]\]/.test(lines[i]!)) {
        seen++;
        if (seen !== index) continue;
        if (typeof inner !== 'string') return i + 1;
        for (let j = i + 1; j < lines.length && !headerRe.test(lines[j]!); j++) {
          if (keyRe(inner).test(lines[j]!)) return j + 1;
        }
        return i + 1;
      }
    }
    return undefined;
  }
  const tableRe = new RegExp(`^\\s*\\[\\[?\\s*("?)${escapeRe(top)}\\1\\s*[\\].]`);
  let inTable = false;
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!;
    if (tableRe.test(line)) return i + 1;
    if (headerRe.test(line)) inTable = true;
    if (!inTable && keyRe(top).test(line)) return i + 1;
  }
  return undefined;
}

function escapeRe(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/** `policy rule 2 setting "acton"` / `setting "backend"`, counting rules from 1 as users do. */
function describePath(path: PropertyKey[], key?: string): string {
  const parts = key === undefined ? path : [...path, key];
  if (parts[0] === 'policy' && typeof parts[1] === 'number') {
    const rest = parts.slice(2).map(String).join('.');
    return rest ? `"${rest}" in policy rule ${parts[1] + 1}` : `policy rule ${parts[1] + 1}`;
  }
  return `"${parts.map(String).join('.')}"`;
}

function issueSentence(issue: z.core.$ZodIssue, file: string, text: string, raw: unknown): string {
  const where = (path: PropertyKey[]) => {
    const line = findLine(text, path);
    return line === undefined ? file : `${file} (line ${line})`;
  };
  if (issue.code === 'unrecognized_keys') {
    const key = issue.keys[0] ?? '';
    return `unknown setting ${describePath(issue.path, key)} in ${where([...issue.path, key])}`;
  }
  const what = describePath(issue.path);
  if (valueAt(raw, issue.path) === undefined) {
    return `missing setting ${what} in ${where(issue.path.slice(0, 2))}`;
  }
  if (issue.code === 'invalid_value') {
    const values = issue.values.map((v) => JSON.stringify(v)).join(', ');
    return `setting ${what} in ${where(issue.path)} must be one of ${values}`;
  }
  if (issue.code === 'invalid_type') {
    const expected = { array: 'list', object: 'table' }[issue.expected as string] ?? issue.expected;
    return `setting ${what} in ${where(issue.path)} must be a ${expected}`;
  }
  if (issue.code === 'invalid_union') {
    if (issue.path.length === 1 && issue.path[0] === 'relay') {
      return `setting ${what} in ${where(issue.path)} must be a relay URL or a list of them, like ["https://relay.example:7878"]`;
    }
    // The only other union in the schema is a duration.
    return `setting ${what} in ${where(issue.path)} must be a number of seconds or a duration like 15m`;
  }
  return `setting ${what} in ${where(issue.path)} is invalid: ${issue.message}`;
}

/** `~` and `~/x` → the user's home directory (`$HOME`); other paths unchanged. */
export function expandTilde(p: string): string {
  if (p === '~') return homedir();
  if (p.startsWith('~/')) return join(homedir(), p.slice(2));
  return p;
}

/** Parse and validate config text; `file` is named in messages and anchors relative paths. */
export function parseConfig(text: string, file: string): Config {
  let raw: unknown;
  try {
    raw = parseToml(text);
  } catch (e) {
    if (e instanceof TomlError) {
      const detail = (e.message.split('\n')[0] ?? '').replace(/^Invalid TOML document:\s*/, '');
      throw new ConfigError(
        `syntax error in ${file} (line ${e.line}, column ${e.column}): ${detail}`,
      );
    }
    throw new ConfigError(`cannot parse ${file}: ${(e as Error).message}`);
  }
  const result = fileSchema.safeParse(raw);
  if (!result.success) {
    const issues = [...result.error.issues].sort(
      (a, b) => Number(b.code === 'unrecognized_keys') - Number(a.code === 'unrecognized_keys'),
    );
    // One sentence per unknown key, and one per bad setting: zod may report a value that breaks
    // two rules twice, which would read as two things to fix.
    const problems: string[] = [];
    const seen = new Set<string>();
    for (const issue of issues) {
      const single =
        issue.code === 'unrecognized_keys'
          ? issue.keys.map((key) => ({ ...issue, keys: [key] }))
          : [issue];
      for (const one of single) {
        const id = JSON.stringify([
          ...one.path.map(String),
          ...(one.code === 'unrecognized_keys' ? one.keys : []),
        ]);
        if (seen.has(id)) continue;
        seen.add(id);
        problems.push(issueSentence(one, file, text, raw));
      }
    }
    if (problems.length === 1) throw new ConfigError(problems[0]!);
    throw new ConfigError(
      `${file} has ${problems.length} problems; fix each of these and run again:`,
      undefined,
      problems,
    );
  }
  const c = result.data;
  return {
    pinentryProgram: c['pinentry-program'] ?? DEFAULT_CONFIG.pinentryProgram,
    pinentryTimeoutMs: c['pinentry-timeout'] ?? DEFAULT_CONFIG.pinentryTimeoutMs,
    defaultCacheTtlMs: c['default-cache-ttl'] ?? DEFAULT_CONFIG.defaultCacheTtlMs,
    maxCacheTtlMs: c['max-cache-ttl'] ?? DEFAULT_CONFIG.maxCacheTtlMs,
    backend: c.backend ?? DEFAULT_CONFIG.backend,
    gnupgHome:
      c['gnupg-home'] !== undefined
        ? resolve(dirname(file), expandTilde(c['gnupg-home']))
        : DEFAULT_CONFIG.gnupgHome,
    sshAgentBackend: agentSocket(c['ssh-agent-backend'], (p) => resolve(dirname(file), p)),
    auditSync: c['audit-sync'] ?? DEFAULT_CONFIG.auditSync,
    socket: c.socket ?? DEFAULT_CONFIG.socket,
    relay: typeof c.relay === 'string' ? [c.relay] : (c.relay ?? []),
    tokenMaxTtlMs: c['token-max-ttl'] ?? DEFAULT_CONFIG.tokenMaxTtlMs,
    policy: (c.policy ?? []).map((r, i) => {
      const line = findLine(text, ['policy', i]);
      return toRule(r, `policy rule ${i + 1} in ${file}${line ? ` (line ${line})` : ''}`);
    }),
    limits: limitsFromFile(c),
    file,
  };
}

/**
 * Reads `file`, or `$home/config.toml` when no file is named. A missing default file means
 * defaults; a missing named file is an error, since the user asked for it.
 */
export async function loadConfig(home: string, file?: string): Promise<Config> {
  const path = file ?? join(home, 'config.toml');
  let info;
  try {
    info = await stat(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') {
      if (file === undefined) return { ...DEFAULT_CONFIG, relay: [], policy: [] };
      throw new ConfigError(`config file ${path} does not exist: create it or drop --config`);
    }
    throw new ConfigError(`cannot read config file ${path}: ${(e as Error).message}`);
  }
  if (!info.isFile()) throw new ConfigError(`config file ${path} is not a regular file`);
  if (info.size > MAX_CONFIG_BYTES) {
    throw new ConfigError(`config file ${path} is larger than 1 MiB; it cannot be a config file`);
  }
  // The file decides what remote hosts may do with the keys, so others must not be able to edit it.
  if ((info.mode & 0o022) !== 0) {
    throw new ConfigError(`config file ${path} is writable by other users: run chmod go-w ${path}`);
  }
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    throw new ConfigError(`cannot read config file ${path}: ${(e as Error).message}`);
  }
  return parseConfig(text, path);
}

/** Command-line overrides as commander hands them over (strings) or as numbers. */
export interface ConfigFlags {
  pinentryProgram?: string;
  pinentryTimeout?: string | number;
  defaultCacheTtl?: string | number;
  maxCacheTtl?: string | number;
  backend?: string;
  /** `--gnupg-home DIR` (relative to the working directory; `~` expanded). */
  gnupgHome?: string;
  /** `--ssh-agent-backend SOCKET` (or `SSH_AUTH_SOCK`). */
  sshAgentBackend?: string;
  auditSync?: string;
  socket?: string;
  relay?: string[];
  /** `--policy 'front=ssh,op=decrypt,action=confirm,remember=15m'` (repeatable). */
  policy?: string[];
}

function flagDuration(value: string | number, flag: string): number {
  try {
    return parseDuration(value);
  } catch (e) {
    throw new ConfigError(`${flag}: ${(e as Error).message}`, flag);
  }
}

/** Overlay flags on a config; flags win, and flag policy rules are checked before the file's. */
export function mergeFlags(config: Config, flags: ConfigFlags): Config {
  const out: Config = { ...config, relay: [...config.relay], policy: [...config.policy] };
  if (flags.pinentryProgram !== undefined) out.pinentryProgram = flags.pinentryProgram;
  if (flags.pinentryTimeout !== undefined) {
    out.pinentryTimeoutMs = flagDuration(flags.pinentryTimeout, '--pinentry-timeout');
  }
  if (flags.defaultCacheTtl !== undefined) {
    out.defaultCacheTtlMs = flagDuration(flags.defaultCacheTtl, '--default-cache-ttl');
  }
  if (flags.maxCacheTtl !== undefined) {
    out.maxCacheTtlMs = flagDuration(flags.maxCacheTtl, '--max-cache-ttl');
  }
  if (flags.backend !== undefined) {
    if (flags.backend !== 'builtin' && flags.backend !== 'gpg-agent' && flags.backend !== 'auto') {
      throw new ConfigError(
        `--backend must be builtin, gpg-agent or auto, not "${flags.backend.slice(0, 40)}"`,
        '--backend',
      );
    }
    out.backend = flags.backend;
  }
  if (flags.gnupgHome !== undefined) out.gnupgHome = resolve(expandTilde(flags.gnupgHome));
  if (flags.sshAgentBackend !== undefined) {
    out.sshAgentBackend = agentSocket(flags.sshAgentBackend, (p) => resolve(p));
  }
  if (flags.auditSync !== undefined) {
    if (flags.auditSync !== 'write' && flags.auditSync !== 'fsync') {
      throw new ConfigError(
        `--audit-sync must be write or fsync, not "${flags.auditSync.slice(0, 40)}"`,
        '--audit-sync',
      );
    }
    out.auditSync = flags.auditSync;
  }
  if (flags.socket !== undefined) out.socket = flags.socket;
  if (flags.relay !== undefined && flags.relay.length > 0) out.relay = [...flags.relay];
  if (flags.policy !== undefined && flags.policy.length > 0) {
    out.policy = [...flags.policy.map(parsePolicyFlag), ...config.policy];
  }
  return out;
}

/** `SSH_AUTH_SOCK` → that variable's socket (none when unset); a path, made absolute. */
function agentSocket(
  value: string | undefined,
  absolute: (p: string) => string,
): string | undefined {
  if (value === undefined) return undefined;
  if (value === 'SSH_AUTH_SOCK') return process.env.SSH_AUTH_SOCK || undefined;
  return absolute(expandTilde(value));
}
