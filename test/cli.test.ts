// The CLI skeleton as a user meets it: help, version, exit statuses and one-line errors.
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Command } from 'commander';
import t, { type Test } from 'tap';
import { UsageError, UserError } from '../system/user-error.js';
import { action, buildProgram, resolveHome, runProgram, type Io } from '../cli/program.js';
import { parseDuration } from '../system/flag-duration.js';
import { cliPath, repoRoot, runCli as runCliIn, type RunOptions } from './support/cli.js';

// Never let a command touch the real ~/.local/share/keytether of whoever runs the tests.
const home = mkdtempSync(join(tmpdir(), 'kt-cli-'));
t.teardown(() => rmSync(home, { recursive: true, force: true }));
const runCli = (args: string[], opts: RunOptions = {}) =>
  runCliIn(args, { timeoutMs: 20_000, ...opts, env: { KEYTETHER_HOME: home, ...opts.env } });

const pkg = JSON.parse(readFileSync(join(repoRoot, 'package.json'), 'utf8')) as { version: string };

const TOP_COMMANDS = [
  'keys',
  'agent',
  'ssh',
  'token',
  'status',
  'audit',
  'doctor',
  'relay',
  'connect',
  'serve',
];

function assertOneLineNoStack(t: Test, stderr: string): void {
  const lines = stderr.split('\n').filter((l) => l !== '');
  t.equal(lines.length, 1, `one line on stderr: ${JSON.stringify(stderr)}`);
  t.notMatch(stderr, /\n\s+at /, 'no stack trace');
}

