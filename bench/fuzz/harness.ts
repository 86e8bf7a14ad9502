// The fuzz harness: feeds fast-check generated inputs to a target's check, one case at a time,
// and counts what escapes. A target's check returns normally for every input its parser refuses
// the documented way; anything it throws is a crash (an oracle violation is thrown as
// OracleViolation, any other exception is an escaped bug). Cases are numbered by (generator,
// batch, index): fc.sample with the batch's seed regenerates any one of them, so a report needs
// no more than the seed to reproduce, and it carries the input itself as well.

import fc from 'fast-check';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

/** Thrown by a check when the target answered but the answer breaks its stated property. */
export class OracleViolation extends Error {
  override readonly name = 'OracleViolation';
}

export function violation(message: string): never {
  throw new OracleViolation(message);
}

export interface Generator<T> {
  /** `format` (shaped like real input, with mutations) or `bytes` (raw, structure-blind). */
  readonly name: string;
  readonly arb: fc.Arbitrary<T>;
}

export interface FuzzTarget<T> {
  readonly name: string;
  /** One sentence: what counts as a crash for this target and which properties are asserted. */
  readonly oracle: string;
  readonly generators: readonly Generator<T>[];
  check(input: T): void | Promise<void>;
  /** A case slower than this is a hang (default 1000 ms). */
  readonly caseMs?: number;
}

export type AnyTarget = FuzzTarget<never>;

export interface Failure {
  kind: 'crash' | 'hang';
  generator: string;
  seed: number;
  batch: number;
  index: number;
  message: string;
  /** The input, as corpus JSON (see toCorpusJson). */
  input: string;
}

export interface RunOptions {
  cases: number;
  seed: number;
  /** Cases per fc.sample call; each batch alternates generator. */
  batch?: number;
  /** Overrides the target's per-case limit (a test run beside others may want more slack). */
  caseMs?: number;
  /** Stop after this many failures (default 5). */
  maxFailures?: number;
  /** Called before each case with its index in the batch (so a watchdog can name a stuck one). */
  onCase?: (index: number) => void;
  /** Called after each batch with the number of cases done (the worker's heartbeat). */
  onProgress?: (done: number, current: { generator: string; batch: number }) => void;
}

export interface RunResult {
  target: string;
  cases: number;
  ms: number;
  failures: Failure[];
  /** Heap used after GC, end minus start (after the warm-up batch), bytes. */
  heapDelta: number;
  /** Highest RSS seen minus RSS after the warm-up batch, bytes. */
  rssPeakDelta: number;
  gcExposed: boolean;
}

/** Fails a target whose heap after GC grew by more than this over the run. */
export const HEAP_BOUND_BYTES = 16 << 20;
/** Fails a target whose RSS rose by more than this above its level after warm-up. */
export const RSS_BOUND_BYTES = 128 << 20;

let gcFn: (() => void) | undefined;
function gc(): boolean {
  if (gcFn === undefined) {
    const g = (globalThis as { gc?: () => void }).gc;
    if (typeof g === 'function') gcFn = g;
    else {
      try {
        setFlagsFromString('--expose-gc');
        gcFn = runInNewContext('gc') as () => void;
      } catch {
        gcFn = () => undefined;
        return false;
      }
    }
  }
  gcFn();
  return true;
}

function settleGc(): boolean {
  const ok = gc();
  gc();
  return ok;
}

const TIMEOUT = Symbol('timeout');

function withTimeout(p: Promise<void>, ms: number): Promise<void | typeof TIMEOUT> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<typeof TIMEOUT>((resolve) => {
    timer = setTimeout(() => resolve(TIMEOUT), ms);
  });
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}

/** The inputs of one batch, exactly as the run generated them. */
export function batchInputs<T>(target: FuzzTarget<T>, seed: number, batch: number, size: number) {
  const gen = target.generators[batch % target.generators.length]!;
  return { gen, values: fc.sample(gen.arb, { seed: (seed + batch * 7919) | 0, numRuns: size }) };
}

