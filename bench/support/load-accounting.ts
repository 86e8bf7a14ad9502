// What bench/load.ts reports beside throughput and latency: CPU per signature of each process a
// front runs on (with the tools each one ran, such as the facade's `ss`), and how many of the
// holder's audit records name the requesting process.

import { readFileSync, readdirSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { cpuSeconds } from './proc-cpu.js';

/** CPU seconds so far of each named pid (with its waited-for children), and `gpg`: ours. */
export function cpuNow(pids: Record<string, number>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [name, pid] of Object.entries(pids)) {
    const s = cpuSeconds(pid, true);
    if (s !== undefined) out[name] = s;
  }
  // This process's waited-for children are the gpg processes it ran (and a few setup tools).
  const all = cpuSeconds(process.pid, true);
  const own = cpuSeconds(process.pid);
  if (all !== undefined && own !== undefined) out.gpg = all - own;
  return out;
}

/** ms of CPU per signature, by process, between two cpuNow() readings. */
export function cpuPerSig(
  before: Record<string, number>,
  after: Record<string, number>,
  sigs: number,
): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [k, v] of Object.entries(after)) {
    if (before[k] !== undefined && sigs > 0) out[k] = ((v - before[k]) * 1000) / sigs;
  }
  return out;
}

export function formatCpu(cpu: Record<string, number>): string {
  return Object.entries(cpu)
    .map(([k, v]) => `${k} ${v.toFixed(1)}`)
    .join(', ');
}

/** The pid of a `keytether serve --stdio` whose GNUPGHOME is HOME (the ssh front's facade). */
export function findServe(home: string): number | undefined {
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const argv = readFileSync(`/proc/${name}/cmdline`, 'utf8').split('\0');
      if (!argv.includes('serve') || !argv.includes('--stdio')) continue;
      const env = readFileSync(`/proc/${name}/environ`, 'utf8').split('\0');
      if (env.includes(`GNUPGHOME=${home}`)) return Number(name);
    } catch {
      // gone, or not ours to read
    }
  }
  return undefined;
}

/** Lines in the audit log so far (0 when there is none yet). */
export async function auditLines(file: string): Promise<number> {
  const text = await readFile(file, 'utf8').catch(() => '');
  return text.split('\n').filter(Boolean).length;
}

/** Of the audit records after line FROM: how many there are, and how many name the requester. */
export async function auditRequesters(
  file: string,
  from: number,
): Promise<{ records: number; named: number; names: Map<string, number> }> {
  const lines = (await readFile(file, 'utf8')).split('\n').filter(Boolean).slice(from);
  const names = new Map<string, number>();
  let named = 0;
  for (const line of lines) {
    const r = JSON.parse(line) as { requester?: { name?: string } };
    const name = r.requester?.name;
    if (name === undefined) continue;
    named++;
    names.set(name, (names.get(name) ?? 0) + 1);
  }
  return { records: lines.length, named, names };
}
