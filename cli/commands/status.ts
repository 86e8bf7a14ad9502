import type { Command } from 'commander';
import { action, notAvailable } from '../program.js';

export function register(program: Command): void {
  program
    .command('status')
    .description('connected fronts and relays, unlocked keys, recent operations')
    .option('--json', 'print JSON')
    .action(action(notAvailable));
}
