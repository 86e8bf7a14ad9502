// `keytether audit list` and `keytether audit summary`: the audit log read for a person, with
// the same filters the web page's audit view uses (workstation/audit/filter.ts, query.ts).

import type { Command } from 'commander';
import { InvalidArgumentError } from 'commander';
import { displayField } from '../../protocol/display-text.js';
import {
  AUDIT_DECISIONS,
  describeFilter,
  parseAuditFilter,
  type AuditFilter,
  type AuditFilterText,
} from '../../workstation/audit/filter.js';
import { operationLine } from '../../workstation/audit/operation-line.js';
import {
  DEFAULT_QUERY_LIMIT,
  MAX_QUERY_LIMIT,
  queryAuditLog,
  recordAsInput,
  type AuditQueryResult,
  type ChainStatus,
  type DayCounts,
} from '../../workstation/audit/query.js';
import { UserError } from '../../system/user-error.js';
import { action, examples } from '../program.js';

interface QueryOpts extends AuditFilterText {
  file?: string;
  home?: string;
  limit?: number;
  json?: boolean;
}

function limitArg(value: string): number {
  if (!/^\d{1,7}$/.test(value) || Number(value) < 1 || Number(value) > MAX_QUERY_LIMIT) {
    throw new InvalidArgumentError(
      `'${value.slice(0, 20)}' is not a whole number from 1 to ${MAX_QUERY_LIMIT}`,
    );
  }
  return Number(value);
}

async function query(
  path: string,
  opts: QueryOpts,
  limit: number,
): Promise<{ result: AuditQueryResult; filter: AuditFilter }> {
  const filter = parseAuditFilter(opts);
  try {
    return { result: await queryAuditLog(path, { filter, limit }), filter };
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new UserError(
        `there is no audit log at ${path}: check --home or --file (a holder creates it on its first request)`,
      );
    }
    throw new UserError(`cannot read the audit log ${path}: ${(e as Error).message}`);
  }
}

function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? '' : 's'}`;
}

export function chainLine(chain: ChainStatus): string {
  if (chain.ok) {
    const head = chain.head === 'agrees' ? ' (its head file agrees)' : '';
    return `chain OK: ${plural(chain.records, 'record')}${head}`;
  }
  const where = chain.record !== undefined ? `record ${chain.record} is broken: ` : '';
  return `chain BROKEN: ${where}${chain.reason} (see keytether audit verify)`;
}

/** `2026-12-07 14:05:09 local: sign key …: allowed`, one line per record. */
export function formatList(result: AuditQueryResult): string {
  return result.records
    .map((r) => `${displayField(r.time.slice(0, 10), 10)} ${operationLine(recordAsInput(r))}\n`)
    .join('');
}

export function formatSummary(path: string, result: AuditQueryResult, filters: string): string {
  const out = [`audit log ${path}: ${plural(result.total, 'record')}`, chainLine(result.chain)];
  if (result.unreadable > 0) out.push(`${plural(result.unreadable, 'line')} that are no record`);
  out.push(`${filters ? `matching ${filters}` : 'all'}: ${plural(result.matched, 'operation')}`);
  const cols: (keyof DayCounts)[] = ['total', ...AUDIT_DECISIONS];
  out.push(['day       ', ...cols.map((c) => c.padStart(9))].join(' '));
  for (const d of result.days) {
    out.push([d.day, ...cols.map((c) => String(d[c]).padStart(9))].join(' '));
  }
  return `${out.join('\n')}\n`;
}

function filterOptions(cmd: Command): Command {
  return cmd
    .option('--file <path>', 'the log to read (default $KEYTETHER_HOME/audit.jsonl)')
    .option('--key <key>', 'only this key: fingerprint, keygrip, 16-digit key id or SHA256:')
    .option('--host <host>', 'only requests from this server (as the front named it)')
    .option('--token <id>', 'only requests made with this token id')
    .option('--decision <d>', `only this decision: ${AUDIT_DECISIONS.join(', ')}`)
    .option('--since <time>', 'from this time: 2026-12-07, 2026-12-07T14:00Z, or an age (24h, 7d)')
    .option('--until <time>', 'before this time (same forms as --since)');
}

/** Adds `list` and `summary` to the `audit` command. */
export function registerQueries(
  audit: Command,
  logPath: (opts: { file?: string; home?: string }) => string,
): void {
  const out = (cmd: Command, s: string) =>
    (cmd.configureOutput().writeOut ?? ((t: string) => process.stdout.write(t)))(s);
  const err = (cmd: Command, s: string) =>
    (cmd.configureOutput().writeErr ?? ((t: string) => process.stderr.write(t)))(s);

  filterOptions(
    audit
      .command('list')
      .description('print the audit records that match the filters, one line each, oldest first')
      .addHelpText(
        'after',
        [
          '',
          'Times are UTC unless they carry an offset; --since includes its time, --until does not.',
          `Shows the most recent ${DEFAULT_QUERY_LIMIT} matches unless --limit says otherwise.`,
          examples(
            'keytether audit list --host build1.example.com --since 24h',
            'keytether audit list --decision denied --since 2026-12-01 --json',
          ),
        ].join('\n'),
      ),
  )
    .option(
      '--limit <n>',
      `at most this many records, the most recent (default ${DEFAULT_QUERY_LIMIT})`,
      limitArg,
    )
    .option('--json', 'print { total, matched, chain, records } as one JSON document')
    .action(
      action(async (_opts: QueryOpts, cmd: Command) => {
        const opts = cmd.optsWithGlobals<QueryOpts>();
        const path = logPath(opts);
        const { result } = await query(path, opts, opts.limit ?? DEFAULT_QUERY_LIMIT);
        if (opts.json) {
          const { total, matched, unreadable, chain, records } = result;
          out(
            cmd,
            `${JSON.stringify({ file: path, total, matched, unreadable, chain, records }, null, 2)}\n`,
          );
          return;
        }
        out(cmd, formatList(result));
        if (result.matched > result.records.length) {
          err(
            cmd,
            `(the last ${result.records.length} of ${result.matched} matching records; --limit shows more)\n`,
          );
        }
        if (!result.chain.ok) err(cmd, `warning: ${chainLine(result.chain)}\n`);
      }),
    );

  filterOptions(
    audit
      .command('summary')
      .description('count the matching operations per day and decision, and check the hash chain')
      .addHelpText(
        'after',
        [
          '',
          'Days are UTC days. The counts include records after a break of the chain.',
          examples(
            'keytether audit summary --since 7d',
            'keytether audit summary --key 0123456789ABCDEF --json',
          ),
        ].join('\n'),
      ),
  )
    .option('--json', 'print { total, matched, chain, days } as one JSON document')
    .action(
      action(async (_opts: QueryOpts, cmd: Command) => {
        const opts = cmd.optsWithGlobals<QueryOpts>();
        const path = logPath(opts);
        const { result, filter } = await query(path, opts, 0);
        if (opts.json) {
          const { total, matched, unreadable, chain, days } = result;
          out(
            cmd,
            `${JSON.stringify({ file: path, total, matched, unreadable, chain, days }, null, 2)}\n`,
          );
          return;
        }
        out(
          cmd,
          formatSummary(
            displayField(path, 1000),
            result,
            displayField(describeFilter(filter), 1000),
          ),
        );
      }),
    );
}
