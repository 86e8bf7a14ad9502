// What the relay and the job's command are told, and what they are not trusted with. The relay is
// untrusted by design (SECURITY.md): the `peer` it reports for a facade is its claim, shown and
// audited as such, never a policy `host`; and `keytether connect -- CMD` never hands CMD the
// token's secret. A lying relay here is a real WebSocket proxy in front of the real relay that
// rewrites the open frames it forwards to the holder.

import t from 'tap';
import type { ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import WebSocket, { WebSocketServer } from 'ws';
import { exportSecretKey, generateKey, makeGnupgHome } from './support/gnupg.js';
import { runCli, spawnCli, waitForLine } from './support/cli.js';
import { decodeMux, encodeMux, MuxKind } from '../protocol/relay/mux.js';

const FORGED_PEER = 'build1.trusted.example\u001b[2J\u202eexe.gpg';

/** Forwards everything to RELAY, but tells the holder every facade comes from FORGED_PEER. */
async function lyingRelay(relay: string): Promise<{ url: string; close(): Promise<void> }> {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  wss.on('connection', (client, req) => {
    const url = req.url ?? '/';
    const up = new WebSocket(relay.replace(/^http/, 'ws') + url, { perMessageDeflate: false });
    const queued: [Buffer, boolean][] = [];
    up.on('open', () => queued.splice(0).forEach(([b, bin]) => up.send(b, { binary: bin })));
    client.on('message', (b: Buffer, bin: boolean) =>
      up.readyState === WebSocket.OPEN ? up.send(b, { binary: bin }) : queued.push([b, bin]),
    );
    up.on('message', (b: Buffer, bin: boolean) => {
      let out = b;
      const f = bin && url.endsWith('/v1/holder') ? decodeMux(b) : undefined;
      if (f && !('error' in f) && f.kind === MuxKind.Open) {
        const open = JSON.parse(f.payload.toString('utf8')) as { token: string; peer: string };
        const forged = JSON.stringify({ ...open, peer: FORGED_PEER });
        out = encodeMux(MuxKind.Open, f.streamId, Buffer.from(forged));
      }
      if (client.readyState === WebSocket.OPEN) client.send(out, { binary: bin });
    });
    const code = (c: number) => (c === 1000 || (c >= 3000 && c < 5000) ? c : 1000);
    client.on('close', (c, r) => (up.readyState === WebSocket.OPEN ? up.close(code(c), r) : 0));
    up.on('close', (c, r) => (client.readyState === WebSocket.OPEN ? client.close(code(c), r) : 0));
    client.on('error', () => up.terminate());
    up.on('error', () => client.terminate());
  });
  if (wss.address() === null) await new Promise((r) => wss.once('listening', r));
  return {
    url: `http://127.0.0.1:${(wss.address() as AddressInfo).port}`,
    close: () => {
      for (const c of wss.clients) c.terminate();
      return new Promise((r) => wss.close(() => r()));
    },
  };
}

function track(child: ChildProcess) {
  let err = '';
  child.stderr!.on('data', (b: Buffer) => (err += b.toString()));
  const exited = new Promise<void>((r) => child.on('exit', () => r()));
  return {
    child,
    stderr: () => err,
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
    },
  };
}

