// `keytether ssh --reconnect` against a real sshd (issue #14.1): the ssh link runs through a TCP
// proxy, and each cut RSTs it while iptables rejects new connections to sshd's port with TCP
// resets, as a rebooted middlebox or a lost route would. Meanwhile gpg on the server fails at
// once; once the port is open again `keytether ssh` prints `reconnected:` (never a second
// `ready:`) on the same socket path, and a signature made there verifies. Three cuts within a
// minute, each recovery measured and printed.

import t from 'tap';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { shellQuote } from '../workstation/ssh/connect.js';
import { cliPath } from './support/cli.js';
import { testNeeding } from './support/ci.js';
import { ALLOW_BLIND_FLAG } from './support/blind-signing.js';
import { startFaultProxy } from './support/fault-proxy.js';
import { keyWorld, startCli, timedSign } from './support/fault-rig.js';
import { makeGnupgHome } from './support/gnupg.js';
import { startSshd } from './support/sshd.js';

const RECOVERY_MS = 5000;
const FAIL_MS = 2000;
const CUTS = 3;

const iptablesMissing =
  spawnSync('iptables', ['-L', 'INPUT', '-n'], { stdio: 'ignore' }).status !== 0 &&
  'needs iptables (and root) to reject the sshd port with TCP resets';

