// `keytether token …`: scoped tokens for facades and CI jobs, issued and revoked at the holder.

import { Option, type Command } from 'commander';
import { UserError } from '../../system/user-error.js';
import {
  action,
  collect,
  durationArg,
  examples,
  packageVersion,
  positiveIntArg,
  resolveHome,
} from '../program.js';
import { loadHolderConfig } from './agent.js';
import { createToken } from '../../workstation/tokens/create.js';
import { listedToken, TokenRegistry, type TokenSummary } from '../../workstation/tokens/tokens.js';

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
        const config = await loadHolderConfig(
          home,
          globals.config,
          opts.backend !== undefined ? { backend: opts.backend } : {},
        );
        const { text, notes } = await createToken(
          home,
          config,
          {
            keys: opts.key,
            ops: opts.ops,
            ttlMs: opts.ttl,
            maxUses: opts.maxUses,
            label: opts.label,
            relay: opts.relay,
            gnupgHome: opts.gnupgHome,
          },
          { version: packageVersion() },
        );
        for (const n of notes) process.stderr.write(`keytether token create: ${n}\n`);
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
          const rows = list.map(listedToken);
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