t.test('relay claims and the command environment', async (t) => {
  const ws = await makeGnupgHome();
  t.teardown(() => ws.cleanup());
  const key = await generateKey(ws, {
    uid: 'Cleo Claims <cleo@example.org>',
    algo: 'ed25519',
    usage: 'sign',
  });
  const tmp = await mkdtemp('/tmp/ktclaims-');
  t.teardown(() => rm(tmp, { recursive: true, force: true }));
  const home = path.join(tmp, 'home');
  const env = { KEYTETHER_HOME: home };
  const secretFile = path.join(tmp, 'secret.gpg');
  await writeFile(secretFile, await exportSecretKey(ws, key.fingerprint), { mode: 0o600 });
  t.equal((await runCli(['keys', 'import', secretFile], { env })).code, 0);
  await rm(secretFile);
  // A host rule that a relay could satisfy by naming the host, in front of a relay-wide deny.
  const config = path.join(tmp, 'config.toml');
  await writeFile(
    config,
    '[[policy]]\nhost = "build1.trusted.example*"\naction = "allow"\n\n' +
      '[[policy]]\nfront = "relay"\nop = "decrypt"\naction = "deny"\n\n' +
      '[[policy]]\nfront = "relay"\nhost = "*"\ntoken = "nomatch"\naction = "allow"\n\n' +
      '[[policy]]\nfront = "relay"\naction = "deny"\n',
  );

  const relay = track(await spawnCli(['relay', '--listen', '127.0.0.1:0']));
  t.teardown(() => relay.stop());
  const realUrl = (await waitForLine(relay.child.stdout!, /^listening: (\S+)$/, 30_000))[1]!;
  const liar = await lyingRelay(realUrl);
  t.teardown(() => liar.close());

  const holder = track(
    await spawnCli(
      ['--config', config, 'agent', '--socket', path.join(tmp, 'S.local'), '--relay', liar.url],
      { env },
    ),
  );
  t.teardown(() => holder.stop());
  const connected = waitForLine(holder.child.stderr!, /^relay connected: /, 30_000);
  connected.catch(() => {});
  await waitForLine(holder.child.stdout!, /^ready: /, 30_000);
  await connected;

  const made = await runCli(['token', 'create', '--key', key.fingerprint, '--relay', liar.url], {
    env,
  });
  t.equal(made.code, 0, made.stderr);
  const token = made.stdout.trim();
  const secretPart = token.split('.')[3]!;
  const tid = (
    JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString('utf8')) as { tid: string }
  ).tid;

  await t.test('a host the relay names never matches a host rule', async (t) => {
    const file = path.join(tmp, 'data.txt');
    await writeFile(file, 'data\n');
    const r = await runCli(
      ['connect', '--relay', liar.url, '--', 'gpg', '--batch', '-u', key.fingerprint, '-b', file],
      { env: { KEYTETHER_TOKEN: token } },
    );
    t.not(r.code, 0, 'the relay-wide deny decided, not the host rule');
    const records = (await readFile(path.join(home, 'audit.jsonl'), 'utf8'))
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    const rec = records.filter((x) => x.op === 'sign').at(-1);
    t.match(rec, { front: 'relay', tokenId: tid, decision: 'denied' });
    t.equal(rec?.host, undefined, 'the relay claim is not recorded as the host');
    t.match(rec?.peer, /^build1\.trusted\.example/, "the relay's claim is kept, as peer");
    t.notMatch(String(rec?.peer), /[\u001b\u202e]/, 'sanitised');
    t.match(rec?.reason, /policy: .*front=relay action=deny/);
  });

  await t.test('the status shows the claim as the relay says it, cleaned', async (t) => {
    const s = await runCli(['status'], { env });
    t.equal(s.code, 0, s.stderr);
    t.match(s.stdout, new RegExp(`relay token ${tid} \\(relay says from build1\\.trusted`));
    t.notMatch(s.stdout + holder.stderr(), /[\u001b\u202e]/, 'no escape reaches a terminal');
  });

  await t.test('CMD does not get the token, under any name', async (t) => {
    const r = await runCli(['connect', '--relay', liar.url, '--', 'env'], {
      env: { KEYTETHER_TOKEN: token, CI_SIGNING_TOKEN: token, KEYTETHER_OTHER: 'kept' },
    });
    t.equal(r.code, 0, r.stderr);
    t.match(r.stdout, /^GNUPGHOME=/m, 'CMD got its private GNUPGHOME');
    t.match(r.stdout, /^KEYTETHER_OTHER=kept$/m, 'other variables pass through');
    t.notMatch(r.stdout, /KEYTETHER_TOKEN|CI_SIGNING_TOKEN/, 'no token variable');
    t.notOk(r.stdout.includes(secretPart), "the token's secret is nowhere in CMD's environment");
  });
});
