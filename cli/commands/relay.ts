import type { Command } from 'commander';
import { action, notAvailable } from '../program.js';

export function register(program: Command): void {
  program
    .command('relay')
    .description('run the relay; prints "listening: <base URL>"')
    .option('--listen <host:port>', 'address to listen on (port 0 picks one)', '127.0.0.1:7878')
    .option('--tls-cert <file>', 'TLS certificate (PEM)')
    .option('--tls-key <file>', 'TLS private key (PEM)')
    .action(action(notAvailable));
}
