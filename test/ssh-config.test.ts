// ssh_config resolution and known_hosts matching, checked against what OpenSSH itself decides
// (`ssh -G` prints the configuration ssh would use; ssh-keygen writes hashed entries).

import { spawnSync } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { parseTarget, resolveSshTarget } from '../workstation/ssh/config.js';
import {
  appendKnownHost,
  checkHostKey,
  fingerprint,
  wildcardMatch,
} from '../workstation/ssh/known-hosts.js';

const dir = await mkdtemp('/tmp/kt-sshcfg-');
t.teardown(() => rm(dir, { recursive: true, force: true }));

/** What OpenSSH resolves, from `ssh -G` (lower-case keys; repeated keys collected). */
function sshG(args: string[]): Record<string, string[]> {
  const r = spawnSync('ssh', ['-G', ...args], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(r.stderr);
  const out: Record<string, string[]> = {};
  for (const line of r.stdout.split('\n')) {
    const sp = line.indexOf(' ');
    if (sp > 0) (out[line.slice(0, sp)] ??= []).push(line.slice(sp + 1));
  }
  return out;
}

t.test('targets', async (t) => {
  t.same(parseTarget('alice@example.org'), { user: 'alice', host: 'example.org', port: undefined });
  t.same(parseTarget('a@b@example.org'), { user: 'a@b', host: 'example.org', port: undefined });
  t.same(parseTarget('ssh://bob@[::1]:2222'), { user: 'bob', host: '::1', port: 2222 });
  t.same(parseTarget('example.org'), { user: undefined, host: 'example.org', port: undefined });
  for (const bad of ['', 'alice@', '-oProxyCommand=sh', 'host;rm', 'ssh://h:99999', 'a b']) {
    t.throws(() => parseTarget(bad), { name: 'UsageError' }, bad);
  }
});

t.test('config resolution agrees with ssh -G', async (t) => {
  const home = os.homedir();
  const cfg = path.join(dir, 'config');
  const included = path.join(dir, 'extra.conf');
  await writeFile(
    included,
    ['Host inc', '  HostName included.example.net', '  User incuser', ''].join('\n'),
  );
  await writeFile(
    cfg,
    [
      `Include ${included}`,
      'Host build',
      '  HostName build.example.net',
      '  User deploy',
      '  Port 2201',
      '  IdentityFile ~/.ssh/id_%h_%r',
      '  IdentityFile /keys/%u-%p',
      '  IdentitiesOnly yes',
      '  UserKnownHostsFile ~/.ssh/kh_%h',
      '  StrictHostKeyChecking accept-new',
      '  ProxyJump bastion.example.net',
      'Host *',
      '  User fallback',
      '  ServerAliveInterval 7',
      '',
    ].join('\n'),
  );
  // ssh drops -i files that do not exist, so the one compared must.
  const extraKey = path.join(dir, 'extra_key');
  await writeFile(extraKey, '');
  const cases: { target: string; port?: number; options?: string[]; identities?: string[] }[] = [
    { target: 'build' },
    { target: 'ops@build' },
    { target: 'build', options: ['Port=2300', 'User=viaopt'] },
    { target: 'build', port: 2400, options: ['Port=2300'] },
    { target: 'build', identities: [extraKey] },
    { target: 'other.example.com' },
    { target: 'inc' },
  ];
  for (const c of cases) {
    const ours = resolveSshTarget({
      ...c,
      configFile: cfg,
      systemConfigFile: null,
      home,
      env: {},
    });
    // OpenSSH keeps the first of -p and -o Port it sees; keytether lets -p win, so pass it first.
    const args = ['-F', cfg];
    if (c.port) args.push('-p', String(c.port));
    for (const o of c.options ?? []) args.push('-o', o);
    for (const i of c.identities ?? []) args.push('-i', i);
    const theirs = sshG([...args, c.target]);
    const label = JSON.stringify(c);
    t.equal(ours.hostName, theirs.hostname?.[0], `${label} hostname`);
    t.equal(ours.user, theirs.user?.[0], `${label} user`);
    t.equal(ours.port, Number(theirs.port?.[0]), `${label} port`);
    if (c.target !== 'other.example.com' && c.target !== 'inc') {
      t.same(
        ours.identityFiles,
        // ssh -G prints IdentityFile before %-expansion; expand as ssh does when loading.
        (theirs.identityfile ?? []).map((f) =>
          f
            .replace(/^~/, home)
            .replace(/%h/g, ours.hostName)
            .replace(/%r/g, ours.user)
            .replace(/%p/g, String(ours.port))
            .replace(/%u/g, os.userInfo().username),
        ),
        `${label} identity files`,
      );
      t.same(
        ours.knownHostsFiles,
        (theirs.userknownhostsfile ?? []).map((f) => f.replace(/^~/, home)),
        `${label} known hosts files`,
      );
      t.equal(ours.identitiesOnly, theirs.identitiesonly?.[0] === 'yes');
      t.equal(ours.strictHostKeyChecking, theirs.stricthostkeychecking?.[0]);
      t.equal(ours.proxyJump, theirs.proxyjump?.[0]);
    }
    t.equal(ours.serverAliveIntervalMs, Number(theirs.serveraliveinterval?.[0]) * 1000);
  }
});

t.test('ProxyJump and ProxyCommand: the first obtained wins, as ssh -G says', async (t) => {
  const cfg = path.join(dir, 'jump');
  await writeFile(
    cfg,
    [
      'Host j',
      '  ProxyJump bastion',
      'Host c',
      '  ProxyCommand ssh -W %h:%p %r@gw',
      '  ProxyJump ignored',
      'Host n',
      '  ProxyJump none',
      'Host bastion',
      '  HostName bastion.example.net',
      '  Port 2222',
      '  User hop',
      '  ProxyJump outer',
      // Without this, `Host *` would send these through themselves: a loop, as in OpenSSH.
      'Host fallback outer',
      '  ProxyJump none',
      'Host *',
      '  ProxyJump fallback',
      '',
    ].join('\n'),
  );
  const home = os.homedir();
  for (const c of [
    { target: 'j' },
    { target: 'c' },
    { target: 'n' },
    { target: 'j', jump: 'x@h1:2200,h2' },
    { target: 'c', options: ['ProxyJump=h3'] },
  ]) {
    const ours = resolveSshTarget({ ...c, configFile: cfg, systemConfigFile: null, home, env: {} });
    const args = ['-F', cfg];
    if (c.jump) args.push('-J', c.jump);
    for (const o of c.options ?? []) args.push('-o', o);
    const theirs = sshG([...args, c.target]);
    const label = JSON.stringify(c);
    t.equal(ours.proxyJump, theirs.proxyjump?.[0], `${label} ProxyJump`);
    t.equal(
      ours.proxyCommand,
      theirs.proxycommand
        ?.join(' ')
        .replace('%h', 'c')
        .replace('%p', '22')
        .replace('%r', ours.user),
      `${label} ProxyCommand`,
    );
    t.same(ours.unsupported, [], 'neither is a notice');
  }
  const j = resolveSshTarget({
    target: 'j',
    configFile: cfg,
    systemConfigFile: null,
    home,
    env: {},
  });
  t.same(
    j.jumps.map((h) => `${h.user}@${h.hostName}:${h.port}`),
    [`${os.userInfo().username}@outer:22`, 'hop@bastion.example.net:2222'],
    "bastion's own config block, and its own ProxyJump in front of it",
  );
  const multi = resolveSshTarget({
    target: 'j',
    jump: 'x@h1:2200,ssh://y@h2:2201',
    configFile: cfg,
    systemConfigFile: null,
    home,
    env: {},
  });
  t.same(
    multi.jumps.map((h) => [h.user, h.hostName, h.port, h.jumps.length]),
    [
      // h1's config gives it ProxyJump fallback (Host *): spliced in front, as OpenSSH does.
      [os.userInfo().username, 'fallback', 22, 0],
      ['x', 'h1', 2200, 0],
      ['y', 'h2', 2201, 0],
    ],
  );
  const v6 = resolveSshTarget({
    target: 'j',
    jump: '[::1]:2222,::2',
    configFile: null,
    systemConfigFile: null,
    home,
    env: {},
  });
  t.same(
    v6.jumps.map((h) => [h.hostName, h.port]),
    [
      ['::1', 2222],
      ['::2', 22],
    ],
  );
  for (const off of [{ jump: 'none' }, { options: ['ProxyCommand=none'] }]) {
    const r = resolveSshTarget({
      target: 'j',
      ...off,
      configFile: cfg,
      systemConfigFile: null,
      home,
      env: {},
    });
    t.same([r.jumps, r.proxyJump, r.proxyCommand], [[], undefined, undefined], JSON.stringify(off));
  }
  const loop = path.join(dir, 'loop');
  await writeFile(loop, 'Host a\n  ProxyJump b\nHost b\n  ProxyJump a\n');
  t.throws(
    () => resolveSshTarget({ target: 'a', configFile: loop, systemConfigFile: null, env: {} }),
    { name: 'UserError', message: /more than 8 jump hosts .*loop/ },
  );
  for (const bad of ['h1,,h2', 'h1:99999', 'a;b', '-oProxyCommand=x']) {
    t.throws(
      () =>
        resolveSshTarget({
          target: 'x',
          jump: bad,
          configFile: null,
          systemConfigFile: null,
          env: {},
        }),
      { name: 'UsageError' },
      bad,
    );
  }
});

t.test('defaults, IdentityAgent and bad options', async (t) => {
  const home = path.join(dir, 'home');
  const r = resolveSshTarget({
    target: 'h',
    configFile: null,
    systemConfigFile: null,
    home,
    localUser: 'me',
    env: { SSH_AUTH_SOCK: '/run/agent.sock' },
  });
  t.equal(r.user, 'me');
  t.equal(r.port, 22);
  t.ok(r.identityFilesDefaulted);
  t.ok(r.identityFiles.includes(path.join(home, '.ssh', 'id_ed25519')));
  t.same(r.knownHostsFiles, [
    path.join(home, '.ssh', 'known_hosts'),
    path.join(home, '.ssh', 'known_hosts2'),
  ]);
  t.equal(r.identityAgent, '/run/agent.sock');
  t.equal(r.strictHostKeyChecking, 'ask');
  const none = resolveSshTarget({
    target: 'h',
    options: ['IdentityAgent none', 'UserKnownHostsFile=none'],
    configFile: null,
    systemConfigFile: null,
    env: { SSH_AUTH_SOCK: '/run/agent.sock' },
  });
  t.equal(none.identityAgent, undefined);
  t.same(none.knownHostsFiles, []);
  const base = { target: 'h', configFile: null, systemConfigFile: null, env: {} };
  t.throws(() => resolveSshTarget({ ...base, options: ['Host=x'] }), { name: 'UsageError' });
  t.throws(() => resolveSshTarget({ ...base, options: ['Port=0'] }), { name: 'UsageError' });
  t.throws(() => resolveSshTarget({ ...base, options: ['NoValue'] }), { name: 'UsageError' });
  t.throws(() => resolveSshTarget({ ...base, options: ['IdentityFile=/k/%z'] }), {
    name: 'UserError',
  });
  t.throws(() => resolveSshTarget({ ...base, options: ['StrictHostKeyChecking=maybe'] }), {
    name: 'UserError',
  });
});

t.test('known_hosts patterns', async (t) => {
  const blobA = Buffer.concat([
    Buffer.from([0, 0, 0, 11]),
    Buffer.from('ssh-ed25519'),
    Buffer.alloc(36, 1),
  ]);
  const blobB = Buffer.concat([
    Buffer.from([0, 0, 0, 11]),
    Buffer.from('ssh-ed25519'),
    Buffer.alloc(36, 2),
  ]);
  const a = blobA.toString('base64');
  const b = blobB.toString('base64');
  const file = path.join(dir, 'patterns');
  await writeFile(
    file,
    [
      `*.example.org,!evil.example.org ssh-ed25519 ${a}`,
      `[h?.test]:2222,plain.test ssh-ed25519 ${a}`,
      `@cert-authority *.ca.test ssh-ed25519 ${a}`,
      `bad line`,
      `x`.repeat(40_000) + ` ssh-ed25519 ${a}`,
      `changed.test ssh-ed25519 ${b}`,
      '',
    ].join('\n'),
  );
  const check = (host: string, port: number, blob = blobA) =>
    checkHostKey([file], host, port, 'ssh-ed25519', blob);
  t.equal((await check('www.EXAMPLE.org', 22)).status, 'match');
  t.equal((await check('evil.example.org', 22)).status, 'unknown');
  t.equal((await check('h1.test', 2222)).status, 'match');
  t.equal((await check('h1.test', 22)).status, 'unknown');
  t.equal((await check('plain.test', 2222)).status, 'match', 'port-less fallback');
  t.equal((await check('a.ca.test', 22)).status, 'unknown', '@cert-authority is not supported');
  const changed = await check('changed.test', 22);
  t.match(changed, { status: 'changed', file, line: 6 });
  t.match(changed.warnings.join('\n'), /line 4 is malformed[^]*line 5 is too long/);
  t.equal(
    (await checkHostKey([path.join(dir, 'absent')], 'x', 22, 'ssh-ed25519', blobA)).status,
    'unknown',
  );
  t.ok(wildcardMatch('*a*b', 'xxaxxb'));
  t.notOk(wildcardMatch('*a*b', 'a'.repeat(5000)));
});

t.test('fingerprints, hashed entries and appending match OpenSSH', async (t) => {
  const key = path.join(dir, 'hk');
  spawnSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', key]);
  const pub = (await readFile(key + '.pub', 'utf8')).trim();
  const blob = Buffer.from(pub.split(' ')[1] ?? '', 'base64');
  const lf = spawnSync('ssh-keygen', ['-l', '-f', key + '.pub'], { encoding: 'utf8' }).stdout;
  t.equal(fingerprint(blob), lf.split(' ')[1]);

  const sub = path.join(dir, 'kh', 'deeper');
  const file = path.join(sub, 'known_hosts');
  await mkdir(path.dirname(sub), { mode: 0o700 });
  await writeFile(path.join(dir, 'kh', 'placeholder'), '');
  await appendKnownHost(file, 'Host.Example', 2222, 'ssh-ed25519', blob);
  await appendKnownHost(file, 'other.example', 22, 'ssh-ed25519', blob, { hash: true });
  t.equal((await stat(file)).mode & 0o777, 0o600);
  t.equal((await stat(sub)).mode & 0o777, 0o700);
  const lines = (await readFile(file, 'utf8')).split('\n');
  t.equal(lines[0], `[host.example]:2222 ${pub.split(' ').slice(0, 2).join(' ')}`);
  t.match(lines[1], /^\|1\|/);
  // ssh-keygen -F finds both, including our hashed one.
  for (const name of ['[host.example]:2222', 'other.example']) {
    const f = spawnSync('ssh-keygen', ['-F', name, '-f', file], { encoding: 'utf8' });
    t.equal(f.status, 0, `ssh-keygen -F ${name}`);
  }
  t.equal((await checkHostKey([file], 'other.example', 22, 'ssh-ed25519', blob)).status, 'match');

  // A file without a final newline gets one before the appended line.
  const ragged = path.join(dir, 'ragged');
  await writeFile(ragged, `first.example ${pub}`);
  await appendKnownHost(ragged, 'second.example', 22, 'ssh-ed25519', blob);
  t.equal((await readFile(ragged, 'utf8')).split('\n').length, 3);
  await t.rejects(appendKnownHost(ragged, 'a b', 22, 'ssh-ed25519', blob));
});
