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
import { loadOrCreateIdentity } from '../../workstation/home/identity.js';
import { Keystore } from '../../workstation/keystore/index.js';
import { nameableKeys, resolveKeyName, sshAgentKeys, tokenKeys } from './token-keys.js';
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
