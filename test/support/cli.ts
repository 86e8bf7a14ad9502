// Runs the real `keytether` executable in a child process, the way a user would.
//
// Which build: tests must never run a stale dist/ left over from before the sources were edited,
// and must work in a checkout that has no dist/ at all. So the first call in a test process
// compiles the sources (tsc --noCheck: emit only, ~2 s; type errors are `npm run typecheck`'s
// job) into .cache/cli-build/<hash of the sources>/ and later calls reuse it. The directory is
// named after the content it was built from, and is built aside and renamed into place, so test
// files running in parallel never see a half-written build and never rebuild what is current.
// KEYTETHER_TEST_CLI=/path/to/main.js runs another build instead (e.g. an installed one).

import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
} from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

export const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

const SOURCE_DIRS = ['protocol', 'system', 'workstation', 'server', 'cli', 'bench'];
const execFileP = promisify(execFile);

function sourceFiles(dir: string, out: string[]): string[] {
  if (!existsSync(dir)) return out;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, entry.name);
    if (entry.isDirectory()) sourceFiles(p, out);
    else if (/\.(ts|mts|cts|js|mjs|json)$/.test(entry.name)) out.push(p);
  }
  return out;
}

function sourceHash(): string {
  const h = createHash('sha256');
  const files = [
    join(repoRoot, 'tsconfig.json'),
    join(repoRoot, 'tsconfig.build.json'),
    join(repoRoot, 'package.json'),
  ];
  for (const d of SOURCE_DIRS) sourceFiles(join(repoRoot, d), files);
  files.sort();
  for (const f of files) {
    h.update(relative(repoRoot, f)).update('\0').update(readFileSync(f)).update('\0');
  }
  return h.digest('hex').slice(0, 16);
}

let built: Promise<string> | undefined;

async function build(): Promise<string> {
  const cacheDir = join(repoRoot, '.cache', 'cli-build');
  const target = join(cacheDir, sourceHash());
  const main = join(target, 'cli', 'main.js');
  if (existsSync(main)) return main;
  mkdirSync(cacheDir, { recursive: true });
  const tmp = await mkdtemp(join(cacheDir, 'tmp-'));
  try {
    const tsc = join(repoRoot, 'node_modules', 'typescript', 'bin', 'tsc');
    await execFileP(
      process.execPath,
      [tsc, '-p', join(repoRoot, 'tsconfig.build.json'), '--noCheck', '--outDir', tmp],
      { cwd: repoRoot },
    ).catch((e: { stdout?: string; message: string }) => {
      // tsc exits non-zero on syntax errors even with --noCheck; the files may still be usable,
      // but a missing entry point is fatal.
      if (!existsSync(join(tmp, 'cli', 'main.js'))) {
        throw new Error(`building the CLI failed: ${e.stdout || e.message}`);
      }
    });
    try {
      renameSync(tmp, target);
    } catch {
      // Another test process finished the same build first; theirs is identical.
      rmSync(tmp, { recursive: true, force: true });
    }
  } catch (e) {
    rmSync(tmp, { recursive: true, force: true });
    throw e;
  }
  pruneOldBuilds(cacheDir, target);
  return main;
}

// Keep the cache from growing with every edit; builds younger than a day may still be in use by
// a test run of another checkout state.
function pruneOldBuilds(cacheDir: string, keep: string): void {
  const dayAgo = Date.now() - 86_400_000;
  for (const name of readdirSync(cacheDir)) {
    const p = join(cacheDir, name);
    if (p === keep) continue;
    try {
      if (statSync(p).mtimeMs < dayAgo) rmSync(p, { recursive: true, force: true });
    } catch {
      // Removed concurrently: fine.
    }
  }
}

/** Path of the CLI entry point to run (building it on first use). */
export function cliPath(): Promise<string> {
  const override = process.env.KEYTETHER_TEST_CLI;
  if (override) return Promise.resolve(override);
  built ??= build();
  return built;
}

