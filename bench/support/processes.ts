// Child processes for benches: run a tool to completion, or start a long-running one and wait for
// the line that says it is serving. Benches are compiled into dist/, so they cannot lean on
// test/support (which tsconfig.build.json leaves out of the build).

import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';

export interface ToolResult {
  code: number;
  stdout: Buffer;
  stderr: string;
}

/** Runs `bin args…` to completion; a tool that hangs (a prompt, a lock) is killed after timeoutMs. */
export function runTool(
  bin: string,
  args: string[],
  env: NodeJS.ProcessEnv,
  opts: { input?: string | Buffer; timeoutMs?: number } = {},
): Promise<ToolResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(bin, args, { env, stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, opts.timeoutMs ?? 120_000);
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stderr.on('data', (d: Buffer) => err.push(d));
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      const stderr = Buffer.concat(err).toString('utf8');
      if (timedOut) {
        reject(new Error(`${path.basename(bin)} ${args[0] ?? ''} timed out\n${stderr}`));
        return;
      }
      resolve({ code: code ?? (signal ? 128 : 1), stdout: Buffer.concat(out), stderr });
    });
    child.stdin.on('error', () => {});
    child.stdin.end(opts.input ?? '');
  });
}

export interface Daemon {
  child: ChildProcess;
  /** The rest of the line after the ready prefix. */
  readyText: string;
  /** The last 4 KiB the daemon wrote to stderr so far. */
  stderrTail(): string;
  /** SIGTERM, then waits for the exit (SIGKILL if it has not exited after graceMs). */
  stop(graceMs?: number): Promise<void>;
}

/**
 * Spawns a server and resolves once a stdout line starts with `readyPrefix`; rejects with its
 * stderr if it exits first or says nothing within timeoutMs.
 */
export function startDaemon(
  bin: string,
  args: string[],
  env: NodeJS.ProcessEnv,
  readyPrefix: string,
  timeoutMs = 30_000,
): Promise<Daemon> {
  return new Promise((resolve, reject) => {
    const child = spawn(bin, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let settled = false;
    const exited = new Promise<void>((r) => child.once('exit', () => r()));
    const fail = (why: string) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      child.kill('SIGKILL');
      reject(new Error(`${path.basename(args[0] ?? bin)}: ${why}\n${stderr.trim()}`));
    };
    const timer = setTimeout(
      () => fail(`no "${readyPrefix}" line within ${timeoutMs} ms`),
      timeoutMs,
    );
    child.on('error', (e) => fail(e.message));
    child.on('exit', (code, signal) => fail(`exited (${signal ?? code}) before it was ready`));
    child.stderr.on('data', (d: Buffer) => {
      // Only the tail matters for a failure message; a chatty daemon must not grow this forever.
      stderr = (stderr + d.toString('utf8')).slice(-4096);
    });
    child.stdout.on('data', (d: Buffer) => {
      if (settled) return;
      stdout = (stdout + d.toString('utf8')).slice(-4096);
      const line = stdout
        .split('\n')
        .find((l, i, all) => i < all.length - 1 && l.startsWith(readyPrefix));
      if (line === undefined) return;
      settled = true;
      clearTimeout(timer);
      // Keep draining so a full pipe can never block the daemon.
      child.stdout.resume();
      resolve({
        child,
        readyText: line.slice(readyPrefix.length),
        stderrTail: () => stderr,
        async stop(graceMs = 10_000) {
          if (child.exitCode !== null || child.signalCode !== null) return;
          child.kill('SIGTERM');
          const kill = setTimeout(() => child.kill('SIGKILL'), graceMs);
          await exited;
          clearTimeout(kill);
        },
      });
    });
  });
}

/**
 * Waits for a stderr line of D matching RE (e.g. the CLI holder's relay login), counting what D
 * wrote before the call too.
 */
export function stderrLine(d: Daemon, re: RegExp, what: string): Promise<void> {
  const err = d.child.stderr!;
  if (re.test(d.stderrTail())) return Promise.resolve();
  return new Promise<void>((resolve, reject) => {
    let text = d.stderrTail();
    const timer = setTimeout(() => {
      err.off('data', onData);
      reject(new Error(`${what}: ${text.slice(-2000)}`));
    }, 30_000);
    const onData = (b: Buffer) => {
      text = (text + b.toString('utf8')).slice(-8192);
      if (!re.test(text)) return;
      clearTimeout(timer);
      err.off('data', onData);
      err.resume();
      resolve();
    };
    err.on('data', onData);
  });
}
