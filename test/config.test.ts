import t from 'tap';
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { homedir, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import {
  ConfigError,
  DEFAULT_CONFIG,
  loadConfig,
  mergeFlags,
  parseConfig,
  parseDuration,
  parsePolicyFlag,
} from '../workstation/home/config.js';
import { runCli } from './support/cli.js';

const home = await mkdtemp(join(tmpdir(), 'kt-config-'));
t.teardown(() => rm(home, { recursive: true, force: true }));

async function writeConfig(text: string, name = 'config.toml'): Promise<string> {
  const file = join(home, name);
  await writeFile(file, text, { mode: 0o600 });
  await chmod(file, 0o600);
  return file;
}

async function configError(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    if (e instanceof ConfigError) return e.message;
    throw e;
  }
  throw new Error('expected a ConfigError');
}

t.test('a missing default file gives the defaults', async (t) => {
  const empty = await mkdtemp(join(tmpdir(), 'kt-config-empty-'));
  t.teardown(() => rm(empty, { recursive: true, force: true }));
  const c = await loadConfig(empty);
  t.same(c, { ...DEFAULT_CONFIG, policy: [], relay: [] });
  t.equal(c.pinentryTimeoutMs, 60_000);
  t.equal(c.defaultCacheTtlMs, 600_000);
  t.equal(c.maxCacheTtlMs, 7_200_000);
  t.equal(c.backend, 'auto', 'keytether keys plus those of a gpg-agent home that has any');
  t.equal(c.gnupgHome, undefined, '$GNUPGHOME or ~/.gnupg, as gpg decides');
});

t.test('a missing file named with --config is an error naming it', async (t) => {
  const msg = await configError(loadConfig(home, join(home, 'nope.toml')));
  t.match(msg, /nope\.toml does not exist/);
});

t.test('a valid file', async (t) => {
  const file = await writeConfig(`
pinentry-program = "/usr/bin/pinentry-curses"
pinentry-timeout = 30
default-cache-ttl = "15m"
max-cache-ttl = 3600
backend = "gpg-agent"
socket = "/tmp/kt.sock"

[[policy]]
front = "ssh"
host = "*.ci.example.com"
op = "decrypt"
action = "confirm"
remember = "15m"

[[policy]]
key = "0x0123456789abcdef"
certify = true
action = "deny"
`);
  const c = await loadConfig(home);
  t.equal(c.file, file);
  t.equal(c.pinentryProgram, '/usr/bin/pinentry-curses');
  t.equal(c.pinentryTimeoutMs, 30_000);
  t.equal(c.defaultCacheTtlMs, 900_000);
  t.equal(c.maxCacheTtlMs, 3_600_000);
  t.equal(c.backend, 'gpg-agent');
  t.equal(c.socket, '/tmp/kt.sock');
  t.equal(c.policy.length, 2);
  t.match(c.policy[0], {
    front: 'ssh',
    host: '*.ci.example.com',
    op: 'decrypt',
    action: 'confirm',
    rememberMs: 900_000,
  });
  t.match(c.policy[0]?.origin, /policy rule 1 in .*config\.toml \(line 9\)/);
  t.match(c.policy[1], { key: '0123456789ABCDEF', certify: true, action: 'deny' });
});

t.test('an unknown key names the key, the file and the line', async (t) => {
  const file = await writeConfig('backend = "builtin"\n\npolcy = 3\n', 'unknown.toml');
  const msg = await configError(loadConfig(home, file));
  t.equal(msg, `unknown setting "polcy" in ${file} (line 3)`);

  const file2 = await writeConfig(
    '[[policy]]\naction = "allow"\n\n[[policy]]\nfront = "ssh"\nacton = "deny"\naction = "deny"\n',
    'unknown2.toml',
  );
  const msg2 = await configError(loadConfig(home, file2));
  t.equal(msg2, `unknown setting "acton" in policy rule 2 in ${file2} (line 6)`);

  const file3 = await writeConfig('[pinentry]\nprogram = "x"\n', 'unknown3.toml');
  t.match(await configError(loadConfig(home, file3)), /unknown setting "pinentry" in .*\(line 1\)/);
});

t.test('a value of the wrong type or out of range', async (t) => {
  const file = await writeConfig('backend = "openssl"\n', 'bad1.toml');
  t.equal(
    await configError(loadConfig(home, file)),
    `setting "backend" in ${file} (line 1) must be one of "builtin", "gpg-agent", "auto"`,
  );
  const file2 = await writeConfig('pinentry-timeout = true\n', 'bad2.toml');
  t.match(
    await configError(loadConfig(home, file2)),
    /"pinentry-timeout" in .*bad2\.toml \(line 1\)/,
  );
  const file3 = await writeConfig('default-cache-ttl = "ten minutes"\n', 'bad3.toml');
  t.match(await configError(loadConfig(home, file3)), /is not a duration/);
  const file4 = await writeConfig('[[policy]]\nfront = "ssh"\n', 'bad4.toml');
  t.match(
    await configError(loadConfig(home, file4)),
    /missing setting "action" in policy rule 1 in .*bad4\.toml \(line 1\)/,
  );
  const file5 = await writeConfig('[[policy]]\nkey = "not-hex"\naction = "allow"\n', 'bad5.toml');
  t.match(await configError(loadConfig(home, file5)), /"key" in policy rule 1 .*\(line 2\)/);
});

