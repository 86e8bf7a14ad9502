// Reaching a server through jump hosts and ProxyCommand, and logging in with encrypted identity
// files, against real OpenSSH sshds on 127.0.0.1: a jump host, a second one, and a target. All
// listen on loopback, so each test proves the route it took from the sshds' own logs (a jump
// sshd at LogLevel DEBUG1 logs every direct-tcpip channel it opens, with the port it goes to).

import { spawnSync } from 'node:child_process';
import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import t from 'tap';
import { resolveSshTarget } from '../workstation/ssh/config.js';
import { connectSsh, execCapture } from '../workstation/ssh/connect.js';
import type { ConnectSshOptions } from '../workstation/ssh/connect.js';
import { pinentryAskPassphrase } from '../workstation/ssh/identity-passphrase.js';
import { shellQuote } from '../workstation/ssh/connect.js';
import { ALLOW_BLIND_FLAG } from './support/blind-signing.js';
import { cliPath, runCli, spawnCli, waitForLine } from './support/cli.js';
import { exportSecretKey, generateKey, makeGnupgHome } from './support/gnupg.js';
import { makePinentryScript, type PinAnswer } from './support/pinentry-script.js';
import { freePort, sshArgs, startSshd, type Sshd } from './support/sshd.js';

// The target's sessions get an empty GNUPGHOME: the e2e test's keys live on the workstation.
const server = await makeGnupgHome();
t.teardown(() => server.cleanup());
const [jump, jump2, target] = await Promise.all([
  startSshd({ logLevel: 'DEBUG1' }),
  startSshd({ logLevel: 'DEBUG1' }),
  startSshd({ env: { GNUPGHOME: server.home } }),
]);
t.teardown(() => Promise.all([jump.stop(), jump2.stop(), target.stop()]));
const work = await mkdtemp('/tmp/kt-proxy-');
t.teardown(() => rm(work, { recursive: true, force: true }));
const home = path.join(work, 'home');
await mkdir(path.join(home, '.ssh'), { recursive: true, mode: 0o700 });

function keygen(name: string, passphrase = '', extra: string[] = ['-t', 'ed25519']): string {
  const file = path.join(work, name);
  const r = spawnSync('ssh-keygen', ['-q', ...extra, '-N', passphrase, '-C', name, '-f', file]);
  if (r.status !== 0) throw new Error(String(r.stderr));
  return file;
}

// Each sshd only knows its own client key, so a login can only succeed with the right block.
const knownHosts = path.join(work, 'known_hosts');
await writeFile(knownHosts, [jump, jump2, target].map((s) => s.knownHostsLine).join('\n') + '\n', {
  mode: 0o600,
});
const changedKnownHosts = path.join(work, 'changed_known_hosts');
// The jump host's port recorded with the target's host key: a man in the middle, as ssh sees it.
await writeFile(changedKnownHosts, `[127.0.0.1]:${jump.port} ${target.hostKeyPub}\n`);
const unauthorized = keygen('unauthorized');

function block(name: string, s: Sshd, lines: string[] = []): string[] {
  return [
    `Host ${name}`,
    '  HostName 127.0.0.1',
    `  Port ${s.port}`,
    `  User ${s.user}`,
    `  IdentityFile ${s.clientKey}`,
    ...lines.map((l) => `  ${l}`),
  ];
}
const config = path.join(home, '.ssh', 'config');
await writeFile(
  config,
  [
    ...block('jump', jump),
    ...block('jump2', jump2),
    ...block('target', target),
    ...block('viajump', target, ['ProxyJump jump']),
    ...block('viatwo', target, ['ProxyJump jump,jump2']),
    // The first hop's own ProxyJump applies, as in OpenSSH: viachain → jump → jump2 → target.
    ...block('jump2viajump', jump2, ['ProxyJump jump']),
    ...block('viachain', target, ['ProxyJump jump2viajump']),
    // For identity tests: no IdentityFile of its own.
    'Host enctarget',
    '  HostName 127.0.0.1',
    `  Port ${target.port}`,
    `  User ${target.user}`,
    ...block('notjumped', target, ['ProxyJump none', 'ProxyCommand false']),
    'Host badkeyjump',
    '  HostName 127.0.0.1',
    `  Port ${jump.port}`,
    `  IdentityFile ${unauthorized}`,
    'Host changedjump',
    '  HostName 127.0.0.1',
    `  Port ${jump.port}`,
    `  IdentityFile ${jump.clientKey}`,
    `  UserKnownHostsFile ${changedKnownHosts}`,
    ...block('viabadkey', target, ['ProxyJump badkeyjump']),
    ...block('viachanged', target, ['ProxyJump changedjump']),
    'Host *',
    `  UserKnownHostsFile ${knownHosts}`,
    '  GlobalKnownHostsFile /dev/null',
    '  IdentityAgent none',
    '  IdentitiesOnly yes',
    '',
  ].join('\n'),
);

