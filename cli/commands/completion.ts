// keytether completion bash|zsh and the hidden keytether man: generated from the program tree
// this command belongs to (cli/completion.ts).

import { Argument, type Command } from 'commander';
import { bashCompletion, manPage, zshCompletion } from '../completion.js';
import { action, examples, packageVersion } from '../program.js';

function root(cmd: Command): Command {
  let c = cmd;
  while (c.parent) c = c.parent;
  return c;
}

export function register(program: Command): void {
  program
    .command('completion')
    .description('print a shell completion script for bash or zsh')
    .addArgument(new Argument('<shell>', 'the shell').choices(['bash', 'zsh']))
    .addHelpText(
      'after',
      examples(
        'source <(keytether completion bash)',
        'keytether completion zsh > ~/.zfunc/_keytether',
      ),
    )
    .action(
      action((shell: string, _flags: unknown, cmd: Command) => {
        const out = cmd.configureOutput().writeOut ?? ((s: string) => process.stdout.write(s));
        out(shell === 'zsh' ? zshCompletion(root(cmd)) : bashCompletion(root(cmd)));
      }),
    );
  program
    .command('man', { hidden: true })
    .description('print the man page (roff), generated from the commands')
    .addHelpText('after', examples('keytether man > keytether.1 && man -l keytether.1'))
    .action(
      action((_flags: unknown, cmd: Command) => {
        const out = cmd.configureOutput().writeOut ?? ((s: string) => process.stdout.write(s));
        out(manPage(root(cmd), packageVersion()));
      }),
    );
}
