// The fault tests' world (test/faults-*.test.ts), every part a real process: a workstation key
// imported into a keytether home, holders (`keytether agent`), relays, facades
// (`keytether connect`) and stock gpg on a public-keys-only home pointed at a facade's socket.
// Each process is tracked so a test can SIGKILL it, wait for a line on its stderr and measure
// how long the others take to notice.

import type { Test } from 'tap';
import type { ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { exportSecretKey, generateKey, makeGnupgHome, type TempGnupg } from './gnupg.js';
import { runCli, spawnCli, waitForLine } from './cli.js';

/** A stderr line that matched, and when it arrived (ms since the epoch). */
export type StderrMatch = RegExpMatchArray & { at: number };

export interface Proc {
  child: ChildProcess;
  stdout(): string;
  stderr(): string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** The first stderr line matching RE from now on (lines already seen do not count). */
  nextStderr(re: RegExp, timeoutMs?: number): Promise<StderrMatch>;
  /** The first stderr line matching RE since the process started. */
  anyStderr(re: RegExp, timeoutMs?: number): Promise<StderrMatch>;
  stop(signal?: NodeJS.Signals): Promise<unknown>;
}

export function track(child: ChildProcess): Proc {
  let out = '';
  let err = '';
  let partial = '';
  const lines: { text: string; at: number }[] = [];
  const waiters = new Set<() => void>();
  child.stdout?.on('data', (b: Buffer) => (out += b.toString()));
  child.stderr?.on('data', (b: Buffer) => {
    const text = b.toString();
    err += text;
    const parts = (partial + text).split('\n');
    partial = parts.pop()!;
    const at = Date.now();
    for (const p of parts) lines.push({ text: p, at });
    for (const w of [...waiters]) w();
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on('exit', (code, signal) => resolve({ code, signal })),
  );
  // Lines are matched in what was collected, so none can slip past between two awaits.
  const stderrLine = (re: RegExp, timeoutMs: number, from: number) =>
    new Promise<StderrMatch>((resolve, reject) => {
      let next = from;
      const check = () => {
        for (; next < lines.length; next++) {
          const m = lines[next]!.text.match(re);
          if (m) return finish(() => resolve(Object.assign(m, { at: lines[next]!.at })));
        }
      };
      const finish = (f: () => void) => {
        clearTimeout(timer);
        waiters.delete(check);
        f();
      };
      const timer = setTimeout(
        () => finish(() => reject(new Error(`no stderr line matching ${re} in ${timeoutMs} ms`))),
        timeoutMs,
      );
      waiters.add(check);
      check();
    });
  return {
    child,
    stdout: () => out,
    stderr: () => err,
    exited,
    nextStderr: (re, timeoutMs = 30_000) => stderrLine(re, timeoutMs, lines.length),
    anyStderr: (re, timeoutMs = 30_000) => stderrLine(re, timeoutMs, 0),
    async stop(signal = 'SIGTERM') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      return exited;
    },
  };
}

export interface KeyWorld {
  ws: TempGnupg;
  fingerprint: string;
  /** Armored public key, for the "server" gpg. */
  publicKey: string;
  tmp: string;
  home: string;
  env: { KEYTETHER_HOME: string };
}

/** A fresh ed25519 signing key imported into a keytether home at HOME (default TMP/home). */
export async function keyWorld(t: Test, uid: string, home?: string): Promise<KeyWorld> {
  const ws = await makeGnupgHome();
  t.teardown(() => ws.cleanup());
  const key = await generateKey(ws, { uid, algo: 'ed25519', usage: 'sign,cert' });
  const tmp = await mkdtemp('/tmp/ktfaults-');
  t.teardown(() => rm(tmp, { recursive: true, force: true }));
  const env = { KEYTETHER_HOME: home ?? path.join(tmp, 'home') };
  const secretFile = path.join(tmp, 'secret.gpg');
  await writeFile(secretFile, await exportSecretKey(ws, key.fingerprint), { mode: 0o600 });
  const imported = await runCli(['keys', 'import', secretFile], { env });
  await rm(secretFile);
  if (imported.code !== 0) throw new Error(`keys import: ${imported.stderr}`);
  const pub = await ws.gpg(['--batch', '--armor', '--export', key.fingerprint]);
  return {
    ws,
    fingerprint: key.fingerprint,
    publicKey: pub.stdout.toString(),
    tmp,
    home: env.KEYTETHER_HOME,
    env,
  };
}

/** Starts `keytether ARGS` and waits for its `PATTERN` line on stdout (default `ready:`). */
export async function startCli(
  t: Test,
  args: string[],
  env: Record<string, string | undefined> = {},
  pattern = /^ready: (.+)$/,
): Promise<Proc & { ready: RegExpMatchArray }> {
  const p = track(await spawnCli(args, { env }));
  t.teardown(() => p.stop('SIGKILL'));
  try {
    const ready = await waitForLine(p.child.stdout!, pattern, 30_000);
    return { ...p, ready };
  } catch (e) {
    await p.stop('SIGKILL');
    throw new Error(`keytether ${args[0]} did not start: ${(e as Error).message}; ${p.stderr()}`);
  }
}

export async function startRelay(
  t: Test,
  listen = '127.0.0.1:0',
): Promise<Proc & { url: string; port: number }> {
  const p = await startCli(t, ['relay', '--listen', listen], {}, /^listening: (\S+)$/);
  const url = p.ready[1]!;
  return { ...p, url, port: Number(new URL(url).port) };
}

export type AuditLine = Record<string, unknown> & { seq: number; op: string; decision: string };

export async function auditRecords(home: string): Promise<AuditLine[]> {
  const text = await readFile(path.join(home, 'audit.jsonl'), 'utf8').catch(() => '');
  return text
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as AuditLine);
}

/** `gpg --detach-sign` of TEXT on CLIENT as FPR; resolves with gpg's result and how long it took. */
export async function timedSign(
  client: TempGnupg,
  fpr: string,
  text = 'release notes\n',
  timeoutMs = 60_000,
): Promise<{ code: number | null; stderr: string; ms: number }> {
  const started = Date.now();
  const r = await client.gpg(['--batch', '--no-tty', '-u', fpr, '--detach-sign'], {
    input: text,
    timeoutMs,
  });
  return { code: r.code, stderr: r.stderr, ms: Date.now() - started };
}

/** The token id (`tid`) inside a token, as the audit log names it. */
export function tokenId(token: string): string {
  const payload = token.split('.')[1] ?? '';
  return (JSON.parse(Buffer.from(payload, 'base64url').toString('utf8')) as { tid: string }).tid;
}