function resolve(dest: string, more: { jump?: string; options?: string[] } = {}) {
  return resolveSshTarget({
    target: dest,
    configFile: config,
    systemConfigFile: null,
    home,
    env: {},
    ...more,
  });
}

/** direct-tcpip channels S opened to PORT so far (sshd LogLevel VERBOSE logs each one). */
function forwardsTo(s: Sshd, port: number): number {
  return s
    .log()
    .split('\n')
    .filter((l) => l.includes(`to 127.0.0.1 port ${port}`)).length;
}

async function echoThrough(
  dest: ReturnType<typeof resolve>,
  opts: ConnectSshOptions = {},
): Promise<string> {
  const client = await connectSsh(dest, opts);
  try {
    return (await execCapture(client, 'echo "$SSH_CONNECTION"')).stdout.trim();
  } finally {
    client.end();
  }
}

async function rejection(p: Promise<unknown>): Promise<Error> {
  try {
    await p;
  } catch (e) {
    return e as Error;
  }
  throw new Error('expected a rejection');
}

t.test('ProxyJump from the config: the target is reached through the jump sshd', async (t) => {
  const r = resolve('viajump');
  t.same(
    r.jumps.map((j) => [j.host, j.port, j.identityFiles]),
    [['jump', jump.port, [jump.clientKey]]],
    "the hop has its own config block's port and key",
  );
  const before = forwardsTo(jump, target.port);
  const conn = await echoThrough(r);
  t.match(conn, new RegExp(` ${target.port}$`), 'logged in to the target sshd');
  t.equal(forwardsTo(jump, target.port), before + 1, 'through one direct-tcpip channel of jump');
});

t.test('-J beats the config; ProxyJump none turns it off', async (t) => {
  const before = forwardsTo(jump2, target.port);
  await echoThrough(resolve('viajump', { jump: 'jump2' }));
  t.equal(forwardsTo(jump2, target.port), before + 1, '-J jump2 was used instead of jump');
  const none = resolve('viajump', { jump: 'none' });
  t.same(none.jumps, []);
  t.equal(none.proxyCommand, undefined);
  const notjumped = resolve('notjumped');
  t.same(notjumped.jumps, [], 'ProxyJump none is obtained first');
  t.equal(notjumped.proxyCommand, undefined, 'and hides the later ProxyCommand, as in OpenSSH');
  const hops = resolve('target', { jump: `${jump.user}@127.0.0.1:${jump2.port}` }).jumps;
  t.same(
    hops.map((h) => [h.user, h.hostName, h.port]),
    [[jump.user, '127.0.0.1', jump2.port]],
    '[user@]host[:port]',
  );
});

t.test('two hops, from -J and from a first hop that has its own ProxyJump', async (t) => {
  for (const r of [
    resolve('target', { jump: 'jump,jump2' }),
    resolve('viatwo'),
    resolve('viachain'),
  ]) {
    t.same(
      r.jumps.map((j) => j.port),
      [jump.port, jump2.port],
    );
    const j1 = forwardsTo(jump, jump2.port);
    const j2 = forwardsTo(jump2, target.port);
    const conn = await echoThrough(r);
    t.match(conn, new RegExp(` ${target.port}$`));
    t.equal(forwardsTo(jump, jump2.port), j1 + 1, 'jump opened the channel to jump2');
    t.equal(forwardsTo(jump2, target.port), j2 + 1, 'jump2 opened the channel to the target');
  }
});

