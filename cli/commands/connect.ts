// keytether connect: a facade fed through a relay, optionally wrapped around one command that gets
// a private GNUPGHOME (the CI use: `keytether connect --relay URL -- git tag -s v1 -m v1`).

import type { Command } from 'commander';
import { runConnect } from '../../server/connect.js';
import { UsageError } from '../errors.js';
import { action, packageVersion } from '../program.js';

interface ConnectFlags {
  relay?: string;
  token?: string;
  socket?: string;
  insecure?: boolean;
}

export function register(program: Command): void {
  program
    .command('connect')
    .description('run a facade fed through a relay; with "-- CMD", run CMD against it')
    .argument('[command...]', 'command to run with a private GNUPGHOME (after --)')
    .option('--relay <url>', 'relay URL as the relay printed it')
    .option('--token <token>', 'token (default env KEYTETHER_TOKEN)')
    .option('--socket <path>', "socket to serve (default: 'gpgconf --list-dirs agent-socket')")
    .option('--insecure', 'allow an unencrypted ws:// or http:// relay that is not on loopback')
    .action(
      action(async (command: string[], flags: ConnectFlags) => {
        if (!flags.relay) throw new UsageError('--relay URL is required');
        const token = flags.token ?? process.env.KEYTETHER_TOKEN;
        if (!token) {
          throw new UsageError('no token: pass --token or set KEYTETHER_TOKEN');
        }
        if (command.length > 0 && flags.socket !== undefined) {
          throw new UsageError(
            '--socket cannot be combined with a command; the command gets its own',
          );
        }
        return runConnect({
          relay: flags.relay,
          token,
          ...(flags.socket !== undefined ? { socket: flags.socket } : {}),
          ...(command.length > 0 ? { command } : {}),
          software: `keytether/${packageVersion()}`,
          insecure: flags.insecure ?? false,
        });
      }),
    );
}
