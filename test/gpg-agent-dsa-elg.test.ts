// Issue 19: a DSA signing key with an ElGamal encryption subkey, held by the workstation's real
// gpg-agent, is listed with gpg's own keygrips and served through `keytether agent --backend
// gpg-agent`: stock gpg signs and decrypts with it (gpg-agent does the math). Before, these parts
// had no keygrip, so gpg on the other side said "No secret key".

import t from 'tap';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { ChildProcess } from 'node:child_process';
import * as openpgp from 'openpgp';
import { describeKey } from '../workstation/keystore/key-part.js';
import { publicKeySexp } from '../protocol/keygrip.js';
import { clientHome, generateKey, makeGnupgHome, type TempGnupg } from './support/gnupg.js';
import { gpgClients } from './support/gpg-versions.js';
import { runCli, spawnCli, waitForLine } from './support/cli.js';

/** gpg's own keygrips, in listing order (`grp` records). */
async function gpgKeygrips(g: TempGnupg): Promise<string[]> {
  const r = await g.gpg(['--batch', '--with-colons', '--with-keygrip', '-K']);
  if (r.code !== 0) throw new Error(r.stderr);
  return r.stdout
    .toString()
    .split('\n')
    .filter((l) => l.startsWith('grp:'))
    .map((l) => l.split(':')[9]!);
}

t.test('DSA + ElGamal through --backend gpg-agent', async (t) => {
  const ws = await makeGnupgHome();
  t.teardown(() => ws.cleanup());
  const dsa = await generateKey(ws, {
    uid: 'Dora DSA <dora@example.org>',
    algo: 'dsa2048',
    usage: 'sign,cert',
    subkeys: [{ algo: 'elg2048', usage: 'encr' }],
  });
  const pub = await ws.gpg(['--batch', '--export']);
  t.equal(pub.code, 0, pub.stderr);

  await t.test('keygrips and READKEY bytes equal gpg-agent’s', async (t) => {
    const [cert] = await openpgp.readKeys({ binaryKeys: pub.stdout });
    const parts = describeKey(cert!);
    t.same(
      parts.map((p) => p.algorithm),
      ['dsa2048', 'elg2048'],
    );
    t.same(
      parts.map((p) => p.keygrip),
      await gpgKeygrips(ws),
    );
    for (const p of parts) {
      const r = await ws.connectAgent([`READKEY ${p.keygrip}`]);
      // Assuan data lines, their %XX escapes undone.
      const data = Buffer.concat(
        r.stdout
          .toString('latin1')
          .split('\n')
          .filter((l) => l.startsWith('D '))
          .map((l) =>
            Buffer.from(
              l
                .slice(2)
                .replace(/%([0-9A-F]{2})/g, (_, h: string) => String.fromCharCode(parseInt(h, 16))),
              'latin1',
            ),
          ),
      );
      t.equal(
        publicKeySexp(p.publicKey!).toString('hex'),
        data.toString('hex'),
        `${p.algorithm} READKEY`,
      );
    }
  });

  const tmp = await mkdtemp('/tmp/ktdsa-');
  t.teardown(() => rm(tmp, { recursive: true, force: true }));

  await t.test('the builtin store refuses it, naming the gpg-agent back end', async (t) => {
    const sec = await ws.gpg([
      '--batch',
      '--pinentry-mode',
      'loopback',
      '--passphrase',
      '',
      '--export-secret-keys',
      dsa.fingerprint,
    ]);
    t.equal(sec.code, 0, sec.stderr);
    const env = { KEYTETHER_HOME: path.join(tmp, 'builtin-home') };
    const imp = await runCli(['keys', 'import'], { env, input: sec.stdout });
    t.not(imp.code, 0, 'import fails');
    t.match(imp.stderr, /dsa2048 part the builtin store cannot use.*--backend gpg-agent/);
    t.equal(imp.stderr.trim().split('\n').length, 1, 'one line');
    const list = await runCli(['keys', 'list', '--json'], { env });
    t.same(JSON.parse(list.stdout), [], 'nothing was stored');
  });
  const socket = path.join(tmp, 'S.agent');
  const child: ChildProcess = await spawnCli(
    ['agent', '--socket', socket, '--backend', 'gpg-agent', '--gnupg-home', ws.home],
    { env: { KEYTETHER_HOME: path.join(tmp, 'home') } },
  );
  let stderr = '';
  child.stderr!.on('data', (b: Buffer) => (stderr += b.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
  t.teardown(async () => {
    if (child.exitCode === null) {
      child.kill('SIGTERM');
      await exited;
    }
  });
  await waitForLine(child.stdout!, /^ready: /, 30_000).catch((e: Error) => {
    throw new Error(`agent did not get ready: ${e.message}; stderr: ${stderr}`);
  });

  for (const client of gpgClients().filter((c) => c.gpgconf)) {
    await t.test(`${client.label}: detach-sign, clearsign, decrypt`, async (t) => {
      const cl = await clientHome(socket, pub.stdout, client.gpg);
      t.teardown(() => cl.cleanup());
      const gpg = (args: string[], input?: string | Buffer) =>
        cl.gpg(['--batch', '--no-tty', ...args], input === undefined ? {} : { input });
      const msg = path.join(cl.home, 'msg.txt');
      await writeFile(msg, `hello via ${client.label}\n`);
      // SHA-512 over a 224-bit q: gpg-agent truncates the digest as DSA requires.
      for (const digest of ['SHA256', 'SHA512']) {
        const sig = `${msg}.${digest}.sig`;
        const s = await gpg([
          '-u',
          dsa.fingerprint,
          '--digest-algo',
          digest,
          '-o',
          sig,
          '--detach-sign',
          msg,
        ]);
        t.equal(s.code, 0, s.stderr);
        const v = await gpg(['--verify', sig, msg]);
        t.match(v.stderr, /Good signature from "Dora DSA/, `${digest} detach-sign Good`);
      }
      const cs = await gpg(['-u', dsa.fingerprint, '--clearsign'], 'clear text\n');
      t.equal(cs.code, 0, cs.stderr);
      t.match((await gpg(['--verify'], cs.stdout)).stderr, /Good signature from "Dora DSA/);

      const plain = `secret for dora via ${client.label}\n`;
      const enc = await gpg(['--trust-model', 'always', '-r', dsa.fingerprint, '-e'], plain);
      t.equal(enc.code, 0, enc.stderr);
      const dec = await gpg(['-d'], enc.stdout);
      t.equal(dec.code, 0, dec.stderr);
      t.equal(dec.stdout.toString(), plain);
    });
  }
});
