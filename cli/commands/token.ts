// `keytether token …`: scoped tokens for facades and CI jobs, issued and revoked at the holder.

import { isDisplaySafeLine } from '../../protocol/display-text.js';
import { Option, type Command } from 'commander';
import path from 'node:path';
import { UsageError, UserError } from '../../system/user-error.js';
import {
  action,
  collect,
  durationArg,
  examples,
  packageVersion,
  positiveIntArg,
  resolveHome,
} from '../program.js';
import { formatDuration, type Config } from '../../workstation/home/config.js';
import { requestStatus } from '../../workstation/control/control.js';
import { loadHolderConfig } from './agent.js';
import { GpgAgentBackend } from '../../workstation/backends/index.js';
import { SshAgentBackend } from '../../workstation/backends/ssh-agent.js';
import { loadOrCreateIdentity } from '../../workstation/home/identity.js';
import { Keystore, type ListedKey } from '../../workstation/keystore/index.js';
import { TokenRegistry, type TokenSummary } from '../../workstation/tokens/tokens.js';
import { MAX_LABEL_CHARS, MAX_TOKEN_KEYS, type TokenOp } from '../../protocol/token.js';

const DEFAULT_TTL_MS = 3_600_000;

interface Globals {
  home?: string;
  config?: string;
}

interface CreateOpts {
  key: string[];
  ops: string;
  ttl?: number;
  maxUses?: number;
  label?: string;
  relay?: string;
  backend?: string;
  gnupgHome?: string;
}

/** What a token may name: a primary fingerprint and its subkeys' fingerprints, with their flags. */
export interface NameableKey {
  fingerprint: string;
  /** OpenPGP key flags as keytether lists them: sign, certify, encrypt, authenticate. */
  usage: readonly string[];
  subkeys: { fingerprint: string; usage: readonly string[] }[];
}

function out(cmd: Command): (s: string) => void {
  const write = cmd.configureOutput().writeOut;
  return (s) => (write ? write(s) : process.stdout.write(s));
}

function parseOps(text: string): TokenOp[] {
  const ops = text.split(',').map((s) => s.trim());
  for (const op of ops) {
    if (op !== 'sign' && op !== 'decrypt' && op !== 'ssh-sign') {
      throw new UsageError(
        `'${op.slice(0, 32)}' is not an operation; use --ops with sign, decrypt, ssh-sign or a comma-separated list of them (sign,ssh-sign)`,
      );
    }
  }
  return [...new Set(ops as TokenOp[])];
}

function checkRelayUrl(url: string): string {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new UsageError(
      `'${url.slice(0, 200)}' is not a URL; give the relay's base URL, e.g. https://relay.example:7878`,
    );
  }
  if (
    !['http:', 'https:', 'ws:', 'wss:'].includes(u.protocol) ||
    url.length > 1024 ||
    /\s/.test(url)
  ) {
    throw new UsageError(`'${url.slice(0, 200)}' is not an http(s):// or ws(s):// relay URL`);
  }
  return url;
}

/**
 * The keys the holder serves, as `keytether agent` with the same back-end settings would: the
 * keystore's, and unless the back end is builtin, those the workstation's gpg-agent holds.
 */
async function nameableKeys(
  keystore: ListedKey[],
  config: Config,
  gnupgHome: string | undefined,
): Promise<NameableKey[]> {
  if (config.backend === 'builtin') return keystore;
  const dir = gnupgHome !== undefined ? path.resolve(gnupgHome) : config.gnupgHome;
  const opts = dir !== undefined ? { gnupgHome: dir } : {};
  const agent =
    config.backend === 'auto'
      ? // As the agent does: a GnuPG home without secret keys is not worth starting an agent for.
        await GpgAgentBackend.open({ ...opts, onlyWithKeys: true }).catch(() => undefined)
      : await GpgAgentBackend.open({ ...opts, requireAgent: true }).catch((e: unknown) => {
          throw new UserError(
            `cannot reach the workstation's gpg-agent (${(e as Error).message}); start it with "gpgconf --launch gpg-agent" or use --backend builtin`,
          );
        });
  if (!agent) return keystore;
  try {
    const byPrimary = new Map<string, NameableKey>();
    for (const k of (await agent.inventory()).keys) {
      const primary = k.primaryFingerprint.toUpperCase();
      let entry = byPrimary.get(primary);
      if (!entry) {
        byPrimary.set(primary, (entry = { fingerprint: primary, usage: [], subkeys: [] }));
      }
      if (k.fingerprint.toUpperCase() !== primary) {
        entry.subkeys.push({ fingerprint: k.fingerprint.toUpperCase(), usage: k.usage });
      } else {
        entry.usage = k.usage;
      }
    }
    return [...keystore, ...byPrimary.values()];
  } finally {
    await agent.close();
  }
}

