// keytether git-sign: documented here for --help; program.ts runs it before commander parses,
// because its arguments are gpg's (git calls it as `gpg.program`).

import type { Command } from 'commander';
import { examples } from '../program.js';

export function register(program: Command): void {
  program
    .command('git-sign')
    .description(
      'a gpg.program for git on a server: shows the holder what is signed, then runs gpg',
    )
    .argument('[gpg-args...]', "gpg's arguments, passed on unchanged")
    .addHelpText(
      'after',
      '\nSet it up with `git config gpg.program "keytether git-sign"` (keytether ssh and\n' +
        'keytether connect -- CMD set it for their sessions through GIT_CONFIG_* variables).\n' +
        'Signing calls hand the payload to the keytether facade behind the agent socket, so the\n' +
        'holder can check the digest and show the commit or tag; everything else runs gpg as is.\n' +
        'For files: keytether git-sign --detach-sign FILE (or --clearsign FILE).\n' +
        'Env KEYTETHER_GPG: the real gpg (default: gpg on PATH).\n' +
        examples(
          'git config gpg.program "keytether git-sign"',
          'keytether git-sign --detach-sign release.tar.gz',
        ),
    );
}
