// Which process is on the other end of an accepted unix-socket connection, and what started it
// (gpg ← git commit -S ← bash ← sshd). Node exposes neither SO_PEERCRED nor sock_diag, so the
// kernel is asked through tools that can: `ss -xpn` (sock_diag: the peer socket's inode and the
// processes holding it), or where ss is missing a perl/python3 one-liner that reads SO_PEERCRED
// from an inherited copy of the socket. The process details then come from /proc.
//
// Everything found here is what this machine says about itself: a process can rewrite its own
// argv and comm, and root can fake /proc. Callers send it on as a claim, never as proof.
// The lookup never throws and never takes longer than its timeout; "not found" is undefined.

import { execFile, spawn } from 'node:child_process';
import { readlinkSync } from 'node:fs';
import fs from 'node:fs/promises';
import type net from 'node:net';
import type { Requester } from '../protocol/keyholder.js';

export interface ProcessInfo {
  pid: number;
  /** The kernel's name for it (`comm`, at most 15 bytes): `gpg`, `git`, `bash`, `sshd`. */
  name: string;
  /** Its argv joined with spaces, cut to the caller's limit; absent when /proc would not say. */
  command?: string;
}

export interface PeerProcess extends ProcessInfo {
  /** Real uid from /proc/PID/status. */
  uid?: number;
  /** Parent first, up to the session leader (the login shell) and what started it, or pid 1. */
  parents: ProcessInfo[];
}

export interface PeerLookupOptions {
  /** The whole lookup's budget; default 1000 ms. */
  timeoutMs?: number;
  /** Where ss, perl and python3 are looked for (PATH); default this process's. */
  env?: NodeJS.ProcessEnv;
  /** Default 8. */
  maxParents?: number;
  /** Characters kept of the peer's command line; default 1024. */
  maxCommandChars?: number;
  /** Characters kept of each parent's command line; default 256. */
  maxParentCommandChars?: number;
}

const DEFAULTS = {
  timeoutMs: 1000,
  maxParents: 8,
  maxCommandChars: 1024,
  maxParentCommandChars: 256,
};

/**
 * Lookups at once; more connections than this are not looked up. ss runs are shared (one at a
 * time per PATH, see sharedSs), so this bounds only memory and /proc reads.
 */
const MAX_CONCURRENT = 1024;
/** SO_PEERCRED helpers (one process per connection, where ss is missing) running at once. */
const MAX_HELPERS = 8;
/** ss prints one line per unix socket on the machine; beyond this the answer is not worth it. */
const MAX_SS_OUTPUT = 8 * 1024 * 1024;
/** A process with more open files than this is not searched for the socket. */
const MAX_FDS_SEARCHED = 4096;

let inFlight = 0;
let helpers = 0;

/** `socket:[12345]` → 12345. */
function socketInode(link: string): number | undefined {
  const m = /^socket:\[(\d{1,20})\]$/.exec(link);
  return m ? Number(m[1]) : undefined;
}

/**
 * The kernel fd behind an accepted net.Socket. `_handle.fd` is libuv's, present on every unix
 * platform Node supports; it is the only way to reach it without an addon.
 */
function socketFd(sock: net.Socket): number | undefined {
  const fd = (sock as unknown as { _handle?: { fd?: unknown } })._handle?.fd;
  return typeof fd === 'number' && Number.isInteger(fd) && fd >= 0 ? fd : undefined;
}

function run(
  file: string,
  args: string[],
  env: NodeJS.ProcessEnv,
  timeoutMs: number,
): Promise<string | undefined> {
  return new Promise((resolve) => {
    try {
      execFile(
        file,
        args,
        {
          env: { ...env, LC_ALL: 'C' },
          timeout: timeoutMs,
          killSignal: 'SIGKILL',
          maxBuffer: MAX_SS_OUTPUT,
          encoding: 'utf8',
        },
        (err, stdout) => resolve(err ? undefined : stdout),
      );
    } catch {
      resolve(undefined);
    }
  });
}