t.test('a failing jump host is named in the error', async (t) => {
  const badKey = await rejection(connectSsh(resolve('viabadkey')));
  t.equal(badKey.name, 'UserError');
  t.match(
    badKey.message,
    new RegExp(
      `^jump host badkeyjump:${jump.port}: SSH login as \\S+ to 127\\.0\\.0\\.1 port ${jump.port} failed: the server accepted none of the keys tried \\(identity files ${unauthorized}\\)`,
    ),
  );
  const changed = await rejection(connectSsh(resolve('viachanged')));
  t.match(
    changed.message,
    new RegExp(
      `^jump host changedjump:${jump.port}: REFUSING to connect to 127\\.0\\.0\\.1 port ${jump.port}: its host key has CHANGED`,
    ),
  );
  // Nothing listens on PORT: the jump sshd's channel open fails, and says so.
  const port = await freePort();
  const refused = await rejection(
    connectSsh(resolve('jump', { jump: 'jump', options: [`Port=${port}`] })),
  );
  t.match(
    refused.message,
    new RegExp(
      `^jump host jump:${jump.port} could not open a connection to 127\\.0\\.0\\.1:${port} \\(`,
    ),
  );
  t.notMatch(refused.message, /\n/);
});

t.test('ProxyCommand: stock ssh -W and a plain TCP pipe', async (t) => {
  const viaSsh = [
    'ssh',
    ...sshArgs(jump).slice(0, -1),
    '-W',
    '%h:%p',
    `${jump.user}@127.0.0.1`,
  ].join(' ');
  const before = forwardsTo(jump, target.port);
  const r = resolve('target', { options: [`ProxyCommand=${viaSsh}`] });
  t.equal(r.proxyCommand, viaSsh.replace('%h:%p', `127.0.0.1:${target.port}`), 'tokens expanded');
  t.match(await echoThrough(r), new RegExp(` ${target.port}$`));
  t.equal(forwardsTo(jump, target.port), before + 1, 'the stock ssh client carried it');

  const pipeJs = `const s=require('net').connect(%p,'%h');process.stdin.pipe(s);s.pipe(process.stdout)`;
  const pipe = resolve('target', { options: [`ProxyCommand=${process.execPath} -e "${pipeJs}"`] });
  t.match(await echoThrough(pipe), new RegExp(` ${target.port}$`), 'node as the proxy');

  const early = await rejection(
    connectSsh(resolve('target', { options: ["ProxyCommand=sh -c 'exit 3'"] }), {
      proxyStderr: 'ignore',
    }),
  );
  t.equal(
    early.message,
    "ProxyCommand `sh -c 'exit 3'` exited with status 3 before the SSH connection was made; run it by hand to see why",
  );
});

t.test(
  "keytether ssh: a ProxyCommand's stderr reaches the user and its exit is one line",
  async (t) => {
    const ktHome = path.join(work, 'kt-early');
    const r = await runCli(
      ['ssh', '--no-agent', '-o', "ProxyCommand=sh -c 'echo proxy says no >&2; exit 3'", 'target'],
      { env: { HOME: home, KEYTETHER_HOME: ktHome, SSH_AUTH_SOCK: undefined } },
    );
    t.equal(r.code, 1);
    t.match(r.stderr, /^proxy says no$/m);
    t.match(
      r.stderr,
      /^keytether ssh: ProxyCommand `sh -c 'echo proxy says no >&2; exit 3'` exited with status 3 before the SSH connection was made; run it by hand to see why$/m,
    );
    t.equal(r.stderr.match(/^keytether ssh: /gm)?.length, 1);
  },
);

