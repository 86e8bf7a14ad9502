// The server's GnuPG after `serve --import-keys` / `connect -- CMD`: the holder's public keys are
// the user's own, so they get ownertrust ultimate on import, as gpg gives the keys it generates.
// Real gpg in a home with gpg's default trust model (the test homes elsewhere use "always").

import t from 'tap';
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { importCertificates } from '../server/gnupg-setup.js';
import { generateKey, makeGnupgHome } from './support/gnupg.js';

const execFileP = promisify(execFile);

t.test("imported holder keys are trusted as the user's own", async (t) => {
  const ws = await makeGnupgHome();
  t.teardown(() => ws.cleanup());
  const key = await generateKey(ws, {
    uid: 'Own Key <own@example.org>',
    algo: 'ed25519',
    usage: 'sign,cert',
    subkeys: [{ algo: 'cv25519', usage: 'encr' }],
  });
  const armored = (await ws.gpg(['--armor', '--export', key.fingerprint])).stdout.toString();

  const home = await mkdtemp(path.join(tmpdir(), 'kt-setup-'));
  t.teardown(async () => {
    await execFileP('gpgconf', ['--kill', 'all'], { env: { ...process.env, GNUPGHOME: home } });
    await rm(home, { recursive: true, force: true });
  });
  const env = { ...process.env, GNUPGHOME: home, LC_ALL: 'C' };
  const r = await importCertificates(
    [{ fingerprint: key.fingerprint, userIds: [key.uid], armored }],
    env,
  );
  t.same(r, { ok: true });
  const listed = await execFileP('gpg', ['--batch', '--list-keys', key.fingerprint], { env });
  t.match(listed.stdout, /\[ultimate\] Own Key <own@example\.org>/);
  // The review's symptom: "There is no assurance this key belongs to the named user".
  const enc = await new Promise<{ code: number | null; err: string }>((resolve) => {
    const c = execFile(
      'gpg',
      ['--batch', '--no-tty', '-r', key.fingerprint, '--encrypt'],
      { env },
      (e, _o, err) => resolve({ code: e ? ((e as { code?: number }).code ?? 1) : 0, err }),
    );
    c.stdin!.end('to myself\n');
  });
  t.equal(enc.code, 0, `gpg -e -r self in batch mode: ${enc.err}`);
});
