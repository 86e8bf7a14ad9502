// keytether completion bash|zsh and the man page are generated from the program tree: bash's own
// compgen, fed the generated script, offers each command's subcommands and flags; man renders
// the page with every command in it; the build writes it where package.json "man" says.

import t from 'tap';
import { execFile } from 'node:child_process';
import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { cliPath, repoRoot, runCli } from './support/cli.js';
import type { Command } from 'commander';
import { buildProgram } from '../cli/program.js';

const execFileP = promisify(execFile);

/** What bash completes for the words typed so far (the last one is being completed). */
async function complete(script: string, words: string[]): Promise<string[]> {
  const line = `keytether ${words.join(' ')}`;
  const cmd = `source ${script}
COMP_WORDS=(keytether ${words.map((w) => `'${w}'`).join(' ')}); COMP_CWORD=${words.length}
COMP_LINE='${line}'; COMP_POINT=${line.length}
_keytether; printf '%s\\n' "\${COMPREPLY[@]}"; complete -p keytether`;
  const { stdout } = await execFileP('bash', ['--norc', '-c', cmd]);
  return stdout.split('\n').filter(Boolean);
}

t.test('bash: subcommands and flags of each level, from the same tree as --help', async (t) => {
  const r = await runCli(['completion', 'bash']);
  t.equal(r.code, 0, r.stderr);
  const dir = await mkdtemp('/tmp/ktcomp-');
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const script = path.join(dir, 'keytether.bash');
  await writeFile(script, r.stdout);

  const top = await complete(script, ['']);
  t.equal(top.at(-1), 'complete -F _keytether keytether', 'complete -p names the function');
  const program = buildProgram();
  for (const c of program.commands.filter((c) => c.name() !== 'man')) {
    t.ok(top.includes(c.name()), `offers ${c.name()}`);
  }
  t.notOk(top.includes('man'), 'the hidden man command is not offered');
  t.same(await complete(script, ['do']), ['doctor', 'complete -F _keytether keytether']);
  const doctorFlags = await complete(script, ['doctor', '--']);
  for (const f of ['--server', '--workstation', '--sshd-config', '--help']) {
    t.ok(doctorFlags.includes(f), `doctor ${f}`);
  }
  const keys = await complete(script, ['keys', '']);
  t.ok(keys.includes('import') && keys.includes('list'), keys.join(' '));
  t.ok((await complete(script, ['keys', 'list', '--j'])).includes('--json'));
});

t.test('zsh gets the same completion through bashcompinit', async (t) => {
  const r = await runCli(['completion', 'zsh']);
  t.equal(r.code, 0);
  t.match(r.stdout, /^#compdef keytether\n/);
  t.match(r.stdout, /bashcompinit/);
  t.match(r.stdout, /complete -F _keytether keytether\n$/);
  const bad = await runCli(['completion', 'fish']);
  t.equal(bad.code, 2);
  t.match(bad.stderr, /^keytether completion: .*fish.*\n$/);
});

t.test('the man page names every command and renders', async (t) => {
  const r = await runCli(['man']);
  t.equal(r.code, 0, r.stderr);
  t.match(r.stdout, /^\.TH KEYTETHER 1 /);
  for (const sec of ['NAME', 'SYNOPSIS', 'OPTIONS', 'COMMANDS', 'EXIT STATUS']) {
    t.match(r.stdout, new RegExp(`^\\.SH ${sec}$`, 'm'));
  }
  t.match(r.stdout, /^\.SS keytether doctor /m);
  t.match(r.stdout, /^\.B \\-\\-sshd\\-config <file>$/m);
  const dir = await mkdtemp('/tmp/ktman-');
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const page = path.join(dir, 'keytether.1');
  await writeFile(page, r.stdout);
  const rendered = await execFileP('man', ['-l', page], {
    env: { ...process.env, MANWIDTH: '100', MANPAGER: 'cat', PAGER: 'cat' },
  }).catch(() => undefined);
  if (!rendered) return;
  t.match(rendered.stdout, /keytether doctor \[options\]/);
  t.match(rendered.stdout, /--sshd-config <file>/);
});

t.test('the build writes the man page that package.json installs, warning-free', async (t) => {
  const pkg = JSON.parse(await readFile(path.join(repoRoot, 'package.json'), 'utf8')) as {
    man: string[];
    scripts: { build: string };
  };
  t.same(pkg.man, ['./dist/man/keytether.1'], 'npm install -g links the page into man1');
  t.match(pkg.scripts.build, /&& node scripts\/build-man\.mjs dist$/, 'npm run build writes it');

  // The build step, run against a copy of the test build (what `npm run build` leaves in dist/).
  // Inside the checkout, so the copy still resolves node_modules.
  const dist = await mkdtemp(path.join(repoRoot, '.cache', 'man-build-'));
  t.teardown(() => rm(dist, { recursive: true, force: true }));
  await cp(path.dirname(path.dirname(await cliPath())), dist, { recursive: true });
  await execFileP(process.execPath, [path.join(repoRoot, 'scripts', 'build-man.mjs'), dist]);
  const page = path.join(dist, pkg.man[0]!.replace('./dist/', ''));
  const env = { ...process.env, MANWIDTH: '80', MANPAGER: 'cat', PAGER: 'cat' };
  const warnings = await execFileP(
    'sh',
    ['-c', 'man --warnings -l "$1" 2>&1 >/dev/null', '-', page],
    {
      env,
    },
  );
  t.equal(warnings.stdout, '', 'man --warnings reports nothing');
  const rendered = (await execFileP('man', ['-l', page], { env })).stdout;
  const names = (cmd: Command, prefix: string[]): string[][] =>
    cmd.commands
      .filter((c) => c.name() !== 'man')
      .flatMap((c) => [[...prefix, c.name()], ...names(c, [...prefix, c.name()])]);
  const all = names(buildProgram(), []);
  t.ok(all.length > 20, `${all.length} commands`);
  for (const words of all) {
    t.ok(rendered.includes(`keytether ${words.join(' ')} [options]`), `names ${words.join(' ')}`);
  }
});