t.test('encrypted identity files are unlocked through the pinentry', async (t) => {
  const enc = keygen('enc_ed25519', 'right horse');
  const pem = keygen('enc_rsa_pem', 'pem horse', ['-t', 'rsa', '-b', '2048', '-m', 'PEM']);
  // No .pub files: the OpenSSH format's public half is read from the file itself; PEM's is not
  // there, so that key is decrypted before it can be offered.
  await rm(enc + '.pub');
  await rm(pem + '.pub');
  const refused = keygen('enc_refused', 'never asked');
  await target.authorize(
    spawnSync('ssh-keygen', ['-y', '-P', 'right horse', '-f', enc]).stdout.toString(),
  );
  await target.authorize(
    spawnSync('ssh-keygen', ['-y', '-P', 'pem horse', '-f', pem]).stdout.toString(),
  );

  const withPinentry = async (answers: PinAnswer[]) => {
    const script = await makePinentryScript({ answers });
    t.teardown(() => script.cleanup());
    const ask = pinentryAskPassphrase({
      program: script.program,
      env: { ...process.env, ...script.env },
    });
    return { script, ask };
  };
  const dest = (identities: string[]) =>
    resolveSshTarget({
      target: 'enctarget',
      configFile: config,
      systemConfigFile: null,
      home,
      env: {},
      identities,
    });

  await t.test('the right passphrase; a refused key is never asked for', async (t) => {
    const { script, ask } = await withPinentry(['right horse']);
    t.match(await echoThrough(dest([refused, enc]), { askPassphrase: ask }), / \d+$/);
    const calls = await script.calls();
    t.equal(calls.length, 1, 'one pinentry');
    const desc = calls[0]!.find((c) => c.cmd === 'SETDESC')?.text ?? '';
    t.match(desc, enc, 'the dialog names the identity file');
    t.notMatch(JSON.stringify(calls), /never asked/);
  });

  await t.test('a reconnect reuses the unlocked key', async (t) => {
    const { script, ask } = await withPinentry(['right horse']);
    const unlocked = new Map();
    for (let i = 0; i < 2; i++) {
      t.match(await echoThrough(dest([enc]), { askPassphrase: ask, unlocked }), / \d+$/);
    }
    t.equal((await script.calls()).length, 1, 'asked once for two connections');
  });

  await t.test('wrong passphrase three times, then the next identity', async (t) => {
    // The PEM key has no public half to offer, so it is unlocked (or given up) first.
    const { script, ask } = await withPinentry(['no', 'nope', 'still no', 'right horse']);
    t.match(await echoThrough(dest([enc, pem]), { askPassphrase: ask }), / \d+$/);
    const calls = await script.calls();
    t.equal(calls.length, 4);
    t.same(
      calls.map((c) => c.find((x) => x.cmd === 'SETERROR')?.text),
      [undefined, 'Bad Passphrase (try 2 of 3)', 'Bad Passphrase (try 3 of 3)', undefined],
    );
    const descs = calls.map((c) => c.find((x) => x.cmd === 'SETDESC')?.text ?? '');
    t.match(descs[0], pem);
    t.match(descs[3], enc);
  });

  await t.test('an encrypted PEM key', async (t) => {
    const { ask } = await withPinentry(['pem horse']);
    t.match(await echoThrough(dest([pem]), { askPassphrase: ask }), / \d+$/);
  });

  await t.test('cancel skips the identity; the error says so', async (t) => {
    const { ask } = await withPinentry([null]);
    const err = await rejection(connectSsh(dest([enc]), { askPassphrase: ask }));
    t.match(err.message, /SSH login as \S+ to 127\.0\.0\.1 port \d+ failed/);
    t.match(err.message, `skipped ${enc} no passphrase (passphrase entry cancelled)`);
    t.notMatch(err.message, /horse/);
  });

  await t.test('three wrong passphrases and no other key: a clear error', async (t) => {
    const { ask } = await withPinentry(['a', 'b', 'c']);
    const err = await rejection(connectSsh(dest([enc]), { askPassphrase: ask }));
    t.match(err.message, `skipped ${enc} no passphrase (wrong passphrase three times)`);
  });

  await t.test('a key the ssh-agent holds is used there and never prompts', async (t) => {
    const agentDir = await mkdtemp(path.join(work, 'agent-'));
    await chmod(agentDir, 0o700);
    const sock = path.join(agentDir, 'agent.sock');
    const agent = spawnSync('ssh-agent', ['-a', sock, '-s'], { encoding: 'utf8' });
    t.equal(agent.status, 0, agent.stderr);
    const pid = /SSH_AGENT_PID=(\d+)/.exec(agent.stdout)?.[1];
    t.teardown(() => {
      if (pid) process.kill(Number(pid), 'SIGTERM');
    });
    // Loaded unencrypted, then the file is given a passphrase: only the agent can sign unasked.
    const agentKey = keygen('agent_key');
    const add = spawnSync('ssh-add', [agentKey], { env: { ...process.env, SSH_AUTH_SOCK: sock } });
    t.equal(add.status, 0, String(add.stderr));
    spawnSync('ssh-keygen', ['-q', '-p', '-P', '', '-N', 'agent horse', '-f', agentKey]);
    await target.authorize(await readFile(agentKey + '.pub', 'utf8'));
    for (const only of ['yes', 'no']) {
      const { script, ask } = await withPinentry([null]);
      const r = resolveSshTarget({
        target: 'enctarget',
        configFile: config,
        systemConfigFile: null,
        home,
        env: { SSH_AUTH_SOCK: sock },
        identities: [agentKey],
        options: [`IdentitiesOnly=${only}`, 'IdentityAgent=SSH_AUTH_SOCK'],
      });
      t.match(await echoThrough(r, { askPassphrase: ask }), / \d+$/, `IdentitiesOnly ${only}`);
      t.same(await script.calls(), [], 'no pinentry');
    }
  });
});

