// The relay path end to end, every part a real process on 127.0.0.1: `keytether relay`, a holder
// (`keytether agent --relay`), tokens from `keytether token create`, and `keytether connect`
// feeding stock gpg (and git) on the "server" side. Token limits are enforced at the holder, with
// a one-line reason and an audit record for each refusal.

import t from 'tap';
import type { ChildProcess } from 'node:child_process';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import {
  exportSecretKey,
  generateKey,
  makeGnupgHome,
  type TempGnupg,
  clientHome,
} from './support/gnupg.js';
import { runCli, spawnCli, waitForLine } from './support/cli.js';
import { makePinentryScript } from './support/pinentry-script.js';
import { relayEndpoint } from '../protocol/relay/endpoint.js';
import { backoffDelay } from '../workstation/relay/client.js';
import { ALLOW_BLIND_FLAG } from './support/blind-signing.js';
import type { StatusDocument } from '../workstation/control/control.js';

const execFileP = promisify(execFile);

interface Proc {
  child: ChildProcess;
  stderr(): string;
  exited: Promise<number | null>;
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

function track(child: ChildProcess): Proc {
  let err = '';
  child.stderr!.on('data', (b: Buffer) => (err += b.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
  return {
    child,
    stderr: () => err,
    exited,
    async stop(signal = 'SIGTERM') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      return exited;
    },
  };
}

async function waitReady(p: Proc): Promise<void> {
  try {
    await waitForLine(p.child.stdout!, /^ready: /, 30_000);
  } catch (e) {
    await p.exited;
    throw new Error(`${(e as Error).message}; stderr: ${p.stderr()}`);
  }
}

function tokenClaims(token: string): { tid: string; exp: number } {
  const payload = token.split('.')[1] ?? '';
  return JSON.parse(Buffer.from(payload, 'base64url').toString('utf8')) as {
    tid: string;
    exp: number;
  };
}

async function auditRecords(home: string): Promise<Record<string, unknown>[]> {
  const text = await readFile(path.join(home, 'audit.jsonl'), 'utf8');
  return text
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

t.test('relay URLs as users write them', async (t) => {
  t.same(relayEndpoint('http://127.0.0.1:7878', 'holder'), {
    ok: true,
    url: 'ws://127.0.0.1:7878/v1/holder',
  });
  t.same(relayEndpoint('https://relay.example.org/base/', 'facade'), {
    ok: true,
    url: 'wss://relay.example.org/base/v1/facade',
  });
  t.same(relayEndpoint('wss://relay.example.org', 'facade'), {
    ok: true,
    url: 'wss://relay.example.org/v1/facade',
  });
  const plain = relayEndpoint('ws://relay.example.org', 'holder');
  t.match(plain, { ok: false, error: /unencrypted .* --insecure/ });
  t.match(relayEndpoint('ws://relay.example.org', 'holder', true), { ok: true });
  t.match(relayEndpoint('ftp://relay.example.org', 'holder'), { ok: false });
  t.match(relayEndpoint('not a url', 'holder'), { ok: false, error: /not a URL/ });
  t.match(relayEndpoint('https://u:p@relay.example.org', 'holder'), { ok: false });
  for (let i = 0; i < 40; i++) {
    const d = backoffDelay(i, 500, 30_000);
    t.ok(d >= 250 && d <= 30_000, `attempt ${i}: ${d} ms within bounds`);
  }
  t.ok(backoffDelay(30, 500, 30_000) >= 15_000, 'late attempts wait at least half the cap');
});

t.test('gpg on a server signs through keytether connect, a relay and a holder', async (t) => {
  const ws = await makeGnupgHome();
  t.teardown(() => ws.cleanup());
  const key = await generateKey(ws, {
    uid: 'Rhea Relay <rhea@example.org>',
    algo: 'ed25519',
    usage: 'sign,cert',
    subkeys: [{ algo: 'cv25519', usage: 'encr' }],
  });
  const FPR = key.fingerprint;

  const tmp = await mkdtemp('/tmp/ktrelay-');
  t.teardown(() => rm(tmp, { recursive: true, force: true }));
  const home = path.join(tmp, 'home');
  const env = { KEYTETHER_HOME: home };
  const secretFile = path.join(tmp, 'secret.gpg');
  await writeFile(secretFile, await exportSecretKey(ws, FPR), { mode: 0o600 });
  const imp = await runCli(['keys', 'import', secretFile], { env });
  t.equal(imp.code, 0, `keys import: ${imp.stderr}`);
  await rm(secretFile);

  // The verifier: a home with the public key only, where signatures are checked.
  const verifier = await makeGnupgHome();
  t.teardown(() => verifier.cleanup());
  const pub = await ws.gpg(['--batch', '--armor', '--export', FPR]);
  t.equal((await verifier.gpg(['--batch', '--import'], { input: pub.stdout })).code, 0);

  let relay = track(await spawnCli(['relay', '--listen', '127.0.0.1:0']));
  t.teardown(() => relay.stop('SIGKILL'));
  const url = (await waitForLine(relay.child.stdout!, /^listening: (\S+)$/, 30_000))[1]!;

  // Remote decryption asks the holder's user to confirm by default; this pinentry never answers,
  // which keeps a decryption waiting at the holder for the disconnect test.
  const pin = await makePinentryScript({ hang: true });
  t.teardown(() => pin.cleanup());
  const startHolder = async () => {
    const h = track(
      await spawnCli(
        [
          'agent',
          ...ALLOW_BLIND_FLAG,
          '--socket',
          path.join(tmp, 'S.local'),
          '--pinentry-program',
          pin.program,
          '--relay',
          url,
        ],
        { env: { ...env, ...pin.env } },
      ),
    );
    // Both lines are awaited from the start: the relay may connect before `ready:` is printed.
    const connected = waitForLine(h.child.stderr!, /^relay connected: /, 30_000);
    connected.catch(() => {});
    await waitForLine(h.child.stdout!, /^ready: /, 30_000).catch((e: Error) => {
      throw new Error(`${e.message}; stderr: ${h.stderr()}`);
    });
    await connected;
    return h;
  };
  let holder = await startHolder();
  t.teardown(() => holder.stop('SIGKILL'));

  const createToken = async (...extra: string[]) => {
    const r = await runCli(['token', 'create', '--key', FPR, '--relay', url, ...extra], { env });
    t.equal(r.code, 0, `token create: ${r.stderr}`);
    return r.stdout.trim();
  };
  const signToken = await createToken();

  // A session whose token runs out mid-way. It starts now so that the clock runs down while the
  // other cases run; the relay admits only unexpired tokens, so it must be up before then.
  const expToken = await createToken('--ttl', '15s');
  const expSocket = path.join(tmp, 'S.exp');
  const expFacade = track(
    await spawnCli(['connect', '--relay', url, '--token', expToken, '--socket', expSocket]),
  );
  t.teardown(() => expFacade.stop('SIGKILL'));
  const expReady = waitReady(expFacade);
  expReady.catch(() => {});

  const file = path.join(tmp, 'release.txt');
  await writeFile(file, 'release 1.0\n');

  await t.test('connect -- gpg --detach-sign makes a good signature', async (t) => {
    const sig = path.join(tmp, 'release.txt.sig');
    const r = await runCli(
      [
        'connect',
        '--relay',
        url,
        '--',
        'gpg',
        '--batch',
        '--no-tty',
        '-u',
        FPR,
        '-o',
        sig,
        '--detach-sign',
        file,
      ],
      { env: { KEYTETHER_TOKEN: signToken } },
    );
    t.equal(r.code, 0, r.stderr);
    const v = await verifier.gpg(['--batch', '--verify', sig, file]);
    t.equal(v.code, 0, v.stderr);
    t.match(v.stderr, /Good signature from "Rhea Relay/);
    const socket = /ready: (\S+)/.exec(r.stderr)?.[1];
    t.ok(socket, 'connect announced its socket');
    t.notOk(existsSync(path.dirname(socket!)), 'the private GNUPGHOME is gone afterwards');
    const rec = (await auditRecords(home)).at(-1)!;
    t.match(rec, {
      front: 'relay',
      tokenId: tokenClaims(signToken).tid,
      op: 'sign',
      fingerprint: FPR,
      decision: 'allowed',
    });
    t.notMatch(r.stderr + r.stdout, signToken.split('.')[3]!, 'the secret is never printed');
  });

  await t.test('status names the token of a relayed signature by id and label', async (t) => {
    const labelled = await createToken('--label', 'release pipeline');
    const r = await runCli(
      [
        'connect',
        '--relay',
        url,
        '--',
        'gpg',
        '--batch',
        '--no-tty',
        '-u',
        FPR,
        '-o',
        path.join(tmp, 'labelled.sig'),
        '--detach-sign',
        file,
      ],
      { env: { KEYTETHER_TOKEN: labelled } },
    );
    t.equal(r.code, 0, r.stderr);
    const tid = tokenClaims(labelled).tid;
    const json = await runCli(['status', '--json'], { env });
    t.equal(json.code, 0, json.stderr);
    const doc = JSON.parse(json.stdout) as StatusDocument;
    t.match(doc.recent.at(-1), {
      front: 'relay',
      tokenId: tid,
      tokenLabel: 'release pipeline',
      op: 'sign',
      decision: 'allowed',
    });
    const text = await runCli(['status'], { env });
    t.equal(text.code, 0, text.stderr);
    t.match(text.stdout, `for relay token ${tid} "release pipeline"`);
  });

  await t.test('SIGTERM during the command: it is passed on and the home removed', async (t) => {
    const c = track(
      await spawnCli(['connect', '--relay', url, '--token', signToken, '--', 'sleep', '60']),
    );
    t.teardown(() => c.stop('SIGKILL'));
    const socket = (await waitForLine(c.child.stderr!, /^ready: (\S+)$/, 30_000))[1]!;
    t.ok(existsSync(socket), 'the socket exists while the command runs');
    c.child.kill('SIGTERM');
    t.equal(await c.exited, 128 + 15, "exit status is the command's (killed by SIGTERM)");
    t.notOk(existsSync(path.dirname(socket)), 'the private GNUPGHOME is gone');
  });

  await t.test('connect -- git tag -s, then git verify-tag', async (t) => {
    const repo = path.join(tmp, 'repo');
    const git = (args: string[], extraEnv: Record<string, string> = {}) =>
      execFileP('git', args, { cwd: repo, env: { ...process.env, ...extraEnv } });
    await execFileP('git', ['init', '-q', repo]);
    await git([
      '-c',
      'user.name=CI',
      '-c',
      'user.email=ci@example.org',
      'commit',
      '-q',
      '--allow-empty',
      '-m',
      'one',
    ]);
    const r = await runCli(
      [
        'connect',
        '--relay',
        url,
        '--token',
        signToken,
        '--',
        'git',
        '-c',
        'user.name=CI',
        '-c',
        'user.email=ci@example.org',
        '-c',
        `user.signingkey=${FPR}`,
        'tag',
        '-s',
        'v1',
        '-m',
        'v1',
      ],
      { cwd: repo },
    );
    t.equal(r.code, 0, r.stderr);
    const v = await git(['verify-tag', 'v1'], { GNUPGHOME: verifier.home, LC_ALL: 'C' });
    t.match(v.stderr, /Good signature from "Rhea Relay/);
  });

  await t.test('a sign-only token cannot decrypt', async (t) => {
    const enc = await verifier.gpg(['--batch', '--armor', '-r', FPR, '--encrypt'], {
      input: 'for rhea\n',
    });
    t.equal(enc.code, 0, enc.stderr);
    const encFile = path.join(tmp, 'msg.asc');
    await writeFile(encFile, enc.stdout);
    const r = await runCli([
      'connect',
      '--relay',
      url,
      '--token',
      signToken,
      '--',
      'gpg',
      '--batch',
      '--no-tty',
      '--decrypt',
      encFile,
    ]);
    t.not(r.code, 0, 'gpg failed');
    t.notMatch(r.stdout, /for rhea/);
    t.match(
      r.stderr,
      /PKDECRYPT: Forbidden - token ktt_[0-9a-f]{16} does not allow decrypt operations/,
    );
    const rec = (await auditRecords(home)).at(-1)!;
    t.match(rec, {
      front: 'relay',
      op: 'decrypt',
      decision: 'denied',
      reason: /does not allow decrypt/,
    });
  });

  await t.test('a revoked token is refused at once', async (t) => {
    const tok = await createToken('--label', 'to revoke');
    const { tid } = tokenClaims(tok);
    const rv = await runCli(['token', 'revoke', tid], { env });
    t.equal(rv.code, 0, rv.stderr);
    const sig = path.join(tmp, 'revoked.sig');
    const r = await runCli([
      'connect',
      '--relay',
      url,
      '--token',
      tok,
      '--',
      'gpg',
      '--batch',
      '--no-tty',
      '-u',
      FPR,
      '-o',
      sig,
      '--detach-sign',
      file,
    ]);
    t.not(r.code, 0);
    // Refused before the tunnel starts: the facade never gets the token's key list.
    t.match(
      r.stderr,
      new RegExp(`the holder refused: sealed channel: token ${tid} has been revoked`),
    );
    t.notMatch(r.stderr, /PKSIGN/, 'gpg never got as far as asking for a signature');
    t.notOk(existsSync(sig), 'no signature was written');
    t.match((await auditRecords(home)).at(-1), {
      tokenId: tid,
      op: 'channel',
      decision: 'failed',
      reason: /revoked/,
    });
  });

  await t.test(
    'a token that expires during a session is refused, then not accepted again',
    async (t) => {
      const { tid, exp } = tokenClaims(expToken);
      const facade = expFacade;
      const tok = expToken;
      await expReady;
      const client = await clientHome(expSocket, pub.stdout);
      t.teardown(() => client.cleanup());
      // The registry compares against exp; wait on the clock for it, not a guess.
      await new Promise((r) => setTimeout(r, Math.max(0, exp * 1000 - Date.now() + 50)));
      const r = await client.gpg(['--batch', '--no-tty', '-u', FPR, '--detach-sign'], {
        input: 'x',
      });
      t.not(r.code, 0);
      t.match(r.stderr, /Forbidden/);
      t.match((await auditRecords(home)).at(-1), {
        tokenId: tid,
        decision: 'denied',
        reason: /expired/,
      });
      await facade.stop();
      t.match(facade.stderr(), new RegExp(`PKSIGN: Forbidden - token ${tid} expired at`));

      const again = await runCli(['connect', '--relay', url, '--token', tok, '--', 'true']);
      t.equal(again.code, 1);
      t.match(again.stderr, /^keytether connect: the token has expired; create a new one/m);
    },
  );

  await t.test('holder goes away: waiting gpg fails within 2 s, then it comes back', async (t) => {
    const tok = await createToken('--ops', 'sign,decrypt');
    const sock = path.join(tmp, 'S.dc');
    const facade = track(
      await spawnCli(['connect', '--relay', url, '--token', tok, '--socket', sock]),
    );
    t.teardown(() => facade.stop('SIGKILL'));
    await waitReady(facade);
    const client = await clientHome(sock, pub.stdout);
    t.teardown(() => client.cleanup());
    const enc = await verifier.gpg(['--batch', '-r', FPR, '--encrypt'], { input: 'wait for me\n' });

    // The decryption waits at the holder for a confirmation that never comes.
    const confirmsBefore = (await pin.invocations()).length;
    const pending = client.gpg(['--batch', '--no-tty', '--decrypt'], { input: enc.stdout });
    await pin.waitFor(
      (inv) => inv.length > confirmsBefore && inv.at(-1)!.calls.some((c) => c.cmd === 'CONFIRM'),
    );
    const killedAt = Date.now();
    await holder.stop('SIGKILL');
    const r = await pending;
    const took = Date.now() - killedAt;
    t.not(r.code, 0, 'gpg failed');
    t.ok(took < 2000, `gpg got its error ${took} ms after the holder went away`);
    t.match(r.stderr, /agent|decryption failed/i);

    // Without a holder, a new request fails fast as well.
    const lost = waitForLine(facade.child.stderr!, /reconnected to the holder/, 60_000);
    const s0 = Date.now();
    const r2 = await client.gpg(['--batch', '--no-tty', '-u', FPR, '--detach-sign'], {
      input: 'x',
    });
    t.not(r2.code, 0);
    t.ok(Date.now() - s0 < 2000, 'no hang without a holder');

    holder = await startHolder();
    await lost;
    const r3 = await client.gpg(['--batch', '--no-tty', '-u', FPR, '--detach-sign'], {
      input: 'x',
    });
    t.equal(r3.code, 0, `signing works again: ${r3.stderr}`);
  });

  await t.test(
    'the relay crashes and restarts: holder and facade reconnect by themselves',
    async (t) => {
      const sock = path.join(tmp, 'S.rr');
      const facade = track(
        await spawnCli(['connect', '--relay', url, '--token', signToken, '--socket', sock]),
      );
      t.teardown(() => facade.stop('SIGKILL'));
      await waitReady(facade);
      const client = await clientHome(sock, pub.stdout);
      t.teardown(() => client.cleanup());
      const sign = () =>
        client.gpg(['--batch', '--no-tty', '-u', FPR, '--detach-sign'], { input: 'x' });
      t.equal((await sign()).code, 0, 'signing works before the restart');

      const holderBack = waitForLine(holder.child.stderr!, /^relay connected: /, 60_000);
      const facadeBack = waitForLine(facade.child.stderr!, /reconnected to the holder/, 60_000);
      // A crash rather than a graceful stop, which would wait for open streams to drain first.
      await relay.stop('SIGKILL');
      relay = track(await spawnCli(['relay', '--listen', `127.0.0.1:${new URL(url).port}`]));
      await waitForLine(relay.child.stdout!, /^listening: /, 30_000);
      await holderBack;
      await facadeBack;
      const r = await sign();
      t.equal(r.code, 0, `signing works after the restart: ${r.stderr}`);
    },
  );
});