export interface RunOptions {
  /** Added to (and overriding) the test process's environment. `undefined` removes a variable. */
  env?: Record<string, string | undefined>;
  /** Written to the CLI's stdin, which is then closed. Without it stdin is empty. */
  input?: string | Buffer;
  cwd?: string;
  /** Kill the CLI after this long (default 60 s) so a hang fails the test instead of tap. */
  timeoutMs?: number;
}

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

function childEnv(env: RunOptions['env']): NodeJS.ProcessEnv {
  const merged: NodeJS.ProcessEnv = { ...process.env };
  // Tests assert what users see: no stack traces unless a test asks for them.
  delete merged.KEYTETHER_DEBUG;
  for (const [k, v] of Object.entries(env ?? {})) {
    if (v === undefined) delete merged[k];
    else merged[k] = v;
  }
  return merged;
}

/** Starts `keytether ARGS…` and returns the child, for long-running commands. */
export async function spawnCli(
  args: string[],
  opts: Omit<RunOptions, 'input' | 'timeoutMs'> = {},
): Promise<ChildProcess> {
  const main = await cliPath();
  return spawn(process.execPath, [main, ...args], {
    cwd: opts.cwd ?? repoRoot,
    env: childEnv(opts.env),
    stdio: ['pipe', 'pipe', 'pipe'],
  });
}

/** Runs `keytether ARGS…` to completion. */
export async function runCli(args: string[], opts: RunOptions = {}): Promise<RunResult> {
  const child = await spawnCli(args, opts);
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  child.stdout!.on('data', (b: Buffer) => out.push(b));
  child.stderr!.on('data', (b: Buffer) => err.push(b));
  // The CLI may exit without reading its input; that is not the test's failure.
  child.stdin!.on('error', () => {});
  child.stdin!.end(opts.input ?? '');
  const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 60_000);
  try {
    const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>(
      (resolve, reject) => {
        child.on('error', reject);
        child.on('close', (c, s) => resolve([c, s]));
      },
    );
    return {
      code,
      signal,
      stdout: Buffer.concat(out).toString('utf8'),
      stderr: Buffer.concat(err).toString('utf8'),
    };
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Resolves with the first line of `stream` matching `pattern` (e.g. /^ready: (.+)$/), or rejects
 * when the stream ends first or `timeoutMs` passes. For commands that announce readiness.
 */
export function waitForLine(
  stream: NodeJS.ReadableStream,
  pattern: RegExp,
  timeoutMs = 30_000,
): Promise<RegExpMatchArray> {
  return new Promise((resolve, reject) => {
    let buf = '';
    const seen: string[] = [];
    const done = (f: () => void) => {
      clearTimeout(timer);
      stream.off('data', onData);
      stream.off('end', onEnd);
      f();
    };
    const onData = (chunk: Buffer | string) => {
      buf += chunk.toString();
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        const m = line.match(pattern);
        if (m) return done(() => resolve(m));
        if (seen.length < 20) seen.push(line);
      }
    };
    const onEnd = () =>
      done(() => reject(new Error(`stream ended before ${pattern}; saw: ${seen.join(' | ')}`)));
    const timer = setTimeout(
      () => done(() => reject(new Error(`no line matching ${pattern} in ${timeoutMs} ms`))),
      timeoutMs,
    );
    stream.on('data', onData);
    stream.on('end', onEnd);
  });
}

/**
 * Imports SECRET (what `gpg --export-secret-keys` wrote) into the keytether home ENV names
 * (KEYTETHER_HOME, or HOME for the default one) with `keytether keys import` on stdin.
 */
export async function importIntoKeytether(
  secret: Buffer,
  env: Record<string, string | undefined>,
): Promise<void> {
  const r = await runCli(['keys', 'import'], { env, input: secret });
  if (r.code !== 0) throw new Error(`keytether keys import failed: ${r.stderr}`);
}
