// `keytether audit verify`: checks the audit log's hash chain and names the first broken record.

import type { Command } from 'commander';
import { join, resolve } from 'node:path';
import { verifyAuditLog } from '../../workstation/audit/audit.js';
import { UserError } from '../../system/user-error.js';
import { action, examples, resolveHome } from '../program.js';

/** Verifies `file` (default `$KEYTETHER_HOME/audit.jsonl`); returns the line to print on success. */
export async function auditVerify(opts: { file?: string; home?: string }): Promise<string> {
  const path = opts.file ? resolve(opts.file) : join(resolveHome(opts), 'audit.jsonl');
  let result;
  try {
    result = await verifyAuditLog(path);
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
  return `audit log OK: ${result.records} records`;
}

export function register(program: Command): void {
  const audit = program
    .command('audit')
    .addHelpText('after', examples('keytether audit verify'))
    .description("check the holder's audit log");
  audit
    .command('verify')
    .addHelpText(
      'after',
      examples(
        'keytether audit verify',
        'keytether audit verify --file /backup/keytether/audit.jsonl',
      ),
    )
    .description(
      'check the hash chain of the audit log; name the first broken record and exit 1 if any',
    )
    .option('--file <path>', 'the log to check (default $KEYTETHER_HOME/audit.jsonl)')
    .action(
      action(async (_opts: { file?: string }, cmd: Command) => {
        const line = await auditVerify(cmd.optsWithGlobals<{ file?: string; home?: string }>());
        const out = cmd.configureOutput().writeOut ?? ((s: string) => process.stdout.write(s));
        out(`${line}\n`);
      }),
    );
}
