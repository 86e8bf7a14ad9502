// Stock gpg under load: WORKERS loops, each running one `gpg` process after another (a distinct
// message on stdin, the armored detached signature on stdout) until the window closes. Every
// process is timed from spawn to exit; every failure is counted and the first few kept with
// gpg's own words; a uniform sample of the signatures is kept so the caller can verify them.

import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { runTool } from './processes.js';

const GPG_TIMEOUT_MS = 120_000;
const KEPT_FAILURES = 5;

export interface LoadRun {
  /** Signatures that came back, over the whole window. */
  sigs: number;
  failures: number;
  /** The first few failures, one line each. */
  failureMessages: string[];
  /** From the first spawn until the last process of the window exited. */
  seconds: number;
  /** Wall ms per successful gpg process, sorted. */
  latency: number[];
  /** A uniform sample of (message, signature) pairs. */
  samples: { message: Buffer; signature: Buffer }[];
}

export interface LoadOptions {
  gpg: string;
  args: string[];
  env: NodeJS.ProcessEnv;
  workers: number;
  seconds: number;
  /** Put into every message, so signatures of different runs never coincide. */
  label: string;
  sampleSize: number;
}

function lastLines(text: string, n: number): string {
  return text.trim().split('\n').slice(-n).join(' | ').slice(0, 400);
}

export async function gpgLoad(o: LoadOptions): Promise<LoadRun> {
  const run: LoadRun = {
    sigs: 0,
    failures: 0,
    failureMessages: [],
    seconds: 0,
    latency: [],
    samples: [],
  };
  const fail = (why: string) => {
    run.failures++;
    if (run.failureMessages.length < KEPT_FAILURES) run.failureMessages.push(why);
  };
  const keep = (message: Buffer, signature: Buffer) => {
    // Reservoir sampling: every signature of the window is equally likely to be checked.
    if (run.samples.length < o.sampleSize) run.samples.push({ message, signature });
    else {
      const j = Math.floor(Math.random() * run.sigs);
      if (j < o.sampleSize) run.samples[j] = { message, signature };
    }
  };
  const start = performance.now();
  const end = start + o.seconds * 1000;
  await Promise.all(
    Array.from({ length: o.workers }, async (_, w) => {
      // Each worker signs at least once, so a zero-length window is one signature per worker.
      for (let n = 0; n === 0 || performance.now() < end; n++) {
        const message = Buffer.from(`${o.label}: worker ${w}, signature ${n}\n`);
        const t0 = performance.now();
        try {
          const r = await runTool(o.gpg, o.args, o.env, {
            input: message,
            timeoutMs: GPG_TIMEOUT_MS,
          });
          const ms = performance.now() - t0;
          if (r.code !== 0 || !r.stdout.includes('-----BEGIN PGP SIGNATURE-----')) {
            fail(`gpg exited ${r.code} after ${ms.toFixed(0)} ms: ${lastLines(r.stderr, 3)}`);
            continue;
          }
          run.sigs++;
          run.latency.push(ms);
          keep(message, r.stdout);
        } catch (e) {
          fail(`gpg did not finish: ${lastLines((e as Error).message, 3)}`);
        }
      }
    }),
  );
  run.seconds = (performance.now() - start) / 1000;
  run.latency.sort((a, b) => a - b);
  return run;
}

/** The value at percentile P of an ascending list. */
export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

/**
 * `gpg --verify` of every sample in ENV; each must be a good signature by the subkey SIGNER of
 * PRIMARY (VALIDSIG names the signing key and, last, its primary). Throws on the first that is not.
 */
export async function verifySamples(
  samples: LoadRun['samples'],
  env: NodeJS.ProcessEnv,
  primary: string,
  signer: string,
): Promise<void> {
  const dir = await mkdtemp('/tmp/ktbl-v-');
  try {
    for (const [i, s] of samples.entries()) {
      const msg = path.join(dir, `${i}.txt`);
      const sig = path.join(dir, `${i}.asc`);
      await writeFile(msg, s.message);
      await writeFile(sig, s.signature);
      const v = await runTool(
        '/usr/bin/gpg',
        ['--batch', '--status-fd', '1', '--verify', sig, msg],
        env,
      );
      const valid = /^\[GNUPG:\] VALIDSIG ([0-9A-F]{40}) .* ([0-9A-F]{40})$/m.exec(
        v.stdout.toString('utf8'),
      );
      if (v.code !== 0 || !valid || valid[2] !== primary || valid[1] !== signer) {
        throw new Error(
          `sample ${i} (${JSON.stringify(s.message.toString())}) did not verify as a ` +
            `signature by ${signer}, a subkey of ${primary}: ${lastLines(v.stderr, 3)}`,
        );
      }
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