t.test('the entry point keeps its shebang through the build', async (t) => {
  const main = await cliPath();
  t.match(readFileSync(main, 'utf8'), /^#!\/usr\/bin\/env node\n/);
  // dist/ is what `npm install` builds and `npx keytether` runs; check it when present.
  const dist = join(repoRoot, 'dist', 'cli', 'main.js');
  if (existsSync(dist)) {
    t.ok(statSync(dist).mode & 0o100, 'dist/cli/main.js is executable');
    t.match(readFileSync(dist, 'utf8'), /^#!\/usr\/bin\/env node\n/);
  }
});

t.test('--help lists every command and the global options', async (t) => {
  const r = await runCli(['--help']);
  t.equal(r.code, 0);
  t.equal(r.stderr, '');
  for (const c of TOP_COMMANDS) t.match(r.stdout, new RegExp(`^  ${c}\\b`, 'm'), `lists ${c}`);
  t.match(r.stdout, /--home <dir>/);
  t.match(r.stdout, /--version/);
});

t.test('group commands list their subcommands', async (t) => {
  const groups: [string, string[]][] = [
    ['keys', ['import', 'list', 'export', 'remove']],
    ['token', ['create', 'list', 'revoke']],
    ['audit', ['verify', 'checkpoint', 'list', 'summary']],
  ];
  for (const [group, subs] of groups) {
    const r = await runCli([group, '--help']);
    t.equal(r.code, 0, `${group} --help exits 0`);
    for (const s of subs) t.match(r.stdout, new RegExp(`^  ${s}\\b`, 'm'), `${group} lists ${s}`);
  }
});

t.test('ssh --help offers --reconnect; a hidden flag still explains itself', async (t) => {
  const help = await runCli(['ssh', '--help']);
  t.match(help.stdout, /--reconnect/, '--reconnect is offered');
  t.notMatch(help.stdout, /--socket /, 'nothing "not available yet" is offered');
  const r = await runCli(['ssh', '--socket', '/tmp/x', 'example.invalid']);
  t.equal(r.code, 1);
  t.match(
    r.stderr,
    /^keytether ssh: reusing a running keytether agent \(--socket\) is not available yet/,
  );
});

t.test('an unreachable jump host is named, in one sentence', async (t) => {
  const home = await mkdtemp(join(tmpdir(), 'kt-jump-'));
  t.teardown(() => rm(home, { recursive: true, force: true }));
  await mkdir(join(home, '.ssh'), { mode: 0o700 });
  await writeFile(join(home, '.ssh', 'config'), 'Host j\n  ProxyJump bastion.invalid\n');
  const r = await runCli(['ssh', '--no-agent', 'j'], {
    env: { HOME: home, KEYTETHER_HOME: join(home, 'kt'), SSH_AUTH_SOCK: undefined },
  });
  t.equal(r.code, 1);
  t.match(r.stderr, /^keytether ssh: jump host bastion\.invalid: [^\n]*\n$/);
});

t.test('every command documents its flags in --help', async (t) => {
  const flags: [string[], string[]][] = [
    [['agent'], ['--socket', '--relay', '--pinentry-program', '--backend']],
    [
      ['ssh'],
      [
        '-p, --port',
        '-J, --jump',
        '-i, --identity',
        '-o, --option',
        '--remote-socket',
        '--remote-command',
      ],
    ],
    [['ssh'], ['--accept-new', '--import-keys', '--replace']],
    [
      ['token', 'create'],
      ['--key', '--ops', '--ttl', '--max-uses', '--label', '--relay'],
    ],
    [['token', 'list'], ['--json']],
    [['status'], ['--json']],
    [['lock'], ['--all']],
    [
      ['audit', 'list'],
      ['--key', '--host', '--token', '--decision', '--since', '--until', '--limit', '--json'],
    ],
    [['relay'], ['--listen', '--tls-cert', '--tls-key']],
    [['connect'], ['--relay', '--token', '--socket']],
    [['serve'], ['--stdio', '--socket', '--import-keys', '--replace']],
  ];
  for (const [cmd, expected] of flags) {
    const r = await runCli([...cmd, '--help']);
    t.equal(r.code, 0, `${cmd.join(' ')} --help exits 0`);
    for (const f of expected) t.ok(r.stdout.includes(f), `${cmd.join(' ')} --help shows ${f}`);
  }
});

t.test('--version prints the package version', async (t) => {
  for (const flag of ['--version', '-V']) {
    const r = await runCli([flag]);
    t.equal(r.code, 0);
    t.equal(r.stdout.trim(), pkg.version);
  }
});

t.test('bad usage exits 2 with one line and no stack trace', async (t) => {
  const cases: [string[], RegExp][] = [
    [['frobnicate'], /^keytether: unknown command 'frobnicate' \(see 'keytether --help'\)\n$/],
    [['--frobnicate'], /^keytether: unknown option '--frobnicate'/],
    [['status', '--frobnicate'], /^keytether status: unknown option '--frobnicate'.*status --help/],
    [['ssh'], /^keytether ssh: missing required argument 'destination'/],
    [
      ['ssh', 'a', 'b'],
      /^keytether ssh: 'b' follows the destination; to run a command on it, put it after --/,
    ],
    [['token', 'create'], /^keytether token create: required option '--key <fpr>'/],
    [['token', 'create', '--key', 'A', '--ttl', '5 fortnights'], /is not a duration/],
    [['token', 'create', '--key', 'A', '--max-uses', '0'], /not a whole number/],
    [['agent', '--backend', 'vault'], /Allowed choices are builtin, gpg-agent/],
    [['relay', '--listen'], /^keytether relay: option '--listen <host:port>' argument missing/],
  ];
  for (const [args, pattern] of cases) {
    const r = await runCli(args);
    t.equal(r.code, 2, `${args.join(' ')} exits 2`);
    t.match(r.stderr, pattern, `${args.join(' ')} explains`);
    assertOneLineNoStack(t, r.stderr);
    t.equal(r.stdout, '');
  }
});

t.test('a group without its subcommand shows its help and exits 2', async (t) => {
  const r = await runCli(['token']);
  t.equal(r.code, 2);
  t.match(r.stderr, /Usage: keytether token/);
});

t.test('global options are accepted after the subcommand too', async (t) => {
  const r = await runCli(['status', '--home', '/nonexistent', '--json']);
  t.equal(r.code, 1);
  t.equal(
    r.stderr,
    'keytether status: no keytether agent is running for /nonexistent; start one with keytether agent\n',
  );
});

// In-process checks of the helpers the command modules share.

function capture(): Io & { out: string; err: string } {
  const io = {
    out: '',
    err: '',
    stdout: { write: (s: string) => (io.out += s) },
    stderr: { write: (s: string) => (io.err += s) },
  };
  return io;
}

t.test(
  'an unexpected error is an internal error: one line, exit 1, stack only on request',
  async (t) => {
    const make = () => {
      const program = buildProgram();
      program.command('explode').action(
        action(() => {
          throw new TypeError('cannot read the thing\nsecond line');
        }),
      );
      return program;
    };
    const saved = process.env.KEYTETHER_DEBUG;
    t.teardown(() => {
      if (saved === undefined) delete process.env.KEYTETHER_DEBUG;
      else process.env.KEYTETHER_DEBUG = saved;
    });
    delete process.env.KEYTETHER_DEBUG;
    const io = capture();
    t.equal(await runProgram(make(), ['explode'], io), 1);
    t.equal(io.err, 'keytether explode: internal error: cannot read the thing second line\n');

    process.env.KEYTETHER_DEBUG = '1';
    const dbg = capture();
    t.equal(await runProgram(make(), ['explode'], dbg), 1);
    t.match(
      dbg.err,
      /^keytether explode: internal error: .*\nTypeError: cannot read the thing\n.*\n\s+at /,
    );
  },
);

t.test('UserError and UsageError thrown by an action give exit 1 and 2', async (t) => {
  const program = buildProgram();
  program.command('fail-user').action(
    action(() => {
      throw new UserError('the key ABCD is not in the keystore; run keytether keys list');
    }),
  );
  program.command('fail-usage').action(
    action(async () => {
      throw new UsageError('give either --token or KEYTETHER_TOKEN');
    }),
  );
  program.command('pass-status').action(action(() => 7));
  let io = capture();
  t.equal(await runProgram(program, ['fail-user'], io), 1);
  t.equal(
    io.err,
    'keytether fail-user: the key ABCD is not in the keystore; run keytether keys list\n',
  );
  io = capture();
  t.equal(await runProgram(program, ['fail-usage'], io), 2);
  t.equal(io.err, 'keytether fail-usage: give either --token or KEYTETHER_TOKEN\n');
  io = capture();
  t.equal(await runProgram(program, ['pass-status'], io), 7, 'an action can pass on a status');
  t.equal(io.err, '');
});

t.test('parseDuration', async (t) => {
  t.equal(parseDuration('90s'), 90_000);
  t.equal(parseDuration('15m'), 900_000);
  t.equal(parseDuration('1h'), 3_600_000);
  t.equal(parseDuration('2d'), 172_800_000);
  t.equal(parseDuration('1h30m'), 5_400_000);
  t.equal(parseDuration('250ms'), 250);
  for (const bad of [
    '',
    '1',
    'h',
    '1 h',
    '-1h',
    '1.5h',
    '0s',
    '1y',
    '99999999999d',
    'x'.repeat(100),
  ]) {
    t.throws(() => parseDuration(bad), UsageError, `rejects ${JSON.stringify(bad)}`);
  }
});

t.test('resolveHome', async (t) => {
  t.equal(resolveHome({ home: '/a/b' }, { KEYTETHER_HOME: '/c' }), '/a/b');
  t.equal(resolveHome({}, { KEYTETHER_HOME: '/c', XDG_DATA_HOME: '/x' }), '/c');
  t.equal(resolveHome({}, { XDG_DATA_HOME: '/x' }), '/x/keytether');
  t.equal(resolveHome({}, { XDG_DATA_HOME: 'relative', HOME: '/h' }), '/h/.local/share/keytether');
  t.equal(resolveHome(undefined, { HOME: '/h' }), '/h/.local/share/keytether');
  t.equal(resolveHome({ home: 'rel' }, {}), join(process.cwd(), 'rel'), 'made absolute');
});

t.test('every --help ends with examples whose flags the command has', async (t) => {
  const paths: string[][] = [];
  const walk = (cmd: Command, path: string[]): void => {
    paths.push(path);
    for (const sub of cmd.commands) walk(sub, [...path, sub.name()]);
  };
  const program = buildProgram();
  walk(program, []);
  t.ok(paths.length >= 20, 'every command and subcommand');
  const known = (cmd: Command, flag: string): boolean => {
    for (let c: Command | null = cmd; c; c = c.parent) {
      if (c.options.some((o) => o.long === flag || o.short === flag)) return true;
    }
    return flag === '--help' || flag === '-h';
  };
  // The real executable once; the tree in-process, since twenty-odd node starts cost a minute.
  const real = await runCli(['token', 'create', '--help']);
  t.match(real.stdout, /\nExamples:\n {2}keytether token create --key /);
  for (const path of paths) {
    let stdout = '';
    const io: Io = { stdout: { write: (s: string) => (stdout += s) }, stderr: { write: () => 0 } };
    const name = ['keytether', ...path].join(' ');
    t.equal(await runProgram(buildProgram(), [...path, '--help'], io), 0, `${name} --help`);
    const m = /\nExamples?:\n((?: {2}\S.*\n?)+)$/.exec(stdout);
    t.ok(m, `${name} --help ends with an example`);
    const lines = (m?.[1] ?? '').trimEnd().split('\n');
    t.ok(lines.length <= 2, `${name}: one or two examples`);
    t.ok(
      lines.some((l) => l.includes(`${name} `) || l.endsWith(name)),
      `${name}: an example runs it`,
    );
    // Each example's own flags must exist, so renaming a flag cannot leave a stale example.
    for (const line of lines) {
      const words = line.slice(line.indexOf('keytether ')).split(/\s+/).slice(1);
      let cmd = program;
      for (const w of words) {
        const sub = cmd.commands.find((c) => c.name() === w);
        if (!sub) break;
        cmd = sub;
      }
      // git-sign's flags are gpg's, passed on unchanged.
      if (cmd.name() === 'git-sign') continue;
      for (const w of words) {
        if (w === '--' || w === '|' || w === '>') break;
        if (!/^-/.test(w)) continue;
        t.ok(known(cmd, w.split('=')[0]!), `${name}: example flag ${w} exists`);
      }
    }
  }
});
