// A real redis-server (Debian's) for relay scale-out tests and bench/relay-redis.ts: on 127.0.0.1,
// a free port, its own temporary directory, nothing saved to disk. restart() stops it and starts
// it again on the same port, as an operator restarting Redis would. (Benches cannot import
// test/support, so this lives here and the tests import it.)

import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { createInterface } from 'node:readline';

export const REDIS_SERVER = '/usr/bin/redis-server';

/** Why redis tests cannot run here, or undefined when they can. */
export function redisMissing(): string | undefined {
  return existsSync(REDIS_SERVER)
    ? undefined
    : `${REDIS_SERVER} is not installed (apt install redis-server)`;
}

export interface TestRedis {
  url: string;
  port: number;
  /** SIGKILL, then a fresh start on the same port (empty: nothing was saved). */
  restart(): Promise<void>;
  stop(): Promise<void>;
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as { port: number }).port;
      srv.close(() => resolve(port));
    });
  });
}

export async function startRedis(): Promise<TestRedis> {
  const dir = await mkdtemp('/tmp/kt-redis-');
  const port = await freePort();
  let child: ChildProcess | undefined;
  const launch = async () => {
    const c = spawn(
      REDIS_SERVER,
      [
        '--bind',
        '127.0.0.1',
        '--port',
        String(port),
        '--save',
        '',
        '--appendonly',
        'no',
        '--dir',
        dir,
        '--daemonize',
        'no',
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    child = c;
    c.stderr!.resume();
    await new Promise<void>((resolve, reject) => {
      const lines = createInterface({ input: c.stdout! });
      const timer = setTimeout(() => reject(new Error('redis-server not ready in 15 s')), 15_000);
      lines.on('line', (l) => {
        if (!/Ready to accept connections/.test(l)) return;
        clearTimeout(timer);
        lines.close();
        c.stdout!.resume();
        resolve();
      });
      c.once('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`redis-server exited (${code}) before it was ready`));
      });
    });
  };
  const kill = async () => {
    const c = child;
    child = undefined;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    const gone = new Promise((r) => c.once('exit', r));
    c.kill('SIGKILL');
    await gone;
  };
  await launch();
  return {
    url: `redis://127.0.0.1:${port}`,
    port,
    async restart() {
      await kill();
      await launch();
    },
    async stop() {
      await kill();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** The haproxy binary from Debian, for the load-balancer test. */
export const HAPROXY = '/usr/sbin/haproxy';