/**
 * From `ss -xpn` output: the inode of the socket connected to OURS and the pids ss says hold it.
 * A line is `u_str ESTAB 0 0 <local addr> <local inode> <peer addr> <peer inode> users:((…))`;
 * the peer's own line is the one whose peer inode is ours. Addresses may hold blanks and a comm
 * may hold `",pid=1,fd=3)`, so every pid found is only a candidate until /proc confirms it.
 */
export function parseSsPeers(
  output: string,
  ours: number,
): { inode: number; pids: number[] } | undefined {
  const line =
    /^u_(?:str|seq|dgr)\s+\S+\s+\d+\s+\d+\s+(.*?)\s(\d{1,20})\s+(.*?)\s(\d{1,20})(?:\s+users:\((.*)\))?\s*$/;
  for (const text of output.split('\n')) {
    const m = line.exec(text);
    if (!m || Number(m[4]) !== ours || Number(m[2]) === ours) continue;
    const pids = [...(m[5] ?? '').matchAll(/,pid=(\d{1,10}),fd=\d{1,10}\)/g)]
      .map((p) => Number(p[1]))
      .filter((pid) => pid > 0);
    return { inode: Number(m[2]), pids: [...new Set(pids)].slice(0, 16) };
  }
  return undefined;
}

/** Whether PID has socket INODE open (the check that makes ss's parsed answer trustworthy). */
async function holdsSocket(pid: number, inode: number): Promise<boolean> {
  let fds: string[];
  try {
    fds = await fs.readdir(`/proc/${pid}/fd`);
  } catch {
    return false;
  }
  const want = `socket:[${inode}]`;
  for (const fd of fds.slice(0, MAX_FDS_SEARCHED)) {
    const link = await fs.readlink(`/proc/${pid}/fd/${fd}`).catch(() => undefined);
    if (link === want) return true;
  }
  return false;
}

// One `ss -xpn` lists every unix socket on the machine, and it reads every process's fds to do
// so: under load (a hundred gpg processes connecting at once) one run per connection would cost
// more than the signatures. So a lookup joins the next run that has not started yet, and a run
// starts only when the previous one (for the same PATH) has ended: each run serves every socket
// accepted before it started, and at most one ss per PATH runs at a time, however many connect.
const queuedSs = new Map<string, Promise<string | undefined>>();
const runningSs = new Map<string, Promise<string | undefined>>();

function sharedSs(env: NodeJS.ProcessEnv, timeoutMs: number): Promise<string | undefined> {
  const key = env.PATH ?? '';
  const queued = queuedSs.get(key);
  if (queued) return queued;
  const previous = runningSs.get(key) ?? Promise.resolve(undefined);
  const next = previous.then(() => {
    queuedSs.delete(key);
    const r = run('ss', ['-xpn'], env, timeoutMs);
    runningSs.set(key, r);
    void r.then(() => {
      if (runningSs.get(key) === r) runningSs.delete(key);
    });
    return r;
  });
  queuedSs.set(key, next);
  return next;
}

async function peerViaSs(
  ours: number,
  env: NodeJS.ProcessEnv,
  timeoutMs: number,
): Promise<number | undefined> {
  const out = await sharedSs(env, timeoutMs);
  if (out === undefined) return undefined;
  const peer = parseSsPeers(out, ours);
  if (!peer) return undefined;
  // After a fork both processes hold the socket; the lowest pid is the one that made it.
  for (const pid of [...peer.pids].sort((a, b) => a - b)) {
    if (await holdsSocket(pid, peer.inode)) return pid;
  }
  return undefined;
}

// SO_PEERCRED: the pid that called connect(), as the kernel recorded it. The socket reaches the
// helper as its fd 3; it only reads the option and never the data.
const PEERCRED_HELPERS: [string, string[]][] = [
  [
    'perl',
    [
      '-MSocket',
      '-e',
      'open(my $s, "+<&=", 3) or exit 2; my $c = getsockopt($s, SOL_SOCKET, SO_PEERCRED) or exit 3; print unpack("i", $c), "\\n"',
    ],
  ],
  [
    'python3',
    [
      '-c',
      'import socket, struct; s = socket.socket(fileno=3); print(struct.unpack("3i", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]); s.detach()',
    ],
  ],
];