/** The keys of the workstation ssh-agent the holder serves (ssh-agent-backend), if one is set. */
async function sshAgentKeys(config: Config): Promise<NameableKey[]> {
  if (config.sshAgentBackend === undefined) return [];
  const inv = await new SshAgentBackend({ socket: config.sshAgentBackend }).inventory();
  return inv.keys.map((k) => ({ fingerprint: k.fingerprint, usage: k.usage, subkeys: [] }));
}

// A running agent's relays are the ones it is connected to right now, so a token for them works
// at once; config.toml is next, for tokens made while no agent runs. Either way the user is told,
// since a token bound to the wrong relay only shows up as a failure in CI.
async function chooseRelay(
  flag: string | undefined,
  home: string,
  config: Config,
  note: (s: string) => void,
): Promise<string> {
  if (flag !== undefined) return checkRelayUrl(flag);
  const agent = await requestStatus(home, { version: packageVersion(), timeoutMs: 2000 }).catch(
    () => undefined,
  );
  const fromAgent = agent?.relays[0]?.url;
  if (fromAgent !== undefined) {
    note(
      `relay ${fromAgent} is the one the running agent (pid ${agent!.pid}) uses; give --relay URL for another`,
    );
    return checkRelayUrl(fromAgent);
  }
  const first = config.relay[0];
  if (first === undefined) {
    throw new UsageError(
      'no relay is configured; give --relay URL (the URL `keytether relay` printed) or add relay = ["URL"] to config.toml',
    );
  }
  note(
    `relay ${first} is the first in ${config.file ?? 'config.toml'}; give --relay URL for another`,
  );
  return checkRelayUrl(first);
}

/**
 * The fingerprint a user's name for a key stands for: a primary or subkey fingerprint (any case,
 * spaces, 0x) or a 16-hex key id. Naming a subkey limits the token to that subkey.
 */
export function resolveKeyName(name: string, keys: NameableKey[]): string {
  const ssh = name.trim();
  if (/^SHA256:[A-Za-z0-9+/]{43}$/.test(ssh)) {
    if (!keys.some((k) => k.fingerprint === ssh)) {
      throw new UserError(
        `no SSH key ${ssh} in the keystore or the ssh-agent back end; see keytether keys list or ssh-add -l`,
      );
    }
    return ssh;
  }
  const norm = name.replace(/\s+/g, '').replace(/^0x/i, '').toUpperCase();
  const parts = keys.flatMap((k) => [k.fingerprint, ...k.subkeys.map((s) => s.fingerprint)]);
  let matches: string[] = [];
  if (/^[0-9A-F]{40}$|^[0-9A-F]{64}$/.test(norm)) matches = parts.filter((f) => f === norm);
  else if (/^[0-9A-F]{16}$/.test(norm)) {
    // A v4 key id is the fingerprint's last 16 hex digits (v5/v6: the first 16).
    matches = parts.filter((f) => (f.length === 40 ? f.endsWith(norm) : f.startsWith(norm)));
  } else {
    throw new UsageError(
      `'${name.slice(0, 80)}' is not a fingerprint or 16-digit key id; see keytether keys list`,
    );
  }
  matches = [...new Set(matches)];
  if (matches.length === 0) {
    throw new UserError(
      `no key ${norm} in the keystore; see keytether keys list for the stored keys`,
    );
  }
  if (matches.length > 1) {
    throw new UserError(
      `key id ${norm} matches several keys; name the key by its full fingerprint`,
    );
  }
  const fpr = matches[0]!;
  if (fpr.length !== 40) {
    throw new UserError(
      `key ${fpr} is a v5/v6 key; tokens can only name v4 (40-digit) fingerprints yet`,
    );
  }
  return fpr;
}

const OP_FLAG: Record<TokenOp, string> = { sign: 'sign', decrypt: 'encrypt', 'ssh-sign': 'auth' };
/** What `gpg --quick-add-key FPR …` adds a subkey for OP with. */
const OP_SUBKEY: Record<TokenOp, string> = {
  sign: 'ed25519 sign',
  decrypt: 'cv25519 encr',
  'ssh-sign': 'ed25519 auth',
};
const OP_CAN: Record<TokenOp, string> = {
  sign: 'sign',
  decrypt: 'decrypt (encrypt flag)',
  'ssh-sign': 'authenticate (ssh-sign)',
};

/**
 * The fingerprints a token names for the user's name FPR. A subkey stands for itself. A primary
 * stands for its subkeys that can do the token's operations, never for itself while it has
 * one: a primary certifies, and a token must not let CI make certifications (a new user id, a
 * subkey binding). Only a primary that signs and has no signing subkey is named itself; the
 * holder then signs with it for a remote only what it can check (clear signing). NOTES gets one
 * line per primary replaced or kept, for the user.
 */
