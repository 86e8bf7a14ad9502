import type { Command } from 'commander';
import { action, collect, durationArg, notAvailable, positiveIntArg } from '../program.js';

export function register(program: Command): void {
  const token = program.command('token').description('tokens for facades and CI jobs');
  token
    .command('create')
    .description('issue a token and print it alone on stdout')
    .requiredOption('--key <fpr>', 'key the token may use (repeatable)', collect)
    .option('--ops <ops>', 'allowed operations: sign[,decrypt]', 'sign')
    .option('--ttl <duration>', 'lifetime, e.g. 90s, 15m, 1h, 2d (default 1h)', durationArg)
    .option('--max-uses <n>', 'number of operations allowed', positiveIntArg)
    .option('--label <text>', 'label shown in lists and the audit log')
    .option('--relay <url>', 'relay the token is for')
    .action(action(notAvailable));
  token
    .command('list')
    .description('tokens issued by this holder')
    .option('--json', 'print a JSON array')
    .action(action(notAvailable));
  token
    .command('revoke')
    .description('revoke a token at once')
    .argument('<id>', 'token id')
    .action(action(notAvailable));
}