t.test('a TOML syntax error gives file and line', async (t) => {
  const file = await writeConfig('backend = "builtin"\nsocket = = "x"\n', 'syntax.toml');
  const msg = await configError(loadConfig(home, file));
  t.match(
    msg,
    new RegExp(`^syntax error in ${file.replace(/[.]/g, '\\.')} \\(line 2, column \\d+\\): `),
  );
  t.notMatch(msg, /\n/, 'one line');
});

t.test('a config file others can write is refused', async (t) => {
  const file = await writeConfig('backend = "builtin"\n', 'loose.toml');
  await chmod(file, 0o666);
  t.match(await configError(loadConfig(home, file)), /writable by other users: run chmod go-w/);
});

t.test('flags override the file', async (t) => {
  const file = await writeConfig(
    'default-cache-ttl = 60\nbackend = "gpg-agent"\n[[policy]]\nfront = "ssh"\naction = "deny"\n',
    'flags.toml',
  );
  const c = await loadConfig(home, file);
  const m = mergeFlags(c, {
    defaultCacheTtl: '5m',
    maxCacheTtl: 100,
    backend: 'builtin',
    pinentryProgram: '/bin/pe',
    pinentryTimeout: '2m',
    socket: '/tmp/s',
    relay: ['wss://r.example'],
    policy: ['front=ssh,op=sign,action=allow'],
  });
  t.equal(m.defaultCacheTtlMs, 300_000);
  t.equal(m.maxCacheTtlMs, 100_000);
  t.equal(m.backend, 'builtin');
  t.equal(m.pinentryProgram, '/bin/pe');
  t.equal(m.pinentryTimeoutMs, 120_000);
  t.equal(m.socket, '/tmp/s');
  t.same(m.relay, ['wss://r.example']);
  t.equal(m.policy.length, 2);
  t.match(m.policy[0], { front: 'ssh', op: 'sign', action: 'allow' }, 'flag rules come first');
  t.match(m.policy[1], { front: 'ssh', action: 'deny' });
  t.equal(c.defaultCacheTtlMs, 60_000, 'the loaded config is not modified');
  t.same(mergeFlags(c, {}), c, 'no flags, no change');

  t.throws(() => mergeFlags(c, { backend: 'nope' }), { name: 'ConfigError', flag: '--backend' });
  t.throws(() => mergeFlags(c, { defaultCacheTtl: 'soon' }), {
    message: /--default-cache-ttl: "soon" is not a duration/,
  });
  t.throws(() => mergeFlags(c, { policy: ['front=ssh,colour=red,action=allow'] }), {
    message: /--policy: "colour": unknown rule field/,
  });
  t.throws(() => mergeFlags(c, { policy: ['front=ssh'] }), { message: /"action": missing/ });
});

t.test('gnupg-home: ~ expanded, relative to the file, overridden by --gnupg-home', async (t) => {
  const cases: [string, string][] = [
    ['~/.gnupg-work', join(homedir(), '.gnupg-work')],
    ['~', homedir()],
    ['/srv/gnupg', '/srv/gnupg'],
    ['gnupg', join(home, 'gnupg')],
    ['~user/x', join(home, '~user/x')],
  ];
  for (const [value, want] of cases) {
    await writeConfig(`gnupg-home = "${value}"\n`);
    t.equal((await loadConfig(home)).gnupgHome, want, value);
  }
  const c = await loadConfig(home);
  t.equal(mergeFlags(c, {}).gnupgHome, join(home, '~user/x'), 'no flag: the file');
  t.equal(mergeFlags(c, { gnupgHome: '/opt/g' }).gnupgHome, '/opt/g', 'the flag wins');
  t.equal(mergeFlags(c, { gnupgHome: '~/g' }).gnupgHome, join(homedir(), 'g'), 'flag ~');
  t.equal(mergeFlags(c, { gnupgHome: 'rel' }).gnupgHome, resolve('rel'), 'flag: from the cwd');

  await writeConfig('gnupg-home = 3\n');
  t.match(
    await configError(loadConfig(home)),
    /setting "gnupg-home" in .*line 1.* must be a string/,
  );
  await writeConfig('gnupg-home = ""\n');
  t.match(await configError(loadConfig(home)), /"gnupg-home"/);
  await writeConfig('');
});

