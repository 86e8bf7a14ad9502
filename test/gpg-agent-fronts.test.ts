// The gpg-agent back end behind the remote fronts: keys generated in a workstation GNUPGHOME and
// held by its real gpg-agent (pinentry a scripted one), never imported into keytether. Through
// `keytether ssh` (a real sshd) and through `keytether relay` + `keytether connect`, stock gpg 2.2
// and 2.4 on the server side sign, clearsign, decrypt and list `sec`, and git signs a commit; a
// Cancel in gpg-agent's pinentry reaches the server's gpg as "Operation cancelled" and is audited.

import t, { type Test } from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { shellQuote } from '../workstation/ssh/connect.js';
import { cliPath, runCli, spawnCli, waitForLine } from './support/cli.js';
import { generateKey, makeGnupgHome, type GeneratedKey } from './support/gnupg.js';
import { gpgClients, type GpgClient } from './support/gpg-versions.js';
import { makePinentryScript, type PinentryScript } from './support/pinentry-script.js';
import { startSshd } from './support/sshd.js';
import { ALLOW_BLIND_FLAG } from './support/blind-signing.js';

const PASS = 'correct horse';

interface Run {
  code: number | null;
  stdout: Buffer;
  stderr: string;
}

/** Runs a server-side program (gpg, git) the way a shell on the server would. */
function run(
  bin: string,
  args: string[],
  opts: { env: NodeJS.ProcessEnv; input?: string | Buffer; cwd?: string },
): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(bin, args, { env: opts.env, cwd: opts.cwd, stdio: 'pipe' });
    const out: Buffer[] = [];
    let stderr = '';
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout: Buffer.concat(out), stderr });
    });
    child.stdin.on('error', () => {});
    child.stdin.end(opts.input ?? '');
  });
}

interface Proc {
  child: ChildProcess;
  stderr(): string;
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

function track(child: ChildProcess): Proc {
  let err = '';
  child.stderr!.on('data', (b: Buffer) => (err += b.toString()));
  const exited = new Promise<number | null>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve(child.exitCode);
    else child.once('exit', (c) => resolve(c));
  });
  return {
    child,
    stderr: () => err,
    async stop(signal = 'SIGTERM') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      return exited;
    },
  };
}

