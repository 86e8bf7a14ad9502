// keytether serve --stdio: the server end of `keytether ssh`. stdout is the tunnel, so this
// command writes nothing else there; its messages (including `ready:`) go to stderr.

import type { Command } from 'commander';
import { serveStdio } from '../../server/serve-stdio.js';
import { UsageError } from '../../system/user-error.js';
import { action, durationArg, examples, packageVersion } from '../program.js';

interface ServeFlags {
  stdio?: boolean;
  socket?: string;
  importKeys?: boolean;
  replace?: boolean;
  linger?: number;
  /** false with --no-ssh-agent. */
  sshAgent?: boolean;
}

export function register(program: Command): void {
  program
    .command('serve')
    .addHelpText('after', examples('keytether serve --stdio --import-keys'))
    .description("run a facade whose tunnel is stdin/stdout (what 'keytether ssh' starts on HOST)")
    .option('--stdio', 'use stdin/stdout as the tunnel')
    .option('--socket <path>', "socket to serve (default: 'gpgconf --list-dirs agent-socket')")
    .option('--import-keys', "import the holder's public keys into this host's keyring")
    .option('--replace', 'take over the socket from a running gpg-agent')
    .option('--no-ssh-agent', 'serve no ssh-agent socket (SSH_AUTH_SOCK) beside the gpg-agent one')
    .option(
      '--linger <duration>',
      "when the link drops, keep the socket answering 'No agent running' this long for a reconnecting session",
      durationArg,
    )
    .action(
      action(async (flags: ServeFlags) => {
        if (!flags.stdio) {
          throw new UsageError('only --stdio is available: the tunnel is stdin/stdout');
        }
        return serveStdio({
          ...(flags.socket !== undefined ? { socket: flags.socket } : {}),
          importKeys: flags.importKeys ?? false,
          replace: flags.replace ?? false,
          sshAgent: flags.sshAgent !== false,
          ...(flags.linger !== undefined ? { lingerMs: flags.linger } : {}),
          software: `keytether/${packageVersion()}`,
        });
      }),
    );
}
