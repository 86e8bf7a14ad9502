// What the server's own GnuPG needs so that it uses the facade: no autostart of a local (empty)
// gpg-agent over the facade's socket, and the holder's public keys in its keyring.

import { spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import type { Certificate } from '../protocol/keyholder.js';

/** gpg.conf is small; anything bigger than this is not ours to rewrite. */
const MAX_GPG_CONF_BYTES = 1 << 20;

/**
 * Appends `no-autostart` to `<homedir>/gpg.conf` unless an option line already says so.
 * Returns true when the file was changed.
 */
export async function ensureNoAutostart(homedir: string): Promise<boolean> {
  await fs.mkdir(homedir, { recursive: true, mode: 0o700 });
  const file = path.join(homedir, 'gpg.conf');
  let text = '';
  try {
    const st = await fs.stat(file);
    if (st.size > MAX_GPG_CONF_BYTES) throw new Error(`${file} is larger than 1 MiB`);
    text = await fs.readFile(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
  if (/^[ \t]*no-autostart[ \t]*$/m.test(text)) return false;
  const sep = text.length > 0 && !text.endsWith('\n') ? '\n' : '';
  await fs.appendFile(file, `${sep}no-autostart\n`, { mode: 0o600 });
  return true;
}

export interface ImportResult {
  ok: boolean;
  /** gpg's last stderr line when it failed (public data only). */
  detail?: string;
}

/**
 * `gpg --batch --import` of the holder's public certificates into the user's keyring, then
 * ownertrust "ultimate" for them, as gpg gives the keys it generates: they are the user's own
 * keys, and without it verification warns "untrusted key" and `gpg -e -r` to oneself fails with
 * "There is no assurance…" (it wants a terminal to ask).
 */
export async function importCertificates(
  certs: readonly Certificate[],
  env: NodeJS.ProcessEnv = process.env,
  gpg = 'gpg',
): Promise<ImportResult> {
  const input = certs.map((c) => c.armored.trimEnd() + '\n').join('');
  const imported = await runGpg(gpg, ['--batch', '--no-tty', '--import'], input, env);
  if (!imported.ok) return imported;
  const trust = certs
    .map((c) => c.fingerprint.toUpperCase())
    .filter((f) => /^(?:[0-9A-F]{40}|[0-9A-F]{64})$/.test(f))
    .map((f) => `${f}:6:\n`)
    .join('');
  // Best effort: under `trust-model always` (or direct) there is no trustdb to write, and the
  // keys are usable without it.
  if (trust !== '') await runGpg(gpg, ['--batch', '--no-tty', '--import-ownertrust'], trust, env);
  return imported;
}

function runGpg(
  gpg: string,
  args: string[],
  input: string,
  env: NodeJS.ProcessEnv,
): Promise<ImportResult> {
  return new Promise((resolve) => {
    const child = spawn(gpg, args, {
      env,
      stdio: ['pipe', 'ignore', 'pipe'],
    });
    let err = '';
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (s: string) => {
      if (err.length < 64 * 1024) err += s;
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
    child.on('error', (e) => {
      clearTimeout(timer);
      resolve({ ok: false, detail: e.message });
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      const last = err.trim().split('\n').pop() ?? '';
      resolve(code === 0 ? { ok: true } : { ok: false, detail: last.slice(0, 200) });
    });
    child.stdin.on('error', () => {});
    child.stdin.end(input);
  });
}
