// Keys that appear or disappear on the workstation while facades are connected reach those
// facades without a reconnect: the holder watches its inventory while tunnels listen, and each
// tunnel pushes the new inventory (through a relay stream still only the token's keys). Real
// processes and real gpg for the relay path; a real Holder over a real unix socket for the rest.

import t from 'tap';
import type { ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, readFile, rm, unlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Inventory } from '../protocol/keyholder.js';
import { serveTunnel, tunnelClient, type TunnelClient } from '../protocol/tunnel/index.js';
import { DEFAULT_CONFIG, type Config } from '../workstation/home/config.js';
import { openHolderRuntime } from '../workstation/holder/runtime.js';
import { openAgentTunnel, startControlServer } from '../workstation/control/control.js';
import { Holder, inventoryWatcher } from '../workstation/holder/holder.js';
import { Keystore } from '../workstation/keystore/index.js';
import { BuiltinBackend } from '../workstation/backends/builtin.js';
import type { Backend } from '../workstation/backends/backend.js';
import { UnlockCache } from '../workstation/holder/unlock-cache.js';
import { ApprovalMemory } from '../workstation/policy/approvals.js';
import { AuditLog } from '../workstation/audit/audit.js';
import { Pinentry } from '../workstation/pinentry/pinentry.js';
import type { UnlockedKey } from '../workstation/crypto/index.js';
import {
  clientHome,
  exportSecretKey,
  generateKey,
  makeGnupgHome,
  type GeneratedKey,
  type TempGnupg,
} from './support/gnupg.js';
import { runCli, spawnCli, waitForLine } from './support/cli.js';
import { ALLOW_BLIND_FLAG, ALLOW_BLIND_RULE } from './support/blind-signing.js';
import { socketPair } from './support/socket-pair.js';

const SOFTWARE = 'keytether/0.1.0';
const BUILTIN: Config = {
  ...DEFAULT_CONFIG,
  relay: [],
  policy: [ALLOW_BLIND_RULE],
  backend: 'builtin',
};

/** Polls an observable condition (bounded); for state that has no event to wait on. */
async function waitUntil<T>(
  what: string,
  probe: () => Promise<T | undefined> | T | undefined,
  timeoutMs = 60_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** The next inventory the facade receives that satisfies PRED. */
function nextInventory(
  client: TunnelClient,
  pred: (inv: Inventory) => boolean,
  timeoutMs = 60_000,
): Promise<Inventory> {
  return new Promise((resolve, reject) => {
    let done = false;
    const timer = setTimeout(() => {
      done = true;
      reject(new Error(`no matching inventory push within ${timeoutMs} ms`));
    }, timeoutMs);
    client.on('inventory', (inv) => {
      if (done || !pred(inv)) return;
      done = true;
      clearTimeout(timer);
      resolve(inv);
    });
    client.on('close', (reason) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      reject(new Error(`the tunnel closed: ${reason}`));
    });
  });
}

const grips = (inv: Inventory) => inv.keys.map((k) => k.keygrip);

/** An exported secret key file, the way a user feeds `keytether keys import`. */
async function secretFile(ws: TempGnupg, key: GeneratedKey, dir: string): Promise<string> {
  const file = path.join(dir, `${key.fingerprint}.gpg`);
  await writeFile(file, await exportSecretKey(ws, key.fingerprint), { mode: 0o600 });
  return file;
}

