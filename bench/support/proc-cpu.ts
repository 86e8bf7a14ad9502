// CPU time a process has used so far (all its threads, including ones that have exited), from
// /proc. On a busy machine wall-clock throughput depends on who else runs; CPU per operation
// is what the agent itself costs.

import { readFileSync } from 'node:fs';
import { runTool } from './processes.js';

let ticksPerSecond: number | undefined;

/** Reads the clock tick rate /proc/<pid>/stat counts in; call once before cpuSeconds. */
export async function initCpuClock(): Promise<void> {
  const r = await runTool('getconf', ['CLK_TCK'], process.env).catch(() => undefined);
  const n = Number(r?.stdout.toString('utf8').trim());
  ticksPerSecond = Number.isInteger(n) && n > 0 ? n : 100;
}

/**
 * user + system seconds of `pid` (with `children`, also of its children that have exited and
 * been waited for: the tools it ran), or undefined where /proc is not available.
 */
export function cpuSeconds(pid: number, children = false): number | undefined {
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
  } catch {
    return undefined;
  }
  // The command name (field 2) is in parentheses and may itself contain spaces or ')'.
  const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const utime = Number(rest[11]);
  const stime = Number(rest[12]);
  const cutime = children ? Number(rest[13]) : 0;
  const cstime = children ? Number(rest[14]) : 0;
  const ticks = utime + stime + cutime + cstime;
  if (!Number.isFinite(ticks)) return undefined;
  return ticks / (ticksPerSecond ?? 100);
}