async function auditRecords(home: string): Promise<Record<string, unknown>[]> {
  const text = await readFile(path.join(home, 'audit.jsonl'), 'utf8');
  return text
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

/** GETPINs gpg-agent's pinentry received, in order. */
async function getpins(pin: PinentryScript): Promise<number> {
  return (await pin.calls()).flat().filter((c) => c.cmd === 'GETPIN').length;
}

/** One server-side command: what a user would type there. */
interface Step {
  argv: string[];
  input?: string | Buffer;
  cwd?: string;
}

/** Runs the steps in order on "the server" and returns their results, one per step. */
type Runner = (steps: Step[]) => Promise<Run[]>;

/**
 * What a user on the server checks, for one gpg version: a detached signature and a clearsigned
 * text verify Good, a message to the encryption subkey decrypts, `-K` lists `sec`, and a
 * `git commit -S` verifies. `server` runs the signing side; `verify` is a public-keys-only gpg.
 */
async function serverChecks(
  t: Test,
  o: {
    client: GpgClient;
    key: GeneratedKey;
    dir: string;
    server: Runner;
    verify: (args: string[], input?: string | Buffer) => Promise<Run>;
    git: (repo: string, args: string[]) => Promise<Run>;
  },
): Promise<void> {
  const { client, key, dir } = o;
  const gpg = [client.gpg, '--batch', '--no-tty'];
  const msg = path.join(dir, 'msg.txt');
  await writeFile(msg, `signed on the server with ${client.label}\n`);
  const sig = `${msg}.sig`;
  const plain = `for the cv25519 subkey via ${client.label}\n`;
  const enc = await o.verify(['-r', key.subkeys[0]!.fingerprint, '--encrypt'], plain);
  t.equal(enc.code, 0, enc.stderr);
  const encFile = path.join(dir, 'msg.gpg');
  await writeFile(encFile, enc.stdout);
  const repo = path.join(dir, 'repo');
  await mkdir(repo);
  t.equal((await o.git(repo, ['init', '-q'])).code, 0, 'git init');

  const [s, cs, dec, k, c] = (await o.server([
    { argv: [...gpg, '-u', key.fingerprint, '-o', sig, '--detach-sign', msg] },
    { argv: [...gpg, '-u', key.fingerprint, '--clearsign'], input: 'clear text\n' },
    { argv: [...gpg, '--decrypt', encFile] },
    { argv: [...gpg, '-K'] },
    {
      argv: ['git', ...gitConfig(client, key), 'commit', '-q', '-S', '--allow-empty', '-m', 'x'],
      cwd: repo,
    },
  ])) as [Run, Run, Run, Run, Run];

  t.equal(s.code, 0, `detach-sign: ${s.stderr}`);
  const v = await o.verify(['--verify', sig, msg]);
  t.equal(v.code, 0, v.stderr);
  t.match(v.stderr, /Good signature from "Gail Agent/, 'detached signature is Good');

  t.equal(cs.code, 0, `clearsign: ${cs.stderr}`);
  t.match(cs.stdout.toString(), /^-----BEGIN PGP SIGNED MESSAGE-----/);
  const v2 = await o.verify(['--verify'], cs.stdout);
  t.equal(v2.code, 0, v2.stderr);
  t.match(v2.stderr, /Good signature from "Gail Agent/, 'clearsigned text is Good');

  t.equal(dec.code, 0, `decrypt: ${dec.stderr}`);
  t.equal(dec.stdout.toString(), plain, 'decrypted to the plaintext');

  t.equal(k.code, 0, k.stderr);
  const listing = k.stdout.toString();
  t.match(listing, /^sec /m, '-K shows sec');
  t.match(listing, /^ssb /m, '-K shows ssb');
  t.notMatch(listing, /^(sec|ssb)#/m, 'no key shown as unavailable');

  t.equal(c.code, 0, `git commit -S: ${c.stderr}`);
  const vc = await o.git(repo, [...gitConfig(client, key), 'verify-commit', 'HEAD']);
  t.equal(vc.code, 0, vc.stderr);
  t.match(vc.stderr, /Good signature from "Gail Agent/, 'git verify-commit is Good');
}

/** Runs steps directly, as a shell on the ssh server would. */
function directRunner(env: NodeJS.ProcessEnv): Runner {
  return async (steps) => {
    const out: Run[] = [];
    for (const st of steps) {
      out.push(
        await run(st.argv[0]!, st.argv.slice(1), {
          env,
          ...(st.input !== undefined ? { input: st.input } : {}),
          ...(st.cwd !== undefined ? { cwd: st.cwd } : {}),
        }),
      );
    }
    return out;
  };
}

/**
 * Runs all steps under ONE `keytether connect … -- /bin/sh SCRIPT` (what a CI job does), each
 * step's output, errors and status captured in files: one relay session per gpg version keeps
 * the test fast.
 */
function connectRunner(dir: string, connect: (cmd: string[]) => Promise<Run>, t: Test): Runner {
  return async (steps) => {
    const lines = ['#!/bin/sh'];
    for (const [i, st] of steps.entries()) {
      const f = (ext: string) => shellQuote(path.join(dir, `step${i}.${ext}`));
      const input = path.join(dir, `step${i}.in`);
      await writeFile(input, st.input ?? '');
      lines.push(
        `(cd ${shellQuote(st.cwd ?? dir)} && exec ${st.argv.map(shellQuote).join(' ')}) ` +
          `<${shellQuote(input)} >${f('out')} 2>${f('err')}; echo $? >${f('code')}`,
      );
    }
    lines.push('exit 0');
    const script = path.join(dir, 'steps.sh');
    await writeFile(script, lines.join('\n') + '\n');
    const r = await connect(['/bin/sh', script]);
    t.equal(r.code, 0, `keytether connect -- sh: ${r.stderr}`);
    const read = (i: number, ext: string) =>
      readFile(path.join(dir, `step${i}.${ext}`)).catch(() => Buffer.alloc(0));
    return Promise.all(
      steps.map(async (_st, i) => {
        const code = (await read(i, 'code')).toString().trim();
        return {
          code: code === '' ? null : Number(code),
          stdout: await read(i, 'out'),
          stderr: (await read(i, 'err')).toString(),
        };
      }),
    );
  };
}

function gitConfig(client: GpgClient, key: GeneratedKey): string[] {
  return [
    '-c',
    `gpg.program=${client.gpg}`,
    '-c',
    `user.signingkey=${key.fingerprint}`,
    '-c',
    'user.name=Gail Agent',
    '-c',
    'user.email=gail@example.org',
  ];
}

t.test('gpg-agent back end through keytether ssh and the relay', async (t) => {
  const clients = gpgClients();
  // gpg-agent's pinentry: one Cancel per gpg version (the cancel case), then the passphrase.
  const pin = await makePinentryScript({
    answers: [...clients.map(() => ({ cancel: true as const })), ...Array(10).fill(PASS)],
  });
  t.teardown(() => pin.cleanup());
  // keytether's own pinentry must never be needed: gpg-agent asks for the passphrase.
  const ktPin = await makePinentryScript({});
  t.teardown(() => ktPin.cleanup());

  // gpg-agent starts its pinentry with its own environment, so a wrapper carries the script's.
  const wrapper = await pin.standaloneProgram();

  const ws = await makeGnupgHome({ agentConf: [`pinentry-program ${wrapper}`] });
  t.teardown(() => ws.cleanup());
  const key = await generateKey(ws, {
    uid: 'Gail Agent <gail@example.org>',
    algo: 'ed25519',
    usage: 'sign,cert',
    subkeys: [{ algo: 'cv25519', usage: 'encr' }],
    passphrase: PASS,
  });
  const pub = await ws.gpg(['--batch', '--export', key.fingerprint]);
  t.equal(pub.code, 0, pub.stderr);

  const tmp = await mkdtemp('/tmp/ktfronts-');
  t.teardown(() => rm(tmp, { recursive: true, force: true }));
  const userHome = path.join(tmp, 'user');
  await mkdir(userHome, { mode: 0o700 });

  // Where signatures are checked and messages encrypted: a home with the public key only.
  const verifier = await makeGnupgHome();
  t.teardown(() => verifier.cleanup());
  t.equal((await verifier.gpg(['--batch', '--import'], { input: pub.stdout })).code, 0);
  const verifyWith =
    (client: GpgClient) =>
    (args: string[], input?: string | Buffer): Promise<Run> =>
      run(client.gpg, ['--batch', '--no-tty', ...args], {
        env: verifier.env,
        ...(input !== undefined ? { input } : {}),
      });
  const gitEnv = (gnupgHome: string): NodeJS.ProcessEnv => ({
    ...verifier.env,
    GNUPGHOME: gnupgHome,
    HOME: userHome,
    GIT_CONFIG_NOSYSTEM: '1',
  });

  await t.test('through keytether ssh --backend gpg-agent', async (t) => {
    const ktHome = path.join(tmp, 'kt-ssh');
    const server = await makeGnupgHome();
    t.teardown(() => server.cleanup());
    const sshd = await startSshd({ env: { GNUPGHOME: server.home } });
    t.teardown(() => sshd.stop());
    const remoteSocket = (await server.run('gpgconf', ['--list-dirs', 'agent-socket'])).stdout
      .toString()
      .trim();

    const cli = await cliPath();
    const ssh = track(
      await spawnCli(
        [
          'ssh',
          ...ALLOW_BLIND_FLAG,
          '-p',
          String(sshd.port),
          '-i',
          sshd.clientKey,
          '-o',
          `UserKnownHostsFile=${sshd.knownHostsFile}`,
          '-o',
          'GlobalKnownHostsFile=/dev/null',
          `${sshd.user}@127.0.0.1`,
          '--remote-command',
          `${shellQuote(process.execPath)} ${shellQuote(cli)}`,
          '--remote-socket',
          remoteSocket,
          '--import-keys',
          '--backend',
          'gpg-agent',
          '--gnupg-home',
          ws.home,
          '--pinentry-program',
          ktPin.program,
          // Remote decryption asks for confirmation by default; this test has no one to ask.
          '--policy',
          'front=ssh,op=decrypt,action=allow',
        ],
        {
          env: {
            KEYTETHER_HOME: ktHome,
            HOME: userHome,
            SSH_AUTH_SOCK: undefined,
            GNUPGHOME: undefined,
            ...ktPin.env,
          },
        },
      ),
    );
    t.teardown(() => ssh.stop('SIGKILL'));
    await waitForLine(ssh.child.stdout!, /^ready: /, 60_000).catch((e: Error) => {
      throw new Error(`keytether ssh did not get ready: ${e.message}; stderr: ${ssh.stderr()}`);
    });

    const serverGpg =
      (client: GpgClient) =>
      (args: string[], input?: string | Buffer): Promise<Run> =>
        run(client.gpg, ['--batch', '--no-tty', ...args], {
          env: server.env,
          ...(input !== undefined ? { input } : {}),
        });

    // First, while gpg-agent has nothing cached: its pinentry answers Cancel, once per version.
    for (const client of clients) {
      await t.test(`${client.label}: Cancel in gpg-agent's pinentry`, async (t) => {
        const before = await getpins(pin);
        const r = await serverGpg(client)(['-u', key.fingerprint, '--detach-sign'], 'data\n');
        t.not(r.code, 0, 'gpg fails');
        t.match(r.stderr, /Operation cancelled/, "gpg's own words for a Cancel");
        t.equal(await getpins(pin), before + 1, "gpg-agent's pinentry was asked once");
        const rec = (await auditRecords(ktHome)).at(-1);
        t.match(rec, { front: 'ssh', op: 'sign', decision: 'canceled' }, 'audited as canceled');
        t.match(String(rec?.reason), /Operation cancelled/);
      });
    }

    for (const client of clients) {
      await t.test(`${client.label} on the server`, async (t) => {
        const dir = await mkdtemp(path.join(tmp, `ssh-${client.version}-`));
        await serverChecks(t, {
          client,
          key,
          dir,
          server: directRunner(gitEnv(server.home)),
          verify: verifyWith(client),
          git: (repo, args) => run('git', args, { env: gitEnv(server.home), cwd: repo }),
        });
      });
    }

    t.equal(await ssh.stop('SIGTERM'), 0, `keytether ssh exits cleanly: ${ssh.stderr()}`);
    const recs = await auditRecords(ktHome);
    const canceled = recs.filter((r) => r.decision === 'canceled');
    t.equal(canceled.length, clients.length, 'one canceled record per version');
    t.ok(
      recs.slice(canceled.length).every((r) => r.decision === 'allowed' && r.front === 'ssh'),
      'everything after the cancels was allowed',
    );
    t.ok(
      recs.some((r) => r.op === 'decrypt' && r.decision === 'allowed'),
      'decrypt audited',
    );
    const keysDir = path.join(ktHome, 'keys');
    t.same(existsSync(keysDir) ? await readdir(keysDir) : [], [], 'keytether stored no key');
    const ver = await runCli(['audit', 'verify'], { env: { KEYTETHER_HOME: ktHome } });
    t.equal(ver.code, 0, ver.stderr);
  });

  await t.test('through keytether relay, agent --relay and connect', async (t) => {
    const ktHome = path.join(tmp, 'kt-relay');
    const env = { KEYTETHER_HOME: ktHome, GNUPGHOME: undefined };
    const relay = track(await spawnCli(['relay', '--listen', '127.0.0.1:0']));
    t.teardown(() => relay.stop('SIGKILL'));
    const url = (await waitForLine(relay.child.stdout!, /^listening: (\S+)$/, 30_000))[1]!;

    const holder = track(
      await spawnCli(
        [
          'agent',
          ...ALLOW_BLIND_FLAG,
          '--socket',
          path.join(tmp, 'S.holder'),
          '--relay',
          url,
          '--backend',
          'gpg-agent',
          '--gnupg-home',
          ws.home,
          '--pinentry-program',
          ktPin.program,
          '--policy',
          'front=relay,op=decrypt,action=allow',
        ],
        { env: { ...env, ...ktPin.env } },
      ),
    );
    t.teardown(() => holder.stop('SIGKILL'));
    // Awaited from the start: the relay may connect before `ready:` is printed.
    const connected = waitForLine(holder.child.stderr!, /^relay connected: /, 30_000);
    connected.catch(() => {});
    await waitForLine(holder.child.stdout!, /^ready: /, 30_000).catch((e: Error) => {
      throw new Error(`agent did not get ready: ${e.message}; stderr: ${holder.stderr()}`);
    });
    await connected;

    // The key is named as the holder knows it: from gpg-agent, not keytether's keystore.
    const tok = await runCli(
      [
        'token',
        'create',
        '--key',
        key.fingerprint,
        '--ops',
        'sign,decrypt',
        '--relay',
        url,
        '--backend',
        'gpg-agent',
        '--gnupg-home',
        ws.home,
      ],
      { env },
    );
    t.equal(tok.code, 0, `token create: ${tok.stderr}`);
    const token = tok.stdout.trim();
    if (tok.code !== 0) return;

    // Every server-side command runs under its own `keytether connect … -- CMD`.
    const connect = (cmd: string[]): Promise<Run> =>
      runCli(['connect', '--relay', url, '--token', token, '--', ...cmd], {
        env: { HOME: userHome, GIT_CONFIG_NOSYSTEM: '1', GNUPGHOME: undefined, LC_ALL: 'C' },
      }).then((r) => ({ code: r.code, stdout: Buffer.from(r.stdout), stderr: r.stderr }));

    for (const client of clients) {
      await t.test(`${client.label} under keytether connect`, async (t) => {
        const dir = await mkdtemp(path.join(tmp, `relay-${client.version}-`));
        await serverChecks(t, {
          client,
          key,
          dir,
          server: connectRunner(dir, connect, t),
          verify: verifyWith(client),
          git: (repo, args) => run('git', args, { env: gitEnv(verifier.home), cwd: repo }),
        });
      });
    }

    t.equal(await holder.stop('SIGTERM'), 0, `agent exits cleanly: ${holder.stderr()}`);
    const recs = await auditRecords(ktHome);
    t.ok(recs.length > 0, 'operations were audited');
    t.ok(
      recs.every((r) => r.front === 'relay' && r.decision === 'allowed'),
      'every request came through the relay and was allowed',
    );
    t.ok(
      recs.some((r) => r.op === 'decrypt'),
      'decrypt audited',
    );
    const keysDir = path.join(ktHome, 'keys');
    t.same(existsSync(keysDir) ? await readdir(keysDir) : [], [], 'keytether stored no key');
  });

  await t.test("passphrases came from gpg-agent's pinentry, asked once per key", async (t) => {
    const invocations = await pin.invocations();
    const asked = invocations.filter((i) => i.calls.some((c) => c.cmd === 'GETPIN'));
    // The cancels, then at most one passphrase per keygrip (sign key, encryption subkey): gpg-agent
    // cached it for everything after, across both fronts.
    t.ok(
      asked.length <= clients.length + 2,
      `pinentry asked ${asked.length} times for ${clients.length} cancels`,
    );
    for (const inv of asked) {
      const desc = inv.calls.find((c) => c.cmd === 'SETDESC')?.text ?? '';
      t.match(desc, /keytether: request from /, 'names the requester');
    }
    t.same(await ktPin.invocations(), [], "keytether's own pinentry was never started");
  });
});
