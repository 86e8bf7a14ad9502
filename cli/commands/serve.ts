import type { Command } from 'commander';
import { action, notAvailable } from '../program.js';

export function register(program: Command): void {
  program
    .command('serve')
    .description("run a facade whose tunnel is stdin/stdout (what 'keytether ssh' starts on HOST)")
    .option('--stdio', 'use stdin/stdout as the tunnel')
    .option('--socket <path>', "socket to serve (default: 'gpgconf --list-dirs agent-socket')")
    .option('--import-keys', "import the holder's public keys into this host's keyring")
    .option('--replace', 'take over the socket from a running gpg-agent')
    .action(action(notAvailable));
}
