import { Option, type Command } from 'commander';
import { action, collect, notAvailable, positiveIntArg } from '../program.js';

export function register(program: Command): void {
  program
    .command('ssh')
    .description('forward the holder to HOST over SSH until interrupted or the connection ends')
    .argument('<destination>', '[USER@]HOST')
    .option('-p, --port <port>', 'SSH port', positiveIntArg)
    .option('-i, --identity <file>', 'SSH identity file (repeatable)', collect)
    .option('-o, --option <name=value>', 'ssh_config option (repeatable)', collect)
    .option(
      '--remote-socket <path>',
      "socket on HOST (default: what 'gpgconf --list-dirs agent-socket' prints there)",
    )
    .option('--remote-command <cmd>', 'how to run keytether on HOST', 'keytether')
    .option('--accept-new', 'trust an unknown host key, then record it')
    .option('--import-keys', "import the holder's public keys into HOST's keyring")
    .option('--reconnect', 'retry with backoff instead of exiting when the link drops')
    .option('--socket <path>', 'local holder socket to reuse (default $KEYTETHER_HOME/S.gpg-agent)')
    .option(
      '--relay <url>',
      'in-process holder: also connect out to this relay (repeatable)',
      collect,
    )
    .option('--pinentry-program <path>', 'in-process holder: pinentry to ask for passphrases with')
    .addOption(
      new Option('--backend <backend>', 'in-process holder: where the keys live').choices([
        'builtin',
        'gpg-agent',
      ]),
    )
    .action(action(notAvailable));
}
