// Unix sockets keytether listens on, connects to or removes, on both ends (the one
// implementation; server/ and workstation/ both use it). A socket path is trusted only when it and
// its directory are this user's: otherwise another local user could pre-create the socket (or
// the serving session's control socket) and be handed the user's holder, or get a live agent's
// socket deleted. The checks follow OpenSSH's for its control sockets and agent: lstat (no
// symlinks), same owner, nobody else may write. The kernel then enforces the socket's 0600 on
// connect, so a peer on our own 0600 socket in a 0700 directory is this user (or root).

import net from 'node:net';
import fs from 'node:fs/promises';
import path from 'node:path';
import { takeActivatedSocket } from './socket-activation.js';
import { UserError } from './user-error.js';

export type SocketState = 'absent' | 'live' | 'stale' | 'not-a-socket';

const myUid = (): number | undefined =>
  typeof process.getuid === 'function' ? process.getuid() : undefined;

/**
 * Refuses (UserError) unless P's directory is a real directory owned by this user (or root) that
 * no one else can write to — a sticky one such as /tmp excepted, where only a file's owner can
 * remove or rename it — and P, if it exists, is not a symlink and belongs to this user with no
 * group/other write bit. Where the directory is missing nothing is refused (it will be made).
 */
export async function checkSocketPlace(p: string): Promise<void> {
  const uid = myUid();
  if (uid === undefined) return;
  const dir = path.dirname(p);
  const d = await fs.lstat(dir).catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') return undefined;
    throw new UserError(`cannot inspect ${dir}: ${e.code ?? e.message}`);
  });
  if (d) {
    if (d.isSymbolicLink() || !d.isDirectory()) {
      throw new UserError(
        `${dir} is not a plain directory (a symlink?); keytether keeps sockets only in a directory of yours, choose another path with --socket`,
      );
    }
    if (d.uid !== uid && d.uid !== 0) {
      throw new UserError(
        `${dir} belongs to another user (uid ${d.uid}); keytether keeps sockets only in a directory of yours, choose another path with --socket`,
      );
    }
    const sticky = (d.mode & 0o1000) !== 0;
    if ((d.mode & 0o022) !== 0 && !sticky) {
      throw new UserError(
        `${dir} can be written by other users, so its sockets cannot be trusted; run 'chmod go-w ${dir}' or choose another path with --socket`,
      );
    }
  }
  const st = await fs.lstat(p).catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') return undefined;
    throw new UserError(`cannot inspect ${p}: ${e.code ?? e.message}`);
  });
  if (!st) return;
  if (st.isSymbolicLink()) {
    throw new UserError(`${p} is a symlink; remove it or choose another path with --socket`);
  }
  if (st.uid !== uid) {
    throw new UserError(
      `${p} belongs to another user (uid ${st.uid}); keytether never talks to or removes it; choose another path with --socket`,
    );
  }
  if ((st.mode & 0o022) !== 0) {
    throw new UserError(
      `${p} can be written by other users; remove it (it is yours) or choose another path with --socket`,
    );
  }
}

/**
 * What is at P, for replacing it. Stale only when the kernel says no one listens (ECONNREFUSED)
 * or it vanished (ENOENT): any other error (EAGAIN from a busy agent's full backlog, EACCES)
 * means someone may still own it, so it is live and never deleted.
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

/** Connects to P after checking it is this user's; null when no one listens there. */
export async function connectOwnSocket(p: string): Promise<net.Socket | null> {
  await checkSocketPlace(p);
  return new Promise((resolve) => {
    const s = net.connect(p);
    const onError = () => resolve(null);
    s.once('error', onError);
    s.once('connect', () => {
      s.off('error', onError);
      resolve(s);
    });
  });
}

/** Creates the socket's directory the way gpg does for /run/user/<uid>/gnupg, then checks it. */
export async function ensureSocketDir(socketPath: string): Promise<void> {
  await fs.mkdir(path.dirname(socketPath), { recursive: true, mode: 0o700 });
  await checkSocketPlace(socketPath);
}

/** Removes P if it is this user's socket; one that is already gone is fine. */
export async function removeSocket(p: string): Promise<void> {
  const st = await fs.lstat(p).catch(() => undefined);
  if (!st) return;
  const uid = myUid();
  if (!st.isSocket() || (uid !== undefined && st.uid !== uid)) return;
  await fs.unlink(p).catch(() => {});
}

/** Listens on a path that the caller has checked is free (absent, or stale socket removed). */
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
    await listening(server, p);
  } finally {
    process.umask(oldMask);
  }
  reportAcceptErrors(server, p);
  // The directory is owner-only as well; this keeps the socket private where it is not.
  await fs.chmod(p, 0o600);
  return server;
}

function listening(server: net.Server, at: string | { fd: number }): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(at, () => {
      server.off('error', reject);
      resolve();
    });
  });
}

/**
 * After listen an accept failure (EMFILE…) is emitted on the server; unhandled it would end the
 * whole process. It is reported once; the server keeps accepting when it can.
 */
function reportAcceptErrors(server: net.Server, p: string): void {
  let reported = false;
  server.on('error', (e: NodeJS.ErrnoException) => {
    if (reported) return;
    reported = true;
    process.stderr.write(`keytether: accepting on ${p} failed: ${e.code ?? 'error'}\n`);
  });
}

/**
 * Listens on P in a checked directory, replacing a stale socket of this user's; a live one, a
 * file that is not a socket or another user's socket is refused with a sentence. LIVE says what
 * to do about a live listener.
 */
export async function listenReplacingStale(
  p: string,
  onConnection: (sock: net.Socket) => void,
  live: string,
): Promise<net.Server> {
  // A socket the service manager made for P (systemd socket activation) is used as it is: the
  // unit chose its mode, and connections may already wait on it.
  const fd = takeActivatedSocket(p);
  if (fd !== undefined) {
    const server = net.createServer({ allowHalfOpen: true }, onConnection);
    await listening(server, { fd });
    reportAcceptErrors(server, p);
    return server;
  }
  await ensureSocketDir(p);
  const state = await probeSocket(p);
  if (state === 'live') throw new UserError(live);
  if (state === 'not-a-socket') {
    throw new UserError(
      `${p} exists and is not a socket; move it away or choose another path with --socket`,
    );
  }
  if (state === 'stale') await fs.unlink(p);
  return listenAt(p, onConnection);
}
