// Several relay instances sharing holders through a real redis-server (`keytether relay --redis`),
// every part a real process on 127.0.0.1: relays, a holder (`keytether agent --relay`) connected
// to one instance, and `keytether connect` feeding stock gpg through another. Covers: a signature
// carried across instances, failover when the holder's instance is killed (the holder moves to the
// next instance it knows), a Redis restart, and a revoked token refused whichever instance the
// facade lands on.

import t from 'tap';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { clientHome, exportSecretKey, generateKey, makeGnupgHome } from './support/gnupg.js';
import { importIntoKeytether, runCli, spawnCli, waitForLine } from './support/cli.js';
import { makePinentryScript } from './support/pinentry-script.js';
import { ALLOW_BLIND_FLAG } from './support/blind-signing.js';
import { redisMissing, startRedis } from '../bench/support/redis-server.js';
import { track, type Proc } from './support/fault-rig.js';

const missing = redisMissing();
// On CI the prerequisites script installs redis-server; there its absence is a failure.
const skip = missing !== undefined && !process.env.CI ? missing : false;

async function metric(url: string, line: RegExp): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const m = text.split('\n').find((l) => line.test(l));
  return m === undefined ? NaN : Number(m.split(' ').at(-1));
}

t.test('relay instances sharing holders through Redis', { skip }, async (t) => {
  const ws = await makeGnupgHome();
  t.teardown(() => ws.cleanup());
  const key = await generateKey(ws, {
    uid: 'Clu Ster <cluster@example.org>',
    algo: 'ed25519',
    usage: 'sign,cert',
    subkeys: [{ algo: 'cv25519', usage: 'encr' }],
  });
  const FPR = key.fingerprint;
  const tmp = await mkdtemp('/tmp/ktredis-');
  t.teardown(() => rm(tmp, { recursive: true, force: true }));
  const home = path.join(tmp, 'home');
  const env = { KEYTETHER_HOME: home };
  await importIntoKeytether(await exportSecretKey(ws, FPR), env);
  const verifier = await makeGnupgHome();
  t.teardown(() => verifier.cleanup());
  const pub = await ws.gpg(['--batch', '--armor', '--export', FPR]);
  t.equal((await verifier.gpg(['--batch', '--import'], { input: pub.stdout })).code, 0);

  const redis = await startRedis();
  t.teardown(() => redis.stop());

  const startRelay = async (): Promise<{ proc: Proc; url: string }> => {
    const proc = track(await spawnCli(['relay', '--listen', '127.0.0.1:0', '--redis', redis.url]));
    t.teardown(() => proc.stop('SIGKILL'));
    const url = (await waitForLine(proc.child.stdout!, /^listening: (\S+)$/, 30_000))[1]!;
    return { proc, url };
  };
  const relays = [await startRelay(), await startRelay(), await startRelay()];
  const [A, B, C] = relays as [(typeof relays)[0], (typeof relays)[0], (typeof relays)[0]];

  const pin = await makePinentryScript({ hang: true });
  t.teardown(() => pin.cleanup());
  // The holder knows all three instances and is connected to one at a time, A first.
  const holder = track(
    await spawnCli(
      [
        'agent',
        ...ALLOW_BLIND_FLAG,
        '--socket',
        path.join(tmp, 'S.local'),
        '--pinentry-program',
        pin.program,
        '--relay',
        `${A.url},${B.url},${C.url}`,
      ],
      { env: { ...env, ...pin.env } },
    ),
  );
  t.teardown(() => holder.stop('SIGKILL'));
  const connectedTo = (url: string) => holder.nextStderr(new RegExp(`^relay connected: ${url} `));
  await waitForLine(holder.child.stdout!, /^ready: /, 30_000);
  await holder.anyStderr(new RegExp(`^relay connected: ${A.url} `));

  const createToken = async (...extra: string[]) => {
    const r = await runCli(['token', 'create', '--key', FPR, '--relay', B.url, ...extra], {
      env,
    });
    t.equal(r.code, 0, `token create: ${r.stderr}`);
    return r.stdout.trim();
  };
  const token = await createToken();
  const file = path.join(tmp, 'build.txt');
  await writeFile(file, 'artifact 7\n');
  let n = 0;
  const signVia = async (url: string, tok = token) => {
    const sig = path.join(tmp, `s${++n}.sig`);
    const r = await runCli(
      ['connect', '--relay', url, '--', 'gpg', '--batch', '--no-tty', '-u', FPR, '-o', sig].concat([
        '--detach-sign',
        file,
      ]),
      { env: { KEYTETHER_TOKEN: tok } },
    );
    return { ...r, sig };
  };
  const verify = async (sig: string) => verifier.gpg(['--batch', '--verify', sig, file]);

  await t.test('holder on A, gpg --detach-sign through B: signed and verified', async (t) => {
    const r = await signVia(B.url);
    t.equal(r.code, 0, r.stderr);
    const v = await verify(r.sig);
    t.match(v.stderr, /Good signature from "Clu Ster/);
    t.equal(await metric(B.url, /^keytether_relay_cluster_streams_total\{side="origin"\}/), 1);
    t.equal(await metric(A.url, /^keytether_relay_cluster_streams_total\{side="owner"\}/), 1);
    t.equal(await metric(A.url, /^keytether_relay_redis_up /), 1);
    const h = await fetch(`${B.url}/healthz`);
    t.equal(h.status, 200);
    t.same(await h.json(), { ok: true, redis: 'up' });
  });

  await t.test('a revoked token is refused on every instance', async (t) => {
    const tok = await createToken('--label', 'revoke me');
    const tid = JSON.parse(Buffer.from(tok.split('.')[1]!, 'base64url').toString()) as {
      tid: string;
    };
    t.equal((await signVia(C.url, tok)).code, 0, 'works before');
    const rv = await runCli(['token', 'revoke', tid.tid], { env });
    t.equal(rv.code, 0, rv.stderr);
    // The holder decides on revocation, so every instance's facades hear the same refusal.
    for (const r of relays) {
      const s = await runCli(['connect', '--relay', r.url, '--token', tok, '--', 'true']);
      t.not(s.code, 0, `refused through ${r.url}`);
      t.match(s.stderr, `the holder refused: sealed channel: token ${tid.tid} has been revoked`);
    }
  });

  await t.test('kill A: the request in flight fails fast, the holder moves on', async (t) => {
    // A facade on C, its holder on A; a decryption waits at the holder for a confirmation.
    const tok = await createToken('--ops', 'sign,decrypt');
    const sock = path.join(tmp, 'S.c');
    const facade = track(
      await spawnCli(['connect', '--relay', C.url, '--token', tok, '--socket', sock]),
    );
    t.teardown(() => facade.stop('SIGKILL'));
    await waitForLine(facade.child.stdout!, /^ready: /, 30_000);
    const client = await clientHome(sock, pub.stdout);
    t.teardown(() => client.cleanup());
    const enc = await verifier.gpg(['--batch', '-r', FPR, '--encrypt'], { input: 'once\n' });
    const confirmsBefore = (await pin.invocations()).length;
    const pending = client.gpg(['--batch', '--no-tty', '--decrypt'], { input: enc.stdout });
    await pin.waitFor(
      (inv) => inv.length > confirmsBefore && inv.at(-1)!.calls.some((c) => c.cmd === 'CONFIRM'),
    );
    const confirms = (await pin.invocations()).length;

    const onB = connectedTo(B.url);
    const back = facade.nextStderr(/reconnected to the holder/, 30_000);
    const killedAt = Date.now();
    await A.proc.stop('SIGKILL');
    const r = await pending;
    const failed = Date.now() - killedAt;
    t.not(r.code, 0, 'the decryption in flight failed');
    t.match(r.stderr, /agent|decryption failed/i);
    t.ok(failed < 3_000, `gpg got its agent error ${failed} ms after A died`);

    const moved = (await onB).at - killedAt;
    t.ok(moved < 5_000, `the holder is connected to B ${moved} ms after A died`);
    await back;
    const s = await client.gpg(['--batch', '--no-tty', '-u', FPR, '--detach-sign'], {
      input: 'after failover\n',
    });
    t.equal(s.code, 0, `signing through C again: ${s.stderr}`);
    const recovered = Date.now() - killedAt;
    t.comment(
      `failover: in-flight request failed after ${failed} ms, holder on B after ${moved} ms, ` +
        `next signature done ${recovered} ms after A was killed`,
    );
    t.equal((await pin.invocations()).length, confirms, 'the decryption was not asked again');
    const r2 = await signVia(B.url);
    t.equal(r2.code, 0, r2.stderr);
    t.match((await verify(r2.sig)).stderr, /Good signature/);
  });

  await t.test('Redis restarted: service resumes', async (t) => {
    const ready = [B, C].map((r) => r.proc.nextStderr(/"msg":"redis ready"/, 15_000));
    const restartedAt = performance.now();
    await redis.restart();
    // Presence is gone with the old Redis; the holder's instance (B) says it again on reconnect.
    await Promise.all(ready);
    const h = await fetch(`${C.url}/healthz`);
    t.equal(h.status, 200, 'C is healthy again');
    const r = await signVia(C.url);
    t.equal(r.code, 0, r.stderr);
    t.match((await verify(r.sig)).stderr, /Good signature/);
    t.comment(
      `signing through C again ${Math.round(performance.now() - restartedAt)} ms after the restart`,
    );
  });
});