testNeeding(
  t,
  'the link is cut three times and comes back each time',
  iptablesMissing,
  async (t) => {
    const w = await keyWorld(t, 'Rey Connect <rey@example.org>');
    const server = await makeGnupgHome();
    t.teardown(() => server.cleanup());
    const sshd = await startSshd({ env: { GNUPGHOME: server.home } });
    t.teardown(() => sshd.stop());
    const link = await startFaultProxy({ port: sshd.port });
    t.teardown(() => link.close());
    const tmp = await mkdtemp('/tmp/ktreconnect-');
    t.teardown(() => rm(tmp, { recursive: true, force: true }));
    const knownHosts = path.join(tmp, 'known_hosts');
    await writeFile(knownHosts, `[127.0.0.1]:${link.port} ${sshd.hostKeyPub}\n`, { mode: 0o600 });

    const cli = await cliPath();
    const ssh = await startCli(
      t,
      [
        'ssh',
        ...ALLOW_BLIND_FLAG,
        '--reconnect',
        '--import-keys',
        '-p',
        String(link.port),
        '-i',
        sshd.clientKey,
        '-o',
        `UserKnownHostsFile=${knownHosts}`,
        '-o',
        'GlobalKnownHostsFile=/dev/null',
        `${sshd.user}@127.0.0.1`,
        '--remote-command',
        `${shellQuote(process.execPath)} ${shellQuote(cli)}`,
      ],
      { ...w.env, HOME: tmp, SSH_AUTH_SOCK: undefined },
    );
    const socketPath = ssh.ready[1]!;

    // stdout lines after `ready:`, with when they arrived.
    const lines: { text: string; at: number }[] = [];
    let partial = '';
    const waiters = new Set<() => void>();
    ssh.child.stdout!.on('data', (b: Buffer) => {
      const parts = (partial + b.toString()).split('\n');
      partial = parts.pop()!;
      // The ssh-agent line follows `ready:` (sometimes in its read); reconnects repeat neither.
      for (const text of parts)
        if (!text.startsWith('ssh-agent: ')) lines.push({ text, at: Date.now() });
      for (const f of [...waiters]) f();
    });
    const stdoutLine = (n: number) =>
      new Promise<{ text: string; at: number }>((resolve, reject) => {
        const timer = setTimeout(
          () => reject(new Error(`no stdout line ${n}: ${ssh.stderr()}`)),
          60_000,
        );
        const check = () => {
          if (lines.length > n) {
            clearTimeout(timer);
            waiters.delete(check);
            resolve(lines[n]!);
          }
        };
        waiters.add(check);
        check();
      });

    const data = path.join(tmp, 'data.txt');
    const sig = path.join(tmp, 'data.txt.sig');
    const signAndVerify = async (what: string) => {
      await writeFile(data, `${what}\n`);
      await rm(sig, { force: true });
      const signed = await server.gpg(
        ['--batch', '--no-tty', '-u', w.fingerprint, '--detach-sign', '-o', sig, data],
        {
          timeoutMs: 30_000,
        },
      );
      if (signed.code !== 0) return { ok: false, detail: signed.stderr };
      const v = await server.gpg(['--batch', '--verify', sig, data]);
      return { ok: v.code === 0 && /Good signature/.test(v.stderr), detail: v.stderr };
    };

    const first = await signAndVerify('before any cut');
    t.ok(first.ok, `a signature before any cut verifies: ${first.detail}`);

    const rule = [
      'INPUT',
      '-i',
      'lo',
      '-p',
      'tcp',
      '--dport',
      String(sshd.port),
      '-j',
      'REJECT',
      '--reject-with',
      'tcp-reset',
    ];
    let ruleIn = false;
    const removeRule = () => {
      if (!ruleIn) return;
      ruleIn = false;
      spawnSync('iptables', ['-D', ...rule]);
    };
    t.teardown(removeRule);

    const started = Date.now();
    const recoveries: number[] = [];
    for (let cut = 1; cut <= CUTS; cut++) {
      // The RSTs first: with the rule in, the one to sshd's port would be dropped by it.
      const attemptsBefore = link.accepted;
      link.reset();
      const add = spawnSync('iptables', ['-I', ...rule], { encoding: 'utf8' });
      t.equal(add.status, 0, `iptables -I: ${add.stderr}`);
      ruleIn = true;

      // The server's socket stays, answering at once: gpg fails quickly rather than hanging.
      const down = await timedSign(server, w.fingerprint, `during cut ${cut}\n`, 30_000);
      t.not(down.code, 0, `cut ${cut}: gpg fails while the link is down`);
      t.ok(down.ms < FAIL_MS, `cut ${cut}: gpg failed within ${down.ms} ms`);
      t.match(down.stderr, /No agent running/, `cut ${cut}: gpg says there is no agent`);

      // Down until the workstation has been refused twice (it is retrying, not given up).
      await new Promise<void>((resolve) => {
        const check = setInterval(() => {
          if (link.accepted >= attemptsBefore + 2) {
            clearInterval(check);
            resolve();
          }
        }, 20);
      });
      const back = stdoutLine(cut - 1);
      const opened = Date.now();
      removeRule();
      const line = await back;
      const reconnectedMs = line.at - opened;
      t.equal(
        line.text,
        `reconnected: ${socketPath}`,
        `cut ${cut}: reconnected on the same socket`,
      );
      let good: { ok: boolean; detail: string } = { ok: false, detail: '' };
      for (let i = 0; i < 20 && !good.ok; i++) good = await signAndVerify(`after cut ${cut}`);
      const signedMs = Date.now() - opened;
      t.ok(good.ok, `cut ${cut}: a signature after recovery verifies: ${good.detail}`);
      t.comment(
        `cut ${cut}: link back → reconnected: ${reconnectedMs} ms, → first good signature: ${signedMs} ms`,
      );
      t.ok(reconnectedMs <= RECOVERY_MS, `cut ${cut}: reconnected within ${reconnectedMs} ms`);
      t.ok(signedMs <= RECOVERY_MS, `cut ${cut}: signed within ${signedMs} ms`);
      recoveries.push(signedMs);
    }
    const total = Date.now() - started;
    t.ok(total < 60_000, `${CUTS} cuts within a minute (${total} ms)`);
    t.equal(lines.filter((l) => l.text.startsWith('ready:')).length, 0, 'no second ready: line');
    t.notMatch(ssh.stdout(), /^ready: .*\n[^]*^ready: /m, 'stdout has one ready: line');
    // The ssh-agent socket lingered with the gpg one: the path printed once still answers.
    const agentSock = `${socketPath}.kt-ssh`;
    t.equal(
      ssh
        .stdout()
        .match(/^ssh-agent: .*$/gm)
        ?.join('|'),
      `ssh-agent: ${agentSock}`,
    );
    const list = spawnSync('ssh-add', ['-l'], {
      env: { ...process.env, SSH_AUTH_SOCK: agentSock },
      encoding: 'utf8',
    });
    t.match(list.stdout + list.stderr, /no identities/, 'ssh-add -l is answered after the cuts');

    await ssh.stop('SIGINT');
  },
);
