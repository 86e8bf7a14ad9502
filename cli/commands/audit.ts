// `keytether audit verify`: checks the audit log's hash chain and names the first broken record,
// and that the log still reaches its head file and any checkpoint the user kept.
// `keytether audit checkpoint`: prints where the log ends now, for the user to keep elsewhere.
// `keytether audit list` / `audit summary`: the log read for a person (audit-query.ts).

import type { Command } from 'commander';
import { join, resolve } from 'node:path';
import { walkAuditLog, type AuditWalkResult } from '../../workstation/audit/verify.js';
import {
  endMismatch,
  formatCheckpoint,
  headPath,
  parseCheckpoint,
  readHead,
} from '../../workstation/audit/head.js';
import { UsageError, UserError } from '../../system/user-error.js';
import { action, examples, resolveHome } from '../program.js';
import { registerQueries } from './audit-query.js';

interface AuditOpts {
  file?: string;
  home?: string;
  checkpoint?: string;
}

function logPath(opts: AuditOpts): string {
  return opts.file ? resolve(opts.file) : join(resolveHome(opts), 'audit.jsonl');
}

async function walk(path: string, at: number[]): Promise<AuditWalkResult & { ok: true }> {
  let result;
  try {
    result = await walkAuditLog(path, at);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') {
      throw new UserError(
        `there is no audit log at ${path}: check --home or --file (a holder creates it on its first request)`,
      );
    }
    throw new UserError(`cannot read the audit log ${path}: ${(e as Error).message}`);
  }
  if (!result.ok) throw new UserError(`record ${result.record} is broken: ${result.reason}`);
  return result;
}

/** Verifies the log named by OPTS; returns the line to print on success. */
export async function auditVerify(opts: AuditOpts): Promise<string> {
  const path = logPath(opts);
  const checkpoint = opts.checkpoint !== undefined ? parseCheckpoint(opts.checkpoint) : undefined;
  if (opts.checkpoint !== undefined && !checkpoint) {
    throw new UsageError(
      `--checkpoint takes a value as printed by keytether audit checkpoint (kt-audit-1:RECORDS:HASH)`,
    );
  }
  const head = await readHead(path).catch((e: Error) => {
    throw new UserError(`cannot read the audit log's head file ${headPath(path)}: ${e.message}`);
  });
  if (head.kind === 'damaged') {
    throw new UserError(`the audit log's head file ${head.file} is damaged`);
  }
  const at = [checkpoint?.records, head.kind === 'ok' ? head.end.records : undefined].filter(
    (n): n is number => n !== undefined,
  );
  const result = await walk(path, at);
  const hashAt = (n: number) => result.hashes.get(n);
  const notes: string[] = [];
  if (head.kind === 'ok') {
    const why = endMismatch(result.records, hashAt, head.end, 'its head file');
    if (why !== undefined) throw new UserError(why);
    notes.push('its head file agrees');
  }
  if (checkpoint) {
    const why = endMismatch(result.records, hashAt, checkpoint, 'the checkpoint');
    if (why !== undefined) throw new UserError(why);
    notes.push(`the checkpoint at record ${checkpoint.records} matches`);
  }
  const s = result.records === 1 ? '' : 's';
  return `audit log OK: ${result.records} record${s}${notes.length ? ` (${notes.join('; ')})` : ''}`;
}

/** The checkpoint value for the log's current end, once its chain has been verified. */
export async function auditCheckpoint(opts: AuditOpts): Promise<string> {
  const result = await walk(logPath(opts), []);
  return formatCheckpoint(result.end);
}

export function register(program: Command): void {
  const audit = program
    .command('audit')
    .addHelpText('after', examples('keytether audit verify', 'keytether audit list --since 24h'))
    .description("check and read the holder's audit log");
  const write = (cmd: Command, line: string) => {
    const out = cmd.configureOutput().writeOut ?? ((s: string) => process.stdout.write(s));
    out(`${line}\n`);
  };
  audit
    .command('verify')
    .addHelpText(
      'after',
      [
        '',
        'Besides the hash chain, checks that the log still reaches the end recorded in its head',
        'file (<log>.head, updated after every append), and with --checkpoint that it reaches',
        "a value printed earlier by 'keytether audit checkpoint': cutting whole records off the",
        'end leaves a valid chain, and only a checkpoint kept elsewhere shows that it was done.',
        examples(
          'keytether audit verify --checkpoint "$(cat ~/keytether-checkpoint)"',
          'keytether audit verify --file /backup/keytether/audit.jsonl',
        ),
      ].join('\n'),
    )
    .description(
      'check the hash chain of the audit log; name the first broken record and exit 1 if any',
    )
    .option('--file <path>', 'the log to check (default $KEYTETHER_HOME/audit.jsonl)')
    .option(
      '--checkpoint <value>',
      "also check the log reaches this value from 'keytether audit checkpoint'",
    )
    .action(
      action(async (_opts: AuditOpts, cmd: Command) => {
        write(cmd, await auditVerify(cmd.optsWithGlobals<AuditOpts>()));
      }),
    );
  audit
    .command('checkpoint')
    .addHelpText(
      'after',
      [
        '',
        'Prints kt-audit-1:RECORDS:HASH for the log as it ends now (after checking its chain).',
        'Keep it where the workstation cannot rewrite it (a ticket, a mail, another machine);',
        "later 'keytether audit verify --checkpoint VALUE' fails if records up to it were",
        'removed or rewritten.',
        examples(
          'keytether audit checkpoint > ~/keytether-checkpoint',
          'keytether audit checkpoint | ssh backup tee -a keytether-checkpoints',
        ),
      ].join('\n'),
    )
    .description('print a value naming the end of the audit log, to keep elsewhere')
    .option('--file <path>', 'the log (default $KEYTETHER_HOME/audit.jsonl)')
    .action(
      action(async (_opts: AuditOpts, cmd: Command) => {
        write(cmd, await auditCheckpoint(cmd.optsWithGlobals<AuditOpts>()));
      }),
    );
  registerQueries(audit, logPath);
}
