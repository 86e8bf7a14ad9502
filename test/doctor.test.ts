// keytether doctor: on a broken set-up each problem is one line saying what to do, and the exit
// status is 1; on a working one (a real agent, a real relay, a real gpg-agent or facade on the
// server's socket) it says so and exits 0. It changes nothing it looks at.

import t from 'tap';
import type { ChildProcess } from 'node:child_process';
import {
  appendFile,
  chmod,
  mkdir,
  mkdtemp,
  readFile,
  rm,
  stat,
  symlink,
  writeFile,
} from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { importIntoKeytether, runCli, spawnCli, waitForLine } from './support/cli.js';
import { exportSecretKey, generateKey, makeGnupgHome } from './support/gnupg.js';
import { SCRIPTED_PINENTRY } from './support/pinentry-script.js';

/** The doctor's lines, without the padding of the severity column. */
const lines = (out: string) => out.split('\n').map((l) => l.trim().replace(/\s+/, ' '));

t.test(
  'a home with loose permissions and a broken config.toml: each problem, and how to fix it',
  async (t) => {
    const home = await mkdtemp('/tmp/ktdoc-');
    t.teardown(() => rm(home, { recursive: true, force: true }));
    await chmod(home, 0o755);
    await writeFile(path.join(home, 'config.toml'), 'pinentry-timeout = "soon"\nbogus = 1\n');
    await chmod(path.join(home, 'config.toml'), 0o644);
    const r = await runCli(['doctor'], { env: { KEYTETHER_HOME: home } });
    t.equal(r.code, 1, 'problems: exit 1');
    const out = lines(r.stdout);
    t.ok(
      out.includes(`fail ${home} is open to other users (mode 755); chmod 700 ${home}`),
      r.stdout,
    );
    t.ok(
      out.includes(
        `fail ${home}/config.toml is readable or writable by other users; chmod go= ${home}/config.toml`,
      ),
    );
    t.ok(
      out.some((l) => l.startsWith('fail') && l.includes('pinentry-timeout')),
      'names the bad value',
    );
    t.ok(
      out.some((l) => l.startsWith('fail') && l.includes('bogus')),
      'and the unknown key',
    );
    t.match(r.stdout, /\n\d+ problems, \d+ warnings?\n$/);
    t.equal(((await stat(home)).mode & 0o777).toString(8), '755', 'the doctor changed nothing');
  },
);

t.test(
  'a working holder: keys, pinentry, agent, audit chain and a relay that answers',
  async (t) => {
    const ws = await makeGnupgHome();
    t.teardown(() => ws.cleanup());
    const key = await generateKey(ws, {
      uid: 'Doc <doc@example.org>',
      algo: 'ed25519',
      usage: 'sign',
    });
    const home = await mkdtemp('/tmp/ktdoc-');
    t.teardown(() => rm(home, { recursive: true, force: true }));
    const env = { KEYTETHER_HOME: home };
    await importIntoKeytether(await exportSecretKey(ws, key.fingerprint), env);
    await writeFile(
      path.join(home, 'config.toml'),
      `pinentry-program = "${SCRIPTED_PINENTRY}"\nbackend = "builtin"\n`,
      { mode: 0o600 },
    );

    const relay: ChildProcess = await spawnCli(['relay', '--listen', '127.0.0.1:0']);
    t.teardown(() => relay.kill('SIGKILL'));
    const url = (await waitForLine(relay.stdout!, /^listening: (\S+)/))[1]!;
    const agent: ChildProcess = await spawnCli(['agent', '--socket', path.join(home, 'S.a')], {
      env,
    });
    t.teardown(() => agent.kill('SIGKILL'));
    await waitForLine(agent.stdout!, /^ready: /);

    // A port nothing listens on: bound, then let go.
    const closed = await new Promise<number>((resolve) => {
      const s = net.createServer().listen(0, '127.0.0.1', () => {
        const port = (s.address() as net.AddressInfo).port;
        s.close(() => resolve(port));
      });
    });
    // The relays to check come from a second file, so the agent itself stays off the network.
    const relays = path.join(home, 'relays.toml');
    await writeFile(
      relays,
      `pinentry-program = "${SCRIPTED_PINENTRY}"\nbackend = "builtin"\nrelay = ["${url}", "http://127.0.0.1:${closed}"]\n`,
      { mode: 0o600 },
    );
    const r = await runCli(['--config', relays, 'doctor'], { env });
    const out = lines(r.stdout);
    t.ok(out.includes(`ok home ${home} is private to you`), r.stdout);
    t.ok(out.includes("ok 1 key(s) in keytether's keystore"));
    t.ok(out.includes(`ok pinentry: ${SCRIPTED_PINENTRY}`));
    t.ok(out.some((l) => new RegExp(`^ok keytether agent pid ${agent.pid} runs`).test(l)));
    t.ok(out.some((l) => /^ok audit log: \d+ record\(s\), the chain verifies$/.test(l)));
    t.ok(out.includes(`ok relay ${url} answers`));
    t.ok(
      out.some((l) =>
        l.startsWith(`fail relay http://127.0.0.1:${closed} does not answer (ECONNREFUSED)`),
      ),
      'a relay that is not there is one line',
    );
    t.equal(r.code, 1);

    // A damaged audit chain is a problem too.
    const audit = path.join(home, 'audit.jsonl');
    await appendFile(audit, '{"not":"a record"}\n');
    const r2 = await runCli(['doctor'], { env });
    t.equal(r2.code, 1);
    t.ok(
      lines(r2.stdout).some((l) => /^fail audit log fails verification at record \d+/.test(l)),
      r2.stdout,
    );
    const healthy = (await readFile(audit, 'utf8')).split('\n').slice(0, -2).join('\n');
    await writeFile(audit, healthy ? `${healthy}\n` : '');
    const r3 = await runCli(['doctor'], { env });
    t.equal(r3.code, 0, r3.stdout);
    t.match(r3.stdout, /\nno problems found\n$/);
  },
);