export function tokenKeys(
  fpr: string,
  keys: readonly NameableKey[],
  ops: readonly TokenOp[],
  notes: string[],
): string[] {
  if (fpr.startsWith('SHA256:')) {
    if (ops.some((op) => op !== 'ssh-sign')) {
      throw new UserError(
        `${fpr} is an SSH key, which only makes SSH signatures; give --ops ssh-sign`,
      );
    }
    return [fpr];
  }
  const primary = keys.find((k) => k.fingerprint === fpr);
  if (!primary) return [fpr];
  const chosen = new Set<string>();
  for (const op of ops) {
    const flag = OP_FLAG[op];
    const subs = primary.subkeys.filter((s) => s.usage.includes(flag));
    for (const s of subs) chosen.add(s.fingerprint);
    if (subs.length > 0) continue;
    if (op === 'sign' && primary.usage.includes('sign')) {
      chosen.add(fpr);
      notes.push(
        `key ${fpr} has no signing subkey, so the token names the primary itself; ` +
          `it also certifies, so the holder signs with it for CI only what it can check ` +
          `(keytether git-sign); add a subkey with "gpg --quick-add-key ${fpr} ed25519 sign"`,
      );
      continue;
    }
    if (op === 'ssh-sign' && primary.usage.includes('auth')) {
      chosen.add(fpr);
      continue;
    }
    throw new UserError(
      `key ${fpr} has no subkey that can ${OP_CAN[op]}; ` +
        `add one with "gpg --quick-add-key ${fpr} ${OP_SUBKEY[op]}" ` +
        `and import it again, or leave ${op} out of --ops`,
    );
  }
  const subs = [...chosen].filter((f) => f !== fpr);
  if (subs.length > 0) {
    notes.push(
      `the token names subkey${subs.length > 1 ? 's' : ''} ${subs.join(', ')} of key ${fpr}, ` +
        `not the primary: a token never lets CI certify`,
    );
  }
  return [...chosen];
}

function statusOf(t: TokenSummary, now: number): string {
  if (t.revoked) return 'revoked';
  if (Date.parse(t.expires) <= now) return 'expired';
  if (t.maxUses !== null && t.uses >= t.maxUses) return 'used-up';
  return 'active';
}

function formatToken(t: TokenSummary, now: number): string {
  const uses = `uses=${t.uses}${t.maxUses !== null ? `/${t.maxUses}` : ''}`;
  const label = t.label !== null ? ` label=${JSON.stringify(t.label)}` : '';
  return `${t.id} ${statusOf(t, now)} ops=${t.ops.join(',')} keys=${t.keys.join(',')} ${uses} expires=${t.expires}${label}\n`;
}

