// Sockets handed over by systemd (socket activation, sd_listen_fds(3)): LISTEN_PID names this
// process, LISTEN_FDS counts descriptors from 3. Each is matched to the path it is bound to, read
// from /proc/net/unix by the socket's inode, so a unit's `ListenStream=` paths take the place of
// the paths keytether would bind itself and no flag says which descriptor is which. The socket
// file belongs to the service manager: keytether neither checks it as stale nor removes it.

import { readFileSync, readlinkSync } from 'node:fs';
import path from 'node:path';

const FIRST_FD = 3;
/** More than a unit of ours would ever pass; a bigger count is not ours to trust. */
const MAX_FDS = 64;

let inherited: Map<string, number> | undefined;

/** The bound path of each listening unix socket in /proc/net/unix, by inode. */
function unixPathsByInode(table: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const line of table.split('\n').slice(1)) {
    // Num RefCount Protocol Flags Type St Inode Path
    const f = line.trim().split(/\s+/);
    if (f.length >= 8 && f[7]!.startsWith('/')) out.set(f[6]!, f.slice(7).join(' '));
  }
  return out;
}

/**
 * The descriptors systemd passed, by the path each is bound to; read once, and the LISTEN_*
 * variables removed, so that nothing this process starts (pinentry, gpg) takes them for its own.
 */
export function activatedSockets(env: NodeJS.ProcessEnv = process.env): Map<string, number> {
  if (inherited) return inherited;
  inherited = new Map();
  const pid = env.LISTEN_PID;
  const count = Number(env.LISTEN_FDS);
  delete env.LISTEN_PID;
  delete env.LISTEN_FDS;
  delete env.LISTEN_FDNAMES;
  if (pid !== String(process.pid) || !Number.isInteger(count) || count < 1 || count > MAX_FDS) {
    return inherited;
  }
  let paths: Map<string, string>;
  try {
    paths = unixPathsByInode(readFileSync('/proc/net/unix', 'latin1'));
  } catch {
    return inherited;
  }
  for (let fd = FIRST_FD; fd < FIRST_FD + count; fd++) {
    let link: string;
    try {
      link = readlinkSync(`/proc/self/fd/${fd}`);
    } catch {
      continue;
    }
    const inode = /^socket:\[(\d+)\]$/.exec(link)?.[1];
    const bound = inode !== undefined ? paths.get(inode) : undefined;
    if (bound !== undefined) inherited.set(path.resolve(bound), fd);
  }
  return inherited;
}

/** Whether the service manager passed a socket bound to P (not yet taken). */
export function isActivatedSocket(p: string): boolean {
  return activatedSockets().has(path.resolve(p));
}

/** The activated descriptor bound to P, if the service manager passed one; taken once. */
export function takeActivatedSocket(p: string): number | undefined {
  const sockets = activatedSockets();
  const key = path.resolve(p);
  const fd = sockets.get(key);
  if (fd !== undefined) sockets.delete(key);
  return fd;
}
