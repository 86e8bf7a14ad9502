// deploy/relay-cluster/haproxy.cfg as shipped, run by Debian's real haproxy in front of two real
// `keytether relay --redis` instances (its addresses substituted for free ports on 127.0.0.1):
// holder and facades know only the balancer's URL, signatures verify, a stream crosses from one
// instance to the other, and killing the holder's instance moves the holder to the other one.

import t from 'tap';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import path from 'node:path';
import { exportSecretKey, generateKey, makeGnupgHome } from './support/gnupg.js';
import { importIntoKeytether, repoRoot, runCli, spawnCli, waitForLine } from './support/cli.js';
import { ALLOW_BLIND_FLAG } from './support/blind-signing.js';
import { track } from './support/fault-rig.js';
import { HAPROXY, freePort, redisMissing, startRedis } from '../bench/support/redis-server.js';

const missing = redisMissing() ?? (existsSync(HAPROXY) ? undefined : `${HAPROXY} is missing`);
const skip = missing !== undefined && !process.env.CI ? missing : false;

async function metric(url: string, line: RegExp): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const m = text.split('\n').find((l) => line.test(l));
  return m === undefined ? 0 : Number(m.split(' ').at(-1));
}

/** Resolves once PORT accepts a TCP connection (haproxy prints no "ready" line). */
async function listening(port: number, ms: number): Promise<void> {
  const until = Date.now() + ms;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = connect(port, '127.0.0.1');
      s.once('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > until) throw new Error(`nothing listens on ${port} after ${ms} ms`);
    await new Promise((r) => setImmediate(r));
  }
}

t.test('the shipped haproxy.cfg in front of two relays', { skip }, async (t) => {
  const ws = await makeGnupgHome();
  t.teardown(() => ws.cleanup());
  const key = await generateKey(ws, { uid: 'Bal Ancer <lb@example.org>', algo: 'ed25519' });
  const FPR = key.fingerprint;
  const tmp = await mkdtemp('/tmp/kthap-');
  t.teardown(() => rm(tmp, { recursive: true, force: true }));
  const env = { KEYTETHER_HOME: path.join(tmp, 'home') };
  await importIntoKeytether(await exportSecretKey(ws, FPR), env);
  const verifier = await makeGnupgHome();
  t.teardown(() => verifier.cleanup());
  const pub = await ws.gpg(['--batch', '--armor', '--export', FPR]);
  await verifier.gpg(['--batch', '--import'], { input: pub.stdout });

  const redis = await startRedis();
  t.teardown(() => redis.stop());
  const startRelay = async (port: number) => {
    const proc = track(
      await spawnCli(['relay', '--listen', `127.0.0.1:${port}`, '--redis', redis.url]),
    );
    t.teardown(() => proc.stop('SIGKILL'));
    const url = (await waitForLine(proc.child.stdout!, /^listening: (\S+)$/, 30_000))[1]!;
    return { proc, url };
  };
  const relays = [await startRelay(await freePort()), await startRelay(await freePort())];

  const front = await freePort();
  const shipped = await readFile(path.join(repoRoot, 'deploy/relay-cluster/haproxy.cfg'), 'utf8');
  const cfg = shipped
    .replace('bind 0.0.0.0:7878', `bind 127.0.0.1:${front}`)
    .replace('relay1:7878', new URL(relays[0]!.url).host)
    .replace('relay2:7878', new URL(relays[1]!.url).host);
  t.not(cfg, shipped, 'the addresses were substituted');
  const cfgFile = path.join(tmp, 'haproxy.cfg');
  await writeFile(cfgFile, cfg);
  const check = spawn(HAPROXY, ['-c', '-f', cfgFile], { stdio: 'ignore' });
  t.equal(await new Promise((r) => check.once('exit', r)), 0, 'haproxy -c accepts the file');
  const haproxy = track(
    spawn(HAPROXY, ['-db', '-f', cfgFile], { stdio: ['ignore', 'pipe', 'pipe'] }),
  );
  t.teardown(() => haproxy.stop('SIGKILL'));
  await listening(front, 10_000);
  const lb = `http://127.0.0.1:${front}`;

  const holder = track(
    await spawnCli(
      ['agent', ...ALLOW_BLIND_FLAG, '--socket', path.join(tmp, 'S.local'), '--relay', lb],
      { env },
    ),
  );
  t.teardown(() => holder.stop('SIGKILL'));
  await holder.anyStderr(/^relay connected: /);
  const tok = (
    await runCli(['token', 'create', '--key', FPR, '--relay', lb], { env })
  ).stdout.trim();
  const file = path.join(tmp, 'a.txt');
  await writeFile(file, 'through the balancer\n');
  let n = 0;
  const sign = async () => {
    const sig = path.join(tmp, `${++n}.sig`);
    const r = await runCli(
      ['connect', '--relay', lb, '--', 'gpg', '--batch', '--no-tty', '-u', FPR, '-o', sig].concat([
        '--detach-sign',
        file,
      ]),
      { env: { KEYTETHER_TOKEN: tok } },
    );
    t.equal(r.code, 0, r.stderr);
    t.match((await verifier.gpg(['--batch', '--verify', sig, file])).stderr, /Good signature/);
  };
  // Round robin: the two facades land on different instances, so one of them is not the holder's.
  await sign();
  await sign();
  const crossed =
    (await metric(relays[0]!.url, /^keytether_relay_cluster_streams_total\{side="origin"\}/)) +
    (await metric(relays[1]!.url, /^keytether_relay_cluster_streams_total\{side="origin"\}/));
  t.ok(crossed >= 1, `streams carried between instances: ${crossed}`);

  // Kill the instance the holder is on; it comes back through the balancer on the other one.
  const owners = await Promise.all(
    relays.map((r) => metric(r.url, /^keytether_relay_connections\{role="holder"\}/)),
  );
  const ownerIndex = owners.indexOf(1);
  t.ok(ownerIndex >= 0, 'one instance has the holder');
  const again = holder.nextStderr(/^relay connected: /);
  const killedAt = Date.now();
  await relays[ownerIndex]!.proc.stop('SIGKILL');
  const moved = (await again).at - killedAt;
  t.ok(moved < 5_000, `holder reconnected through haproxy ${moved} ms after its instance died`);
  await sign();
  t.comment(
    `failover through haproxy: holder back ${moved} ms, signed ${Date.now() - killedAt} ms after the kill`,
  );
});