export function register(program: Command): void {
  const token = program
    .command('token')
    .addHelpText(
      'after',
      examples(
        'keytether token create --key 6F1C2A3B4D5E6F708192A3B4C5D6E7F801234567 --ttl 2h --max-uses 10 --label release',
      ),
    )
    .description('tokens for facades and CI jobs');
  token
    .command('create')
    .addHelpText(
      'after',
      examples(
        'keytether token create --key 6F1C2A3B4D5E6F708192A3B4C5D6E7F801234567 --ttl 2h --max-uses 10 --label release',
        'keytether token create --key 6F1C2A3B4D5E6F708192A3B4C5D6E7F801234567 --ops sign,decrypt --relay https://relay.example:7878',
      ),
    )
    .description('issue a token and print it alone on stdout')
    .requiredOption(
      '--key <fpr>',
      'key the token may use (repeatable; fingerprint or key id)',
      collect,
    )
    .option(
      '--ops <ops>',
      'allowed operations, comma-separated: sign, decrypt, ssh-sign (ssh-agent signatures)',
      'sign',
    )
    .option(
      '--ttl <duration>',
      'lifetime, e.g. 90s, 15m, 1h, 2d (default 1h; at most token-max-ttl, 30d unless configured)',
      durationArg,
    )
    .option('--max-uses <n>', 'number of operations allowed', positiveIntArg)
    .option('--label <text>', 'label shown in lists and the audit log')
    .option(
      '--relay <url>',
      "relay the token is for (default: the running agent's first relay, else config.toml's)",
    )
    .addOption(
      new Option('--backend <backend>', 'where the holder keeps its keys').choices([
        'builtin',
        'gpg-agent',
        'auto',
      ]),
    )
    .option(
      '--gnupg-home <dir>',
      'GnuPG home of the gpg-agent back end (default $GNUPGHOME or ~/.gnupg)',
    )
    .action(
      action(async (opts: CreateOpts, cmd: Command) => {
        const globals = cmd.optsWithGlobals<Globals>();
        const home = resolveHome(globals);
        const ops = parseOps(opts.ops);
        if (opts.key.length > MAX_TOKEN_KEYS) {
          throw new UsageError(`a token can name at most ${MAX_TOKEN_KEYS} keys`);
        }
        if (opts.label !== undefined) {
          if (opts.label.length > MAX_LABEL_CHARS) {
            throw new UsageError(`the label is longer than ${MAX_LABEL_CHARS} characters`);
          }
          if (!isDisplaySafeLine(opts.label)) {
            throw new UsageError(
              'the label must not contain control characters, line breaks or bidi/format characters',
            );
          }
        }
        const config = await loadHolderConfig(
          home,
          globals.config,
          opts.backend !== undefined ? { backend: opts.backend } : {},
        );
        const ttlMs = opts.ttl ?? DEFAULT_TTL_MS;
        if (ttlMs > config.tokenMaxTtlMs) {
          const max = formatDuration(config.tokenMaxTtlMs);
          throw new UsageError(
            `--ttl is longer than the ${max} a token may live; give a shorter --ttl or raise token-max-ttl (now "${max}") in ${config.file ?? path.join(home, 'config.toml')}`,
          );
        }
        const relayNotes: string[] = [];
        const relay = await chooseRelay(opts.relay, home, config, (n) => relayNotes.push(n));
        const ks = await Keystore.open(home);
        const listed = [
          ...(await nameableKeys(ks.list(), config, opts.gnupgHome)),
          ...(await sshAgentKeys(config)),
        ];
        const notes: string[] = [];
        const keys = [
          ...new Set(
            opts.key.flatMap((k) => tokenKeys(resolveKeyName(k, listed), listed, ops, notes)),
          ),
        ];
        if (keys.length > MAX_TOKEN_KEYS) {
          throw new UsageError(
            `these keys stand for ${keys.length} subkeys; a token can name at most ${MAX_TOKEN_KEYS}`,
          );
        }
        const identity = await loadOrCreateIdentity(home);
        const registry = await TokenRegistry.open(home, { identity });
        const text = await registry.issue(
          {
            keys,
            ops,
            ttlMs,
            maxUses: opts.maxUses,
            label: opts.label,
            relay,
          },
          identity,
        );
        for (const n of [...relayNotes, ...notes])
          process.stderr.write(`keytether token create: ${n}\n`);
        out(cmd)(text + '\n');
      }),
    );
  token
    .command('list')
    .addHelpText('after', examples('keytether token list', 'keytether token list --json'))
    .description('tokens issued by this holder')
    .option(
      '--json',
      'print a JSON array of {id, keys, ops, expires, uses, maxUses, label, revoked}',
    )
    .action(
      action(async (opts: { json?: boolean }, cmd: Command) => {
        const registry = await TokenRegistry.open(resolveHome(cmd.optsWithGlobals<Globals>()));
        const list = await registry.list();
        const write = out(cmd);
        if (opts.json) {
          const rows = list.map((t) => ({
            id: t.id,
            keys: t.keys,
            ops: t.ops,
            expires: t.expires,
            uses: t.uses,
            maxUses: t.maxUses,
            label: t.label,
            revoked: t.revoked,
          }));
          write(JSON.stringify(rows, null, 2) + '\n');
        } else {
          const now = Date.now();
          write(list.map((t) => formatToken(t, now)).join(''));
        }
      }),
    );
  token
    .command('revoke')
    .addHelpText('after', examples('keytether token revoke ktt_0123456789abcdef'))
    .description('revoke a token at once')
    .argument('<id>', 'token id (ktt_…, as token list shows)')
    .action(
      action(async (id: string, _opts: unknown, cmd: Command) => {
        const registry = await TokenRegistry.open(resolveHome(cmd.optsWithGlobals<Globals>()));
        if (!(await registry.revoke(id))) {
          throw new UserError(
            `no token ${id.slice(0, 64)} was issued by this holder; see keytether token list`,
          );
        }
        out(cmd)(`revoked ${id}\n`);
      }),
    );
  token
    .command('prune')
    .addHelpText('after', examples('keytether token prune --older-than 30d'))
    .description(
      'remove expired and revoked tokens from the registry (done by itself 7 days after they end)',
    )
    .option(
      '--older-than <duration>',
      'only tokens that ended at least this long ago, e.g. 1d (default: all)',
      durationArg,
    )
    .action(
      action(async (opts: { olderThan?: number }, cmd: Command) => {
        const registry = await TokenRegistry.open(resolveHome(cmd.optsWithGlobals<Globals>()));
        const n = await registry.prune(opts.olderThan ?? 0);
        out(cmd)(`pruned ${n} token${n === 1 ? '' : 's'}\n`);
      }),
    );
}