t.test(
  'keytether ssh -J: ready through the jump host, and a remote signature verifies',
  async (t) => {
    const ws = await makeGnupgHome();
    t.teardown(() => ws.cleanup());
    const key = await generateKey(ws, {
      uid: 'Jo Jump <jo@example.org>',
      algo: 'ed25519',
      usage: 'sign,cert',
    });
    const ktHome = path.join(work, 'kt-e2e');
    const secrets = path.join(work, 'secret.gpg');
    await writeFile(secrets, await exportSecretKey(ws, key.fingerprint), { mode: 0o600 });
    const imp = await runCli(['keys', 'import', secrets], { env: { KEYTETHER_HOME: ktHome } });
    t.equal(imp.code, 0, imp.stderr);
    await rm(secrets);
    const remoteSocket = (await server.run('gpgconf', ['--list-dirs', 'agent-socket'])).stdout
      .toString()
      .trim();

    // The login to the target uses an encrypted key, unlocked through --pinentry-program.
    const loginKey = keygen('e2e_login', 'e2e horse');
    await target.authorize(await readFile(loginKey + '.pub', 'utf8'));
    const script = await makePinentryScript({ answers: ['e2e horse'] });
    t.teardown(() => script.cleanup());

    const cli = await cliPath();
    const before = forwardsTo(jump, target.port);
    const child = await spawnCli(
      [
        'ssh',
        ...ALLOW_BLIND_FLAG,
        '-J',
        'jump',
        '-i',
        loginKey,
        '--pinentry-program',
        script.program,
        'enctarget',
        '--remote-command',
        `${shellQuote(process.execPath)} ${shellQuote(cli)}`,
        '--remote-socket',
        remoteSocket,
        '--import-keys',
      ],
      { env: { HOME: home, KEYTETHER_HOME: ktHome, SSH_AUTH_SOCK: undefined, ...script.env } },
    );
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<number | null>((r) => child.once('exit', (c) => r(c)));
    t.teardown(() => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    });
    try {
      const ready = await waitForLine(child.stdout!, /^ready: (.+)$/, 60_000);
      t.equal(ready[1], remoteSocket);
    } catch (e) {
      child.kill('SIGKILL');
      throw new Error(`no ready: ${(e as Error).message}; stderr: ${stderr}`);
    }
    t.equal(forwardsTo(jump, target.port), before + 1, 'the link runs through the jump sshd');
    const calls = await script.calls();
    t.equal(calls.length, 1, 'the login key was asked for once');
    t.match(calls[0]!.find((c) => c.cmd === 'SETDESC')?.text ?? '', loginKey);

    const msg = path.join(work, 'jumped.txt');
    await writeFile(msg, 'signed beyond the bastion\n');
    const sig = msg + '.sig';
    const s = await server.gpg(['--batch', '-u', key.fingerprint, '-o', sig, '--detach-sign', msg]);
    t.equal(s.code, 0, s.stderr);
    const v = await server.gpg(['--batch', '--verify', sig, msg]);
    t.equal(v.code, 0, v.stderr);
    t.match(v.stderr, /Good signature from "Jo Jump/);

    child.kill('SIGINT');
    t.equal(await exited, 0, stderr);
  },
);