t.test(
  '--server: who answers on the agent socket, no-autostart, systemd gpg-agent sockets',
  async (t) => {
    const g = await makeGnupgHome();
    t.teardown(() => g.cleanup());
    const xdg = await mkdtemp('/tmp/ktdoc-xdg-');
    t.teardown(() => rm(xdg, { recursive: true, force: true }));
    const wants = path.join(xdg, 'systemd/user/sockets.target.wants');
    await mkdir(wants, { recursive: true });
    await symlink('/usr/lib/systemd/user/gpg-agent.socket', path.join(wants, 'gpg-agent.socket'));
    const env = { GNUPGHOME: g.home, XDG_CONFIG_HOME: xdg };
    const socket = (await g.run('gpgconf', ['--list-dirs', 'agent-socket'])).stdout
      .toString()
      .trim();

    // Nothing listens yet; gpg.conf (as made for tests) lacks no-autostart; gpg-agent.socket is on.
    const conf = path.join(g.home, 'gpg.conf');
    await writeFile(conf, '');
    let r = await runCli(['doctor', '--server'], { env });
    let out = lines(r.stdout);
    t.ok(
      out.some((l) => /^ok gpg 2\.\d+/.test(l)),
      r.stdout,
    );
    t.ok(
      out.includes(
        `info no agent listens on ${socket} now; keytether ssh or keytether connect starts a facade there`,
      ),
    );
    t.ok(out.some((l) => l.startsWith(`warn ${conf} lacks no-autostart`)));
    t.ok(
      out.some((l) =>
        l.startsWith('warn systemd starts gpg-agent on connection (gpg-agent.socket'),
      ),
    );

    // A gpg-agent of the server's own on the socket.
    await g.run('gpgconf', ['--launch', 'gpg-agent']);
    t.teardown(() => g.run('gpgconf', ['--kill', 'gpg-agent']));
    r = await runCli(['doctor', '--server'], { env });
    t.ok(
      lines(r.stdout).some((l) =>
        l.startsWith(`warn a gpg-agent of this machine is listening on ${socket}`),
      ),
      r.stdout,
    );
    await g.run('gpgconf', ['--kill', 'gpg-agent']);

    // keytether on the socket, no-autostart set, the gpg-agent sockets masked: all well.
    await writeFile(conf, 'no-autostart\n');
    const unitDir = path.join(xdg, 'systemd/user');
    await symlink('/dev/null', path.join(unitDir, 'gpg-agent.socket'));
    await symlink('/dev/null', path.join(unitDir, 'gpg-agent-extra.socket'));
    const ktHome = await mkdtemp('/tmp/ktdoc-h-');
    t.teardown(() => rm(ktHome, { recursive: true, force: true }));
    await rm(socket, { force: true });
    const agent: ChildProcess = await spawnCli(
      ['agent', '--backend', 'builtin', '--socket', socket],
      {
        env: { KEYTETHER_HOME: ktHome },
      },
    );
    t.teardown(() => agent.kill('SIGKILL'));
    await waitForLine(agent.stdout!, /^ready: /);
    r = await runCli(['doctor', '--server'], { env });
    out = lines(r.stdout);
    t.ok(out.includes(`ok a keytether facade answers on ${socket}`), r.stdout);
    t.ok(out.includes(`ok ${conf} has no-autostart`));
    t.notOk(
      out.some((l) => l.includes('systemd starts gpg-agent')),
      'masked units are not on',
    );
    t.equal(r.code, 0);
    t.match(r.stdout, /\nno problems found\n$/);
  },
);
