// Taking over the path where the server's gpg looks for its agent. A socket file can outlive its
// server (a killed agent, a dropped SSH session), so an existing path is probed first: nothing
// listening → replaced; a live listener → never clobbered unless the user asked for --replace.

import net from 'node:net';
import fs from 'node:fs/promises';
import path from 'node:path';

export type SocketState = 'absent' | 'live' | 'stale' | 'not-a-socket';

/**
 * A `%Assuan%` redirect file (libassuan) at the path counts as "not a socket": it was put there on
 * purpose by someone, so it is not ours to delete.
 */
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
    // A listener that accepts but never greets still owns the path.
    const timer = setTimeout(() => done('live'), timeoutMs);
    s.once('connect', () => done('live'));
    s.once('error', (e: NodeJS.ErrnoException) =>
      done(e.code === 'ECONNREFUSED' || e.code === 'ENOENT' ? 'stale' : 'live'),
    );
  });
}

/** Creates the socket's directory the way gpg does for /run/user/<uid>/gnupg: owner-only. */
export async function ensureSocketDir(socketPath: string): Promise<void> {
  await fs.mkdir(path.dirname(socketPath), { recursive: true, mode: 0o700 });
}

/** Listens on a path that the caller has checked is free (absent or stale socket removed). */
export async function listenAt(
  p: string,
  onConnection: (sock: net.Socket) => void,
): Promise<net.Server> {
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
  // The directory is owner-only as well; this keeps the socket private where it is not.
  await fs.chmod(p, 0o600);
  return server;
}

/** Removes a socket file, ignoring one that is already gone. */
export async function removeSocket(p: string): Promise<void> {
  await fs.unlink(p).catch(() => {});
}