t.test('parseDuration', async (t) => {
  t.equal(parseDuration('15m'), 900_000);
  t.equal(parseDuration('1h'), 3_600_000);
  t.equal(parseDuration('90s'), 90_000);
  t.equal(parseDuration('2d'), 172_800_000);
  t.equal(parseDuration('1h30m'), 5_400_000);
  t.equal(parseDuration('600'), 600_000);
  t.equal(parseDuration(600), 600_000);
  t.equal(parseDuration(0), 0);
  for (const bad of ['', 'm', '15x', '-1', '1.5h', '9'.repeat(40), '99999999999d', -5, 1.5]) {
    t.throws(() => parseDuration(bad), ConfigError, `rejects ${String(bad)}`);
  }
});

t.test('a bad duration written over several lines is quoted on one line', async (t) => {
  // Found by `npm run fuzz config` (test/fuzz-corpus/config.json replays it).
  const text = 'pinentry-timeout = """multi\nline"""\n';
  t.throws(() => parseConfig(text, '/x/config.toml'), {
    name: 'ConfigError',
    message:
      'setting "pinentry-timeout" in /x/config.toml (line 1) is invalid: "multi\\nline" is not a duration: use seconds or a number with s, m, h or d, like 15m',
  });
});

t.test('process: only on allow rules, a program name or glob', async (t) => {
  const ok = parseConfig(
    '[[policy]]\nfront = "ssh"\nprocess = "git"\naction = "allow"\n',
    '/x/config.toml',
  );
  t.equal(ok.policy[0]?.process, 'git');
  for (const [rule, why] of [
    ['process = "git"\naction = "deny"', /only an "allow" rule/],
    ['process = "git"\naction = "confirm"', /only an "allow" rule/],
    ['process = "git"\naction = "allow"\nclear-sign = "off"', /without "clear-sign"/],
    ['process = "/usr/bin/git"\naction = "allow"', /program name/],
    ['process = ""\naction = "allow"', /process/],
  ] as const) {
    const file = await writeConfig(`[[policy]]\n${rule}\n`);
    t.match(await configError(loadConfig(home, file)), why, rule.replace(/\n/g, ', '));
  }
  t.equal(parsePolicyFlag('process=git,action=allow').process, 'git', 'as a --policy flag too');
  t.throws(() => parsePolicyFlag('process=git,action=deny'), /--policy: "process": only an/);
});

t.test(
  'a file with several problems lists each on its own line, through the CLI too',
  async (t) => {
    const dir = await mkdtemp(join(tmpdir(), 'kt-config-many-'));
    t.teardown(() => rm(dir, { recursive: true, force: true }));
    const file = join(dir, 'config.toml');
    await writeFile(file, 'backend = "openssl"\npolcy = 3\naudit-sync = "never"\n', {
      mode: 0o600,
    });
    const err = await loadConfig(dir).catch((e: unknown) => e);
    t.ok(err instanceof ConfigError);
    t.equal(
      (err as ConfigError).message,
      `${file} has 3 problems; fix each of these and run again:`,
    );
    t.same((err as ConfigError).problems, [
      `unknown setting "polcy" in ${file} (line 2)`,
      `setting "backend" in ${file} (line 1) must be one of "builtin", "gpg-agent", "auto"`,
      `setting "audit-sync" in ${file} (line 3) must be one of "write", "fsync"`,
    ]);

    const r = await runCli(['agent'], { env: { KEYTETHER_HOME: dir } });
    t.equal(r.code, 1);
    t.equal(
      r.stderr,
      `keytether agent: ${file} has 3 problems; fix each of these and run again:\n` +
        `  unknown setting "polcy" in ${file} (line 2)\n` +
        `  setting "backend" in ${file} (line 1) must be one of "builtin", "gpg-agent", "auto"\n` +
        `  setting "audit-sync" in ${file} (line 3) must be one of "write", "fsync"\n`,
    );

    // A file of typos is bounded: a screenful, then how many more.
    const typos = Array.from({ length: 25 }, (_, i) => `typo${i} = 1\n`).join('');
    await writeFile(file, typos, { mode: 0o600 });
    const many = await runCli(
      ['token', 'create', '--key', 'F'.repeat(40), '--relay', 'http://127.0.0.1:7878'],
      { env: { KEYTETHER_HOME: dir } },
    );
    t.equal(many.code, 1);
    const lines = many.stderr.trimEnd().split('\n');
    t.equal(lines.length, 22, many.stderr);
    t.match(lines[0], /has 25 problems; fix each of these and run again:$/);
    t.match(lines[1], /^  unknown setting "typo0" in .*\(line 1\)$/);
    t.equal(lines[21], '  …and 5 more');
  },
);