t.test('workstation keys', async (t) => {
  const ws = await makeGnupgHome();
  t.teardown(() => ws.cleanup());
  // One after another: concurrent key generations in one home race to create the keyring.
  const made: GeneratedKey[] = [];
  for (const name of ['Alice', 'Bob', 'Carol']) {
    made.push(
      await generateKey(ws, {
        uid: `${name} <${name.toLowerCase()}@example.org>`,
        algo: 'ed25519',
        usage: 'sign,cert',
      }),
    );
  }
  const [alice, bob, carol] = made;
  const tmp = await mkdtemp('/tmp/ktinv-');
  t.teardown(() => rm(tmp, { recursive: true, force: true }));
  const secrets = {
    alice: await secretFile(ws, alice!, tmp),
    bob: await secretFile(ws, bob!, tmp),
    carol: await secretFile(ws, carol!, tmp),
  };
  const bytes = (file: string) => readFile(file);

  await t.test('a tunnel from an in-process holder follows imports and removals', async (t) => {
    const home = path.join(tmp, 'home-tunnel');
    const rt = await openHolderRuntime(home, BUILTIN);
    t.teardown(() => rt.close());
    await rt.keystore.importKeys(await bytes(secrets.alice));

    const [serverEnd, clientEnd] = await socketPair(t, tmp);
    const watch = inventoryWatcher(rt.holder);
    t.ok(watch, 'a Holder can be watched');
    const server = serveTunnel(rt.holder, serverEnd, {
      software: SOFTWARE,
      ...(watch ? { onInventoryChange: watch } : {}),
    });
    const client = tunnelClient(clientEnd, { software: SOFTWARE });
    t.teardown(() => client.close());
    await client.ready;
    await server.ready;
    t.same(grips(await client.inventory()), [alice!.keygrip], 'starts with the stored key');

    // Another process (`keytether keys import`) writes into the same store.
    const other = await Keystore.open(home);
    const added = nextInventory(client, (inv) => grips(inv).includes(bob!.keygrip));
    await other.importKeys(await bytes(secrets.bob));
    const inv = await added;
    t.same(grips(inv).sort(), [alice!.keygrip, bob!.keygrip].sort(), 'the import is pushed');
    t.ok(
      inv.certificates.some((c) => c.fingerprint === bob!.fingerprint),
      "the new key's certificate comes with it",
    );

    const removed = nextInventory(client, (inv) => !grips(inv).includes(alice!.keygrip));
    await other.remove(alice!.fingerprint);
    t.same(grips(await removed), [bob!.keygrip], 'the removal is pushed');

    client.close();
    const { reason } = await server.closed;
    t.ok(reason, 'the tunnel ended');
  });

  await t.test('a key generated in the gpg-agent back end is pushed', async (t) => {
    const agentHome = await makeGnupgHome();
    t.teardown(() => agentHome.cleanup());
    const first = await generateKey(agentHome, { uid: 'Dora <dora@example.org>', algo: 'ed25519' });
    const config: Config = { ...BUILTIN, backend: 'gpg-agent' };
    const rt = await openHolderRuntime(path.join(tmp, 'home-gpga'), config, {
      gnupgHome: agentHome.home,
    });
    t.teardown(() => rt.close());
    const [serverEnd, clientEnd] = await socketPair(t, tmp, 'tun-gpga');
    serveTunnel(rt.holder, serverEnd, {
      software: SOFTWARE,
      onInventoryChange: (fn) => rt.holder.onInventoryChange(fn),
    });
    const client = tunnelClient(clientEnd, { software: SOFTWARE });
    t.teardown(() => client.close());
    await client.ready;
    t.ok(grips(await client.inventory()).includes(first.keygrip), 'the existing key is listed');

    // The push may land before generateKey returns the keygrip, so every push is kept.
    const pushed: Inventory[] = [];
    client.on('inventory', (inv) => pushed.push(inv));
    const second = await generateKey(agentHome, {
      uid: 'Ezra <ezra@example.org>',
      algo: 'ed25519',
    });
    const inv = await waitUntil('the new key was pushed', () =>
      pushed.find((i) => grips(i).includes(second.keygrip)),
    );
    t.ok(grips(inv).includes(second.keygrip), 'the new key arrives without a reconnect');
    t.ok(
      inv.certificates.some((c) => c.fingerprint === second.fingerprint),
      'with its certificate',
    );
  });

  await t.test("keytether ssh's borrowed agent holder hears about imports", async (t) => {
    const home = path.join(tmp, 'home-ctl');
    const rt = await openHolderRuntime(home, BUILTIN);
    t.teardown(() => rt.close());
    const control = await startControlServer(rt, {
      home,
      agentSocket: path.join(home, 'S.gpg-agent'),
      version: '0.1.0',
    });
    t.teardown(() => control.close());
    const agent = await openAgentTunnel(home, 'build.example.org', { software: SOFTWARE });
    t.ok(agent, 'the agent lends its holder');
    t.teardown(() => agent?.holder.close());
    t.same(grips(await agent!.holder.inventory()), [], 'nothing stored yet');
    const added = nextInventory(agent!.holder, (inv) => grips(inv).includes(carol!.keygrip));
    await (await Keystore.open(home)).importKeys(await bytes(secrets.carol));
    t.same(grips(await added), [carol!.keygrip], 'the import reaches the borrowing session');
  });

  await t.test(
    'the watch survives unreadable inventories and stops with its last listener',
    async (t) => {
      const home = path.join(tmp, 'home-watch');
      const keystore = await Keystore.open(home);
      const cache = new UnlockCache<UnlockedKey>({ defaultTtlMs: 60_000, maxTtlMs: 60_000 });
      const pinentry = new Pinentry({ program: '/bin/false', timeoutMs: 1000, title: 'keytether' });
      const audit = await AuditLog.open(path.join(home, 'audit.jsonl'), { sync: 'write' });
      t.teardown(() => audit.close());
      const builtin = new BuiltinBackend({ keystore, pinentry, cache });
      // The real back end, with a switch that makes listing fail the way an unreadable store does.
      let reads = 0;
      let failing = false;
      const flaky: Backend = {
        name: 'builtin',
        async inventory() {
          reads++;
          if (failing) throw new Error('the key store cannot be read');
          return builtin.inventory();
        },
        open: (entry, ctx) => builtin.open(entry, ctx),
      };
      const POLL_MS = 25;
      const holder = new Holder({
        backends: [flaky],
        keystore,
        policy: [ALLOW_BLIND_RULE],
        pinentry,
        audit,
        cache,
        approvals: new ApprovalMemory(),
        inventoryPollMs: POLL_MS,
      });

      let changes = 0;
      const unsubscribe = holder.onInventoryChange(() => changes++);
      // One more subscription that throws: the others still hear about changes.
      const unsubscribeBroken = holder.onInventoryChange(() => {
        throw new Error('listener bug');
      });
      await waitUntil('the watch has read the inventory', () => (reads >= 2 ? true : undefined));
      t.equal(changes, 0, 'subscribing alone is no change');

      failing = true;
      const failedFrom = reads;
      await waitUntil('several reads failed', () => (reads >= failedFrom + 3 ? true : undefined));
      t.equal(changes, 0, 'failed reads are skipped, not reported');
      failing = false;

      const other = await Keystore.open(home);
      await other.importKeys(await bytes(secrets.carol));
      await waitUntil('the import was noticed', () => (changes >= 1 ? true : undefined));
      t.equal(changes, 1, 'one import, one change (a throwing listener changes nothing)');
      t.ok(
        grips(await holder.inventory()).includes(carol!.keygrip),
        'and the holder lists the key',
      );

      unsubscribeBroken();
      unsubscribe();
      unsubscribe();
      const stoppedAt = reads;
      // A negative check: nothing to wait for, so give it twenty poll intervals.
      await new Promise((r) => setTimeout(r, POLL_MS * 20));
      t.equal(reads, stoppedAt, 'no more reads once the last listener is gone');

      // Subscribing again starts a fresh watch.
      const again = holder.onInventoryChange(() => changes++);
      await waitUntil('the new watch reads', () => (reads > stoppedAt + 1 ? true : undefined));
      await unlink(path.join(home, 'keys', `${carol!.fingerprint}.key`));
      await waitUntil('the removal was noticed', () => (changes >= 2 ? true : undefined));
      again();
    },
  );

  await t.test(
    'through a relay, gpg -K on the server follows keys removed and imported',
    async (t) => {
      const home = path.join(tmp, 'home-relay');
      const env = { KEYTETHER_HOME: home };
      const imp = await runCli(['keys', 'import', secrets.alice], { env });
      t.equal(imp.code, 0, `keys import: ${imp.stderr}`);

      const procs: ChildProcess[] = [];
      t.teardown(async () => {
        for (const p of procs) {
          if (p.exitCode === null && p.signalCode === null) {
            p.kill('SIGKILL');
            await once(p, 'exit');
          }
        }
      });
      const stderrOf = (p: ChildProcess) => {
        let s = '';
        p.stderr!.on('data', (b: Buffer) => (s += b.toString()));
        return () => s;
      };

      const relay = await spawnCli(['relay', '--listen', '127.0.0.1:0']);
      procs.push(relay);
      const url = (await waitForLine(relay.stdout!, /^listening: (\S+)$/, 30_000))[1]!;

      const agent = await spawnCli(
        ['agent', ...ALLOW_BLIND_FLAG, '--socket', path.join(tmp, 'S.local'), '--relay', url],
        { env },
      );
      procs.push(agent);
      const agentErr = stderrOf(agent);
      const connected = waitForLine(agent.stderr!, /^relay connected: /, 30_000);
      connected.catch(() => {});
      await waitForLine(agent.stdout!, /^ready: /, 30_000).catch((e: Error) => {
        throw new Error(`${e.message}; stderr: ${agentErr()}`);
      });
      await connected;

      const tok = await runCli(['token', 'create', '--key', alice!.fingerprint, '--relay', url], {
        env,
      });
      t.equal(tok.code, 0, `token create: ${tok.stderr}`);
      const sock = path.join(tmp, 'S.conn');
      const facade = await spawnCli([
        'connect',
        '--relay',
        url,
        '--token',
        tok.stdout.trim(),
        '--socket',
        sock,
      ]);
      procs.push(facade);
      const facadeErr = stderrOf(facade);
      await waitForLine(facade.stdout!, /^ready: /, 30_000).catch((e: Error) => {
        throw new Error(`${e.message}; stderr: ${facadeErr()}`);
      });

      // The server's gpg knows all three public keys; which of them have a secret key is up to
      // the holder's pushes.
      const pub = await ws.gpg([
        '--batch',
        '--export',
        alice!.fingerprint,
        bob!.fingerprint,
        carol!.fingerprint,
      ]);
      const server = await clientHome(sock, pub.stdout);
      t.teardown(() => server.cleanup());
      const secretKeys = async (): Promise<string[]> => {
        const r = await server.gpg(['--batch', '--with-colons', '--list-secret-keys']);
        const out = r.stdout.toString('utf8').split('\n');
        const fprs: string[] = [];
        out.forEach((line, i) => {
          if (!line.startsWith('sec:')) return;
          const fpr = out.slice(i + 1).find((l) => l.startsWith('fpr:'));
          if (fpr) fprs.push(fpr.split(':')[9]!);
        });
        return fprs;
      };
      t.same(await secretKeys(), [alice!.fingerprint], 'gpg -K lists the token key');

      const rm1 = await runCli(['keys', 'remove', alice!.fingerprint], { env });
      t.equal(rm1.code, 0, `keys remove: ${rm1.stderr}`);
      await waitUntil('gpg -K no longer lists the removed key', async () =>
        (await secretKeys()).length === 0 ? true : undefined,
      );
      t.pass('the removal reached the server without a reconnect');

      // Bob is not the token's: imported first, it must never show; Alice's return must.
      const impB = await runCli(['keys', 'import', secrets.bob], { env });
      t.equal(impB.code, 0, impB.stderr);
      const impA = await runCli(['keys', 'import', secrets.alice], { env });
      t.equal(impA.code, 0, impA.stderr);
      const listed = await waitUntil('gpg -K lists the re-imported key', async () => {
        const l = await secretKeys();
        return l.includes(alice!.fingerprint) ? l : undefined;
      });
      t.same(listed, [alice!.fingerprint], "only the token's key, not the other new one");

      const sig = await server.gpg(
        ['--batch', '--no-tty', '-u', alice!.fingerprint, '--detach-sign'],
        { input: 'x' },
      );
      t.equal(sig.code, 0, `signing with the re-imported key works: ${sig.stderr}`);
      t.notMatch(facadeErr(), /reconnect/, 'the facade never reconnected');
    },
  );
});
