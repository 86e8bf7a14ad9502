import type { Command } from 'commander';
import { action, notAvailable } from '../program.js';

export function register(program: Command): void {
  program
    .command('connect')
    .description('run a facade fed through a relay; with "-- CMD", run CMD against it')
    .argument('[command...]', 'command to run with a private GNUPGHOME (after --)')
    .option('--relay <url>', 'relay URL as the relay printed it')
    .option('--token <token>', 'token (default env KEYTETHER_TOKEN)')
    .option('--socket <path>', "socket to serve (default: 'gpgconf --list-dirs agent-socket')")
    .action(action(notAvailable));
}