export async function runTarget<T>(target: FuzzTarget<T>, opts: RunOptions): Promise<RunResult> {
  const batchSize = opts.batch ?? 1000;
  const maxFailures = opts.maxFailures ?? 5;
  const caseMs = opts.caseMs ?? target.caseMs ?? 1000;
  const failures: Failure[] = [];
  let done = 0;
  let heapStart = 0;
  let rssStart = 0;
  let rssPeak = 0;
  let gcExposed = false;
  let ms = 0;
  for (let batch = 0; done < opts.cases && failures.length < maxFailures; batch++) {
    const size = Math.min(batchSize, opts.cases - done);
    const { gen, values } = batchInputs(target, opts.seed, batch, size);
    opts.onProgress?.(done, { generator: gen.name, batch });
    const t0 = performance.now();
    let ran = 0;
    for (let index = 0; index < values.length; index++, ran++) {
      const input = values[index]!;
      opts.onCase?.(index);
      const fail = (kind: Failure['kind'], message: string) =>
        failures.push({
          kind,
          generator: gen.name,
          seed: opts.seed,
          batch,
          index,
          message,
          input: toCorpusJson(input),
        });
      const start = performance.now();
      try {
        const r = target.check(input);
        if (r instanceof Promise) {
          if ((await withTimeout(r, caseMs)) === TIMEOUT) {
            fail('hang', `no answer within ${caseMs} ms`);
            continue;
          }
        }
      } catch (e) {
        fail('crash', describe(e));
        if (failures.length >= maxFailures) {
          ran++;
          break;
        }
        continue;
      }
      const took = performance.now() - start;
      if (took > caseMs) fail('hang', `took ${took.toFixed(0)} ms (limit ${caseMs} ms)`);
    }
    ms += performance.now() - t0;
    done += ran;
    if (batch === 0) {
      // Measured after the warm-up batch: JIT code, schema caches and the like are allocated once.
      gcExposed = settleGc();
      heapStart = process.memoryUsage().heapUsed;
      rssStart = process.memoryUsage().rss;
      rssPeak = rssStart;
    } else {
      rssPeak = Math.max(rssPeak, process.memoryUsage().rss);
    }
  }
  settleGc();
  const heapEnd = process.memoryUsage().heapUsed;
  rssPeak = Math.max(rssPeak, process.memoryUsage().rss);
  opts.onProgress?.(done, { generator: '', batch: -1 });
  return {
    target: target.name,
    cases: done,
    ms,
    failures,
    heapDelta: heapEnd - heapStart,
    rssPeakDelta: rssPeak - rssStart,
    gcExposed,
  };
}

export function memoryProblems(r: RunResult): string[] {
  const out: string[] = [];
  if (r.heapDelta > HEAP_BOUND_BYTES) {
    out.push(`heap grew by ${mib(r.heapDelta)} (bound ${mib(HEAP_BOUND_BYTES)})`);
  }
  if (r.rssPeakDelta > RSS_BOUND_BYTES) {
    out.push(`RSS rose by ${mib(r.rssPeakDelta)} (bound ${mib(RSS_BOUND_BYTES)})`);
  }
  return out;
}

export function mib(n: number): string {
  return `${(n / (1 << 20)).toFixed(1)} MiB`;
}

function describe(e: unknown): string {
  if (e instanceof OracleViolation) return `oracle: ${e.message}`;
  if (e instanceof Error) {
    const at = e.stack?.split('\n')[1]?.trim() ?? '';
    return `${e.name}: ${e.message.slice(0, 300)} ${at}`;
  }
  return `threw a non-Error: ${String(e).slice(0, 200)}`;
}

// Corpus files are JSON; Buffers travel as {"$b64": "..."} so binary inputs stay exact.
export function toCorpusJson(v: unknown): string {
  return JSON.stringify(v, function (this: unknown, key, value: unknown) {
    const raw = (this as Record<string, unknown>)[key];
    if (raw instanceof Uint8Array) return { $b64: Buffer.from(raw).toString('base64') };
    return value;
  });
}

export function fromCorpusJson(text: string): unknown {
  return JSON.parse(text, (_key, value: unknown) => {
    if (
      value !== null &&
      typeof value === 'object' &&
      Object.keys(value).length === 1 &&
      typeof (value as { $b64?: unknown }).$b64 === 'string'
    ) {
      return Buffer.from((value as { $b64: string }).$b64, 'base64');
    }
    return value;
  });
}