function peerViaHelper(
  sock: net.Socket,
  fd: number,
  helper: [string, string[]],
  env: NodeJS.ProcessEnv,
  timeoutMs: number,
): Promise<number | undefined> {
  return new Promise((resolve) => {
    // The fd number is only this socket while the socket is open; spawn dups it synchronously.
    if (sock.destroyed || socketFd(sock) !== fd) return resolve(undefined);
    let out = '';
    let child;
    try {
      // A plain fd, not the stream: handing spawn the net.Socket would stop its reading here.
      child = spawn(helper[0], helper[1], {
        env: { ...env, LC_ALL: 'C' },
        stdio: ['ignore', 'pipe', 'ignore', fd],
      });
    } catch {
      return resolve(undefined);
    }
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.stdout?.setEncoding('utf8');
    child.stdout?.on('data', (d: string) => {
      if (out.length < 64) out += d;
    });
    child.on('error', () => {
      clearTimeout(timer);
      resolve(undefined);
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      const m = /^(\d{1,10})\n?$/.exec(out);
      resolve(code === 0 && m && Number(m[1]) > 0 ? Number(m[1]) : undefined);
    });
  });
}

async function readCapped(path: string, maxBytes: number): Promise<Buffer | undefined> {
  let fh;
  try {
    fh = await fs.open(path, 'r');
    const buf = Buffer.alloc(maxBytes);
    let n = 0;
    while (n < maxBytes) {
      const { bytesRead } = await fh.read(buf, n, maxBytes - n, null);
      if (bytesRead === 0) break;
      n += bytesRead;
    }
    return buf.subarray(0, n);
  } catch {
    return undefined;
  } finally {
    await fh?.close().catch(() => {});
  }
}

interface Stat {
  name: string;
  ppid: number;
  session: number;
}

/** `/proc/PID/stat`: `pid (comm) state ppid pgrp session …`; comm may hold blanks and `)`. */
export function parseStat(text: string): Stat | undefined {
  const open = text.indexOf('(');
  const close = text.lastIndexOf(')');
  if (open < 0 || close < open) return undefined;
  const rest = text
    .slice(close + 1)
    .trim()
    .split(' ');
  const ppid = Number(rest[1]);
  const session = Number(rest[3]);
  if (!Number.isSafeInteger(ppid) || !Number.isSafeInteger(session)) return undefined;
  return { name: text.slice(open + 1, close), ppid, session };
}

