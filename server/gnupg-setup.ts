// What the server's own GnuPG needs so that it uses the facade: no autostart of a local (empty)
// gpg-agent over the facade's socket, and the holder's public keys in its keyring.

import { spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import type { Certificate } from '../protocol/keyholder.js';

/** gpg.conf is small; anything bigger than this is not ours to rewrite. */
const MAX_GPG_CONF_BYTES = 1 << 20;

// The line right above the `no-autostart` keytether adds: what tells it from a user's own (which
// is never touched). Two wordings, so that removal can restore the file exactly, including "it
// did not exist". A session killed outright leaves the lines behind; the next session for the
// home finds them, serves with them and removes them when it ends.
const MARK = '# added by keytether serve; removed when its last session ends';
const MARK_CREATED =
  '# added by keytether serve, which created this file; removed with it when its last session ends';

const NO_AUTOSTART = /^[ \t]*no-autostart[ \t]*$/m;

interface GpgConf {
  /** The file to rewrite: gpg.conf itself, or what it links to (dotfiles are often symlinked). */
  file: string;
  text: string | undefined;
  mode: number;
}

async function readGpgConf(homedir: string): Promise<GpgConf> {
  const link = path.join(homedir, 'gpg.conf');
  let file = link;
  try {
    file = await fs.realpath(link);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
  try {
    const st = await fs.stat(file);
    if (st.size > MAX_GPG_CONF_BYTES) throw new Error(`${file} is larger than 1 MiB`);
    return { file, text: await fs.readFile(file, 'utf8'), mode: st.mode & 0o7777 };
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    return { file, text: undefined, mode: 0o600 };
  }
}

/** Replaces FILE in one step, so gpg never reads half of it; MODE survives umask. */
async function replaceFile(file: string, text: string, mode: number): Promise<void> {
  const aside = `${file}.kt-${process.pid}`;
  try {
    const fh = await fs.open(aside, 'wx', 0o600);
    try {
      await fh.writeFile(text, 'utf8');
      await fh.chmod(mode);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await fs.rename(aside, file);
  } catch (e) {
    await fs.rm(aside, { force: true });
    throw e;
  }
}

/**
 * Adds `no-autostart` to `<homedir>/gpg.conf`, marked as keytether's, unless an option line
 * already says so (the user's own, or one a killed session left). Returns true when the file
 * was changed.
 */
export async function ensureNoAutostart(homedir: string): Promise<boolean> {
  await fs.mkdir(homedir, { recursive: true, mode: 0o700 });
  const conf = await readGpgConf(homedir);
  if (conf.text === undefined) {
    await replaceFile(conf.file, `${MARK_CREATED}\nno-autostart\n`, 0o600);
    return true;
  }
  if (NO_AUTOSTART.test(conf.text)) return false;
  // At the end when the file ends in a newline, else at the start: either way the lines are
  // whole and removing them gives back the file byte for byte. The option's place does not
  // matter to gpg.
  const ours = `${MARK}\nno-autostart\n`;
  const text = conf.text === '' || conf.text.endsWith('\n') ? conf.text + ours : ours + conf.text;
  await replaceFile(conf.file, text, conf.mode);
  return true;
}

/**
 * Removes the `no-autostart` that ensureNoAutostart added (and only that: a user's own line has
 * no mark above it). For when the last session using the home's socket ends. Returns true when
 * the file was changed.
 */
export async function removeOwnNoAutostart(homedir: string): Promise<boolean> {
  const conf = await readGpgConf(homedir);
  if (conf.text === undefined) return false;
  if (conf.text === `${MARK_CREATED}\nno-autostart\n`) {
    await fs.rm(conf.file, { force: true });
    return true;
  }
  const lines = conf.text.split('\n');
  const at = lines.findIndex(
    (l, i) => (l === MARK || l === MARK_CREATED) && lines[i + 1] === 'no-autostart',
  );
  if (at < 0) return false;
  lines.splice(at, 2);
  await replaceFile(conf.file, lines.join('\n'), conf.mode);
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
