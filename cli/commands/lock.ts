// keytether lock: makes the running agent forget unlocked keys now, so their next use asks the
// pinentry again (workstation/control/lock.ts). KEY is resolved against the keys the agent's
// status lists as unlocked, by the same names `keytether audit list --key` takes.

import type { Command } from 'commander';
import { displayField } from '../../protocol/display-text.js';
import { keyMatches, parseKeyMatcher } from '../../workstation/audit/filter.js';
import { requestStatus } from '../../workstation/control/control.js';
import { requestLock } from '../../workstation/control/lock.js';
import { UsageError, UserError } from '../../system/user-error.js';
import { action, examples, packageVersion, resolveHome } from '../program.js';

function noAgent(home: string): UserError {
  return new UserError(`nothing to lock: no keytether agent runs for ${home}`);
}

export function register(program: Command): void {
  program
    .command('lock')
    .argument('[key]', 'fingerprint, keygrip or 16-digit key id of an unlocked key')
    .description('forget unlocked keys now: their next use asks for the passphrase again')
    .option('--all', 'forget every unlocked key')
    .addHelpText(
      'after',
      [
        '',
        "'keytether status' lists the unlocked keys and when each is forgotten by itself.",
        "Keys of the workstation's gpg-agent stay in its cache: gpgconf --reload gpg-agent.",
        examples('keytether lock --all', 'keytether lock 6F1C2A3B4D5E6F708192A3B4C5D6E7F801234567'),
      ].join('\n'),
    )
    .action(
      action(async (key: string | undefined, flags: { all?: boolean }, cmd: Command) => {
        const home = resolveHome(cmd.optsWithGlobals<{ home?: string }>());
        const out = (s: string) =>
          (cmd.configureOutput().writeOut ?? ((t: string) => process.stdout.write(t)))(`${s}\n`);
        if ((key === undefined) === (flags.all !== true)) {
          throw new UsageError('name one key to lock, or --all');
        }
        if (flags.all) {
          const locked = await requestLock(home, 'all');
          if (!locked) throw noAgent(home);
          out(
            locked.length === 0
              ? 'no key was unlocked'
              : `locked ${locked.length} key${locked.length === 1 ? '' : 's'}`,
          );
          return;
        }
        const matcher = parseKeyMatcher(key!, 'KEY');
        const status = await requestStatus(home, { version: packageVersion() });
        if (!status) throw noAgent(home);
        const unlocked = status.unlocked.filter((u) => keyMatches(matcher, u));
        if (unlocked.length === 0) {
          out(`${displayField(key!, 80)} is not unlocked; nothing to lock`);
          return;
        }
        for (const u of unlocked) {
          const locked = await requestLock(home, u.keygrip);
          if (!locked) throw noAgent(home);
          const name =
            u.fingerprint !== undefined
              ? `${u.fingerprint} (keygrip ${u.keygrip})`
              : `keygrip ${u.keygrip}`;
          // Gone between the status and the lock: its cache time ran out meanwhile.
          out(
            locked.length > 0
              ? `locked ${displayField(name, 200)}`
              : `${displayField(name, 200)} was forgotten already`,
          );
        }
      }),
    );
}