/** argv as one line: NULs between arguments become blanks, cut to MAX characters. */
export function commandLine(raw: Buffer, max: number): string | undefined {
  const text = raw.toString('utf8').replace(/\0+$/, '').replace(/\0/g, ' ');
  if (text.length === 0) return undefined;
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

async function processInfo(
  pid: number,
  maxCommand: number,
): Promise<(ProcessInfo & Stat) | undefined> {
  const stat = await readCapped(`/proc/${pid}/stat`, 4096);
  const parsed = stat && parseStat(stat.toString('utf8'));
  if (!parsed) return undefined;
  // Argv beyond what is kept is never read: a command line can be megabytes.
  const raw = await readCapped(`/proc/${pid}/cmdline`, maxCommand * 4 + 4);
  const command = raw && commandLine(raw, maxCommand);
  return { pid, ...parsed, ...(command !== undefined ? { command } : {}) };
}

async function realUid(pid: number): Promise<number | undefined> {
  const status = await readCapped(`/proc/${pid}/status`, 16384);
  const m = status && /^Uid:\s+(\d+)/m.exec(status.toString('utf8'));
  return m ? Number(m[1]) : undefined;
}

async function describe(pid: number, o: typeof DEFAULTS): Promise<PeerProcess | undefined> {
  const self = await processInfo(pid, o.maxCommandChars);
  if (!self) return undefined;
  const uid = await realUid(pid);
  const parents: ProcessInfo[] = [];
  // Up to the session leader (the login shell) and the one that started it (sshd, tmux), since
  // that is where "who asked" stops meaning anything; init is never worth naming.
  let last = self.pid === self.session;
  let next = self.ppid;
  const seen = new Set([pid]);
  while (next > 1 && parents.length < o.maxParents && !seen.has(next)) {
    seen.add(next);
    const p = await processInfo(next, o.maxParentCommandChars);
    if (!p) break;
    parents.push({
      pid: p.pid,
      name: p.name,
      ...(p.command !== undefined ? { command: p.command } : {}),
    });
    if (last) break;
    last = p.pid === p.session;
    next = p.ppid;
  }
  return {
    pid,
    name: self.name,
    ...(self.command !== undefined ? { command: self.command } : {}),
    ...(uid !== undefined ? { uid } : {}),
    parents,
  };
}

/**
 * The process that connected SOCK (an accepted connection on a unix socket server), or undefined
 * when the kernel would not say in time. Start it on accept: the socket's fd is read at once.
 */
export function findPeerProcess(
  sock: net.Socket,
  opts: PeerLookupOptions = {},
): Promise<PeerProcess | undefined> {
  const o = {
    timeoutMs: opts.timeoutMs ?? DEFAULTS.timeoutMs,
    maxParents: opts.maxParents ?? DEFAULTS.maxParents,
    maxCommandChars: opts.maxCommandChars ?? DEFAULTS.maxCommandChars,
    maxParentCommandChars: opts.maxParentCommandChars ?? DEFAULTS.maxParentCommandChars,
  };
  const env = opts.env ?? process.env;
  const fd = socketFd(sock);
  if (fd === undefined || process.platform !== 'linux' || inFlight >= MAX_CONCURRENT) {
    return Promise.resolve(undefined);
  }
  let ours: number | undefined;
  try {
    // Synchronously, while the fd is certainly still this socket's.
    ours = socketInode(readlinkSync(`/proc/self/fd/${fd}`));
  } catch {
    ours = undefined;
  }
  if (ours === undefined) return Promise.resolve(undefined);
  const inode = ours;
  inFlight++;
  const started = Date.now();
  const left = () => Math.max(1, o.timeoutMs - (Date.now() - started));
  const lookup = (async () => {
    let pid = await peerViaSs(inode, env, left());
    // A flood must not fork-bomb: beyond MAX_HELPERS at once, no helper runs.
    if (pid === undefined && helpers < MAX_HELPERS) {
      helpers++;
      try {
        for (const helper of PEERCRED_HELPERS) {
          if (pid !== undefined) break;
          pid = await peerViaHelper(sock, fd, helper, env, left());
        }
      } finally {
        helpers--;
      }
    }
    return pid === undefined ? undefined : describe(pid, o);
  })();
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<undefined>((resolve) => {
    timer = setTimeout(() => resolve(undefined), o.timeoutMs);
    timer.unref();
  });
  return Promise.race([lookup.catch(() => undefined), deadline]).finally(() => {
    clearTimeout(timer);
    inFlight--;
  });
}

/**
 * BASE plus the process that connected SOCK (gpg, and what started it), as this machine reports
 * it (from a server, the holder shows it as that server's claim). Never rejects; without an answer
 * it is BASE.
 */
export function requesterWithPeer(
  base: Requester,
  sock: net.Socket,
  lookup: PeerLookupOptions | false | undefined,
): Promise<Requester> {
  if (lookup === false) return Promise.resolve({ ...base });
  return findPeerProcess(sock, lookup).then(
    (peer) => {
      if (!peer) return { ...base };
      const r: Requester = { ...base, pid: peer.pid, name: peer.name, parents: peer.parents };
      if (peer.uid !== undefined && peer.uid !== base.uid) {
        // Root on our 0600 socket: the facade's user name would be the wrong one.
        delete r.user;
        r.uid = peer.uid;
      }
      if (peer.command !== undefined) r.command = peer.command;
      return r;
    },
    () => ({ ...base }),
  );
}
