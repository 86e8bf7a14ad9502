// Issue 19: brainpool P-256/384/512 keys made by real gpg, imported into the builtin keystore with
// `keytether keys import`, decrypt (ECDH) and sign (ECDSA) for stock gpg on the server side of
// `keytether serve --stdio`, the facade `keytether ssh` runs. The listed keygrips are gpg's own.

import t from 'tap';
import { Duplex } from 'node:stream';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { serveTunnel } from '../protocol/tunnel/index.js';
import { loadConfig } from '../workstation/home/config.js';
import { openHolderRuntime } from '../workstation/holder/runtime.js';
import {
  exportSecretKey,
  generateKey,
  listKeygrips,
  makeGnupgHome,
  redirectAgentSocket,
  type GeneratedKey,
} from './support/gnupg.js';
import { gpgClients } from './support/gpg-versions.js';
import { runCli, spawnCli, waitForLine } from './support/cli.js';
import { ALLOW_BLIND_RULE } from './support/blind-signing.js';

const CURVES = ['brainpoolP256r1', 'brainpoolP384r1', 'brainpoolP512r1'] as const;

t.test('brainpool ECDH and ECDSA through the builtin store and the facade', async (t) => {
  const ws = await makeGnupgHome();
  t.teardown(() => ws.cleanup());
  const keys = new Map<string, GeneratedKey>();
  // Sequential: every generation rewrites the same keyring.
  for (const curve of CURVES) {
    keys.set(
      curve,
      await generateKey(ws, {
        uid: `${curve} <${curve}@example.org>`,
        algo: curve,
        usage: 'sign,cert',
        subkeys: [{ algo: curve, usage: 'encr' }],
      }),
    );
  }

  const tmp = await mkdtemp('/tmp/ktbp-');
  t.teardown(() => rm(tmp, { recursive: true, force: true }));
  const home = path.join(tmp, 'home');
  const env = { KEYTETHER_HOME: home };
  const secrets = path.join(tmp, 'secret.gpg');
  const parts: Buffer[] = [];
  for (const k of keys.values()) parts.push(await exportSecretKey(ws, k.fingerprint));
  await writeFile(secrets, Buffer.concat(parts), { mode: 0o600 });
  const imp = await runCli(['keys', 'import', secrets], { env });
  t.equal(imp.code, 0, `keys import: ${imp.stderr}`);
  await rm(secrets);

  await t.test('keys list --json keygrips equal gpg --with-keygrip', async (t) => {
    const list = await runCli(['keys', 'list', '--json'], { env });
    t.equal(list.code, 0, list.stderr);
    const json = JSON.parse(list.stdout) as {
      fingerprint: string;
      algorithm: string;
      keygrip: string;
      subkeys: { fingerprint: string; algorithm: string; keygrip: string; usage: string[] }[];
    }[];
    const got = json
      .flatMap((k) => [
        [k.fingerprint, k.algorithm, k.keygrip],
        ...k.subkeys.map((s) => [s.fingerprint, s.algorithm, s.keygrip]),
      ])
      .sort();
    const want = (await listKeygrips(ws)).map((r) => [r.fingerprint, r.curve, r.keygrip]).sort();
    t.equal(want.length, 6, 'gpg lists three primaries and three subkeys');
    t.same(got, want);
  });

  // The facade's other end: this process is the workstation's holder (the keys are unprotected, so
  // no pinentry is involved).
  const config = {
    ...(await loadConfig(home)),
    policy: [{ front: 'ssh' as const, action: 'allow' as const }, ALLOW_BLIND_RULE],
  };
  const rt = await openHolderRuntime(home, config);
  t.teardown(() => rt.close());
  const srv = await makeGnupgHome();
  t.teardown(() => srv.cleanup());
  const socket = path.join(tmp, 'S.gpg-agent');
  const child = await spawnCli(['serve', '--stdio', '--socket', socket, '--import-keys'], {
    env: srv.env,
  });
  let stderr = '';
  child.stderr!.on('data', (b: Buffer) => (stderr += b.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
  child.stdin!.on('error', () => {});
  const handle = serveTunnel(
    rt.holder,
    Duplex.from({ readable: child.stdout!, writable: child.stdin! }),
    {
      software: 'keytether/test',
    },
  );
  t.teardown(async () => {
    if (child.exitCode === null) {
      handle.close('test done');
      await exited;
    }
  });
  await waitForLine(child.stderr!, /^ready: /, 30_000).catch((e: Error) => {
    throw new Error(`serve did not get ready: ${e.message}; stderr: ${stderr}`);
  });
  for (const client of gpgClients()) await redirectAgentSocket(srv, socket, client.gpgconf);

  for (const client of gpgClients()) {
    await t.test(client.label, async (t) => {
      const gpg = (args: string[], input?: string | Buffer) =>
        srv.run(client.gpg, ['--batch', '--no-tty', ...args], input === undefined ? {} : { input });
      for (const [curve, key] of keys) {
        await t.test(`${curve}: gpg -d of a message to the encryption subkey`, async (t) => {
          const plain = `secret for ${curve} via ${client.label}\n`;
          const enc = await gpg(['-r', key.fingerprint, '--encrypt'], plain);
          t.equal(enc.code, 0, enc.stderr);
          const dec = await gpg(['-d'], enc.stdout);
          t.equal(dec.code, 0, dec.stderr);
          t.equal(dec.stdout.toString(), plain);
        });
        await t.test(`${curve}: --clearsign verifies`, async (t) => {
          const cs = await gpg(['-u', key.fingerprint, '--clearsign'], 'clear text\n');
          t.equal(cs.code, 0, cs.stderr);
          t.match((await gpg(['--verify'], cs.stdout)).stderr, `Good signature from "${curve}`);
        });
      }
    });
  }
});
