// The holder's own gpg-agent socket. A socket file can outlive its server (a killed process
// leaves it behind), so an existing path is probed before it is replaced: a live listener is
// never clobbered, a dead one is removed.

import net from 'node:net';
import fs from 'node:fs/promises';
import path from 'node:path';
import { UserError } from '../../cli/errors.js';

export type SocketState = 'absent' | 'live' | 'stale' | 'not-a-socket';

export async function probeSocket(p: string, timeoutMs = 1000): Promise<SocketState> {
  let st;
  try {
    st = await fs.lstat(p);
  } catch {
    return 'absent';
  }
  if (!st.isSocket()) return 'not-a-socket';
  return new Promise((resolve) => {
    const s = net.connect(p);
    const done = (state: SocketState) => {
      clearTimeout(timer);
      s.destroy();
      resolve(state);
    };
    // A listener that accepts but never greets is still "live": it owns the path.
    const timer = setTimeout(() => done('live'), timeoutMs);
    s.once('connect', () => done('live'));
    s.once('error', () => done('stale'));
  });
}

/** Listens on `p`, replacing a stale socket file; refuses a live one with a sentence. */
export async function listenUnix(
  p: string,
  onConnection: (sock: net.Socket) => void,
): Promise<net.Server> {
  const state = await probeSocket(p);
  if (state === 'live') {
    throw new UserError(
      `another agent is already listening on ${p}; stop it (for gpg-agent: gpgconf --kill gpg-agent) or choose another path with --socket`,
    );
  }
  if (state === 'not-a-socket') {
    throw new UserError(`${p} exists and is not a socket; move it away or choose --socket`);
  }
  if (state === 'stale') await fs.unlink(p);
  await fs.mkdir(path.dirname(p), { recursive: true, mode: 0o700 });
  // Half-open: a client that sends its commands and then shuts down its side (`printf … | socat`)
  // still gets the replies, as from gpg-agent.
  const server = net.createServer({ allowHalfOpen: true }, onConnection);
  // Created owner-only, so there is no moment between bind and chmod when others could connect.
  const oldMask = process.umask(0o177);
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(p, () => {
        server.off('error', reject);
        resolve();
      });
    });
  } finally {
    process.umask(oldMask);
  }
  // After listen an accept failure (EMFILE…) is emitted on the server; unhandled it would end the
  // whole process. It is reported once; the server keeps accepting when it can.
  let reported = false;
  server.on('error', (e: NodeJS.ErrnoException) => {
    if (reported) return;
    reported = true;
    process.stderr.write(`keytether: accepting on ${p} failed: ${e.code ?? 'error'}\n`);
  });
  // Only the owner may talk to the agent (the directory is 0700 too, this is belt and braces).
  await fs.chmod(p, 0o600);
  return server;
}
