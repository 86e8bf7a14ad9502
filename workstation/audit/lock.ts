// One writer per audit log. Two holders appending to the same file would each continue the chain
// from the record they last saw, forking it; so a writer holds `<log>.lock`, a unix socket it
// listens on, for as long as the log is open.
//
// Why a listening socket rather than a pid file or flock: Node has no flock, and a pid file
// outlives a SIGKILLed holder, leaving a guess about whether the pid was reused. A socket nobody
// listens on is refused by the kernel (ECONNREFUSED) the moment its process dies, however it
// died, so a stale lock is told apart from a live one without guessing, by the same rule as the
// holder's other sockets (system/unix-socket.ts). The live writer answers a connection with its
// pid, so the refusal can name it. Two holders breaking the same stale lock at the same instant
// could both win; the size check before each append (audit.ts) catches that one as well.

import net from 'node:net';
import { AuditError } from './record.js';
import { listenReplacingStale, probeSocket } from '../../system/unix-socket.js';

export interface AuditLock {
  release(): Promise<void>;
}

/** Unix socket paths are limited to 108 bytes (104 on macOS), the terminating NUL included. */
const MAX_SOCKET_PATH = 103;

export function lockPath(logPath: string): string {
  return `${logPath}.lock`;
}

/** The pid a live lock holder reports, or undefined when it says nothing usable in time. */
function askPid(p: string): Promise<number | undefined> {
  return new Promise((resolve) => {
    const s = net.connect(p);
    let text = '';
    const done = (pid: number | undefined) => {
      clearTimeout(timer);
      s.destroy();
      resolve(pid);
    };
    const timer = setTimeout(() => done(undefined), 1000);
    s.setEncoding('utf8');
    s.on('data', (d: string) => {
      text += d;
      const m = /^keytether-audit-writer pid=(\d{1,10})\n/.exec(text);
      if (m) done(Number(m[1]));
      else if (text.length > 100 || text.includes('\n')) done(undefined);
    });
    s.once('error', () => done(undefined));
    s.once('end', () => done(undefined));
  });
}

function inUse(logPath: string, pid: number | undefined): AuditError {
  const who = pid !== undefined ? `another keytether holder (pid ${pid})` : 'another process';
  return new AuditError(
    `the audit log ${logPath} is being written by ${who}; two writers would fork its hash chain: stop that holder, or use it (keytether ssh and gpg on this machine do), or give this one another --home`,
  );
}

export async function acquireAuditLock(logPath: string): Promise<AuditLock> {
  const p = lockPath(logPath);
  if (Buffer.byteLength(p) > MAX_SOCKET_PATH) {
    throw new AuditError(
      `the audit log's lock ${p} is too long a path for a unix socket (over ${MAX_SOCKET_PATH} bytes); use a shorter --home`,
    );
  }
  if ((await probeSocket(p)) === 'live') throw inUse(logPath, await askPid(p));
  let server: net.Server;
  try {
    server = await listenReplacingStale(
      p,
      (sock) => {
        sock.on('error', () => sock.destroy());
        sock.end(`keytether-audit-writer pid=${process.pid}\n`);
      },
      `the audit log ${logPath} is being written by another keytether holder`,
    );
  } catch (e) {
    // Lost a race to another starter, or the path is unusable: say which.
    if ((await probeSocket(p)) === 'live') throw inUse(logPath, await askPid(p));
    throw new AuditError(`cannot lock the audit log ${logPath}: ${(e as Error).message}`);
  }
  // The lock must never be what keeps a finished process alive.
  server.unref();
  let released: Promise<void> | undefined;
  return {
    release() {
      released ??= new Promise<void>((resolve) => server.close(() => resolve()));
      return released;
    },
  };
}
