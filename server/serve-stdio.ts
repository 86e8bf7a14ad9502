// `keytether serve --stdio`: a facade whose tunnel is this process's stdin/stdout, which is what
// `keytether ssh` starts on the server over an SSH exec channel. stdout carries tunnel frames
// only; every message for a person goes to stderr (the workstation relays it).
//
// Several sessions for one socket path (two SSH logins to the same account) share it: the first
// serves the socket and listens on a private control socket beside it; later ones connect there
// and serve their own tunnel client to the first over that connection ("forwarding is serving a
// client"), so the first facade gets one more holder. When a session ends the others keep
// working; when the serving process goes away an attached one takes the socket over.

import { unlinkSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { Duplex } from 'node:stream';
import { serveTunnel, tunnelClient, type TunnelClient } from '../protocol/tunnel/index.js';
import { UserError } from '../system/user-error.js';
import {
  checkSocketPlace,
  connectOwnSocket,
  ensureSocketDir,
  listenAt,
  probeSocket,
  removeSocket,
} from '../system/unix-socket.js';
import { startFacade, type Facade } from './facade.js';
import { gnupgDirs, succeeds, type GnupgDirs } from './gnupg-dirs.js';
import { ensureNoAutostart, importCertificates, removeOwnNoAutostart } from './gnupg-setup.js';
import { writeGitSignProgram } from './git-sign.js';
import { HolderSet } from './holder-set.js';
import { isFinalClose, linger, SESSION_ENDED, STOPPED } from './linger.js';
import { serveSshAgentBeside, sshAgentSocketPath } from './ssh-agent-socket.js';

export interface ServeStdioOptions {
  socket?: string;
  importKeys?: boolean;
  replace?: boolean;
  /** Serve an ssh-agent socket beside the gpg-agent one (default true; `--no-ssh-agent`). */
  sshAgent?: boolean;
  /**
   * After the link ends without a deliberate close, keep serving the socket this long with no
   * holder (gpg gets "No agent running" at once) so a reconnecting session can attach to it.
   */
  lingerMs?: number;
  /** `keytether/<version>`, announced in the tunnel hello. */
  software: string;
  input?: NodeJS.ReadableStream;
  output?: NodeJS.WritableStream;
  log?: (line: string) => void;
  env?: NodeJS.ProcessEnv;
}

const SYSTEMD_UNITS =
  'gpg-agent.socket gpg-agent-extra.socket gpg-agent-browser.socket gpg-agent-ssh.socket gpg-agent.service';

/** How often a session re-tries to serve or attach when the serving session changes under it. */
const MAX_CLAIM_ATTEMPTS = 5;

/** Closes that are the workstation's deliberate doing, or ours, not failures (exit status 0). */
function isCleanClose(reason: string): boolean {
  return (
    reason === 'the workstation closed the connection' ||
    reason.startsWith('the workstation closed the tunnel:') ||
    reason === STOPPED
  );
}

function exitStatus(reason: string): number {
  if (!isCleanClose(reason)) throw new UserError(`the tunnel to the workstation closed: ${reason}`);
  return 0;
}

/** The private socket a later session for the same path finds the serving one by. */
export function controlSocketPath(socketPath: string): string {
  return `${socketPath}.kt-ctl`;
}

async function occupiedMessage(socketPath: string, env: NodeJS.ProcessEnv): Promise<string> {
  if (await succeeds('systemctl', ['--user', 'is-active', '--quiet', 'gpg-agent.socket'], env)) {
    return (
      `a gpg-agent started by systemd socket activation is listening on ${socketPath}; ` +
      `free it with 'systemctl --user mask --now ${SYSTEMD_UNITS}' and try again`
    );
  }
  return (
    `a gpg-agent is already listening on ${socketPath}; stop it with 'gpgconf --kill gpg-agent' ` +
    `(or pass --replace to do that) and try again`
  );
}

type Role = 'serve' | 'attach';

/** Attaches to a keytether session on the path, or makes the path free for us, or explains. */
async function claimPath(socketPath: string, replace: boolean, env: NodeJS.ProcessEnv) {
  const ctl = controlSocketPath(socketPath);
  // Another user's control socket there would be handed this user's holder: refused, as is a
  // socket directory others can write to.
  await checkSocketPlace(ctl);
  await checkSocketPlace(socketPath);
  if ((await probeSocket(ctl)) === 'live') return 'attach' satisfies Role;
  let state = await probeSocket(socketPath);
  if (state === 'live' && replace) {
    await succeeds('gpgconf', ['--kill', 'gpg-agent'], env);
    state = await probeSocket(socketPath);
  }
  if (state === 'live') throw new UserError(await occupiedMessage(socketPath, env));
  if (state === 'not-a-socket') {
    throw new UserError(
      `${socketPath} exists and is not a socket; move it away or choose another path with --socket`,
    );
  }
  if (state === 'stale') await removeSocket(socketPath);
  await removeSocket(ctl);
  return 'serve' satisfies Role;
}

interface Session {
  socketPath: string;
  ctlPath: string;
  /** The server's GnuPG home, whose gpg.conf gets keytether's `no-autostart` while served. */
  homedir: string;
  own: TunnelClient;
  software: string;
  log: (line: string) => void;
  /** Resolves once this session's tunnel is up and the server's GnuPG is prepared. */
  up: () => Promise<void>;
  announce: () => void;
  stopped: Promise<void>;
  lingerMs: number | undefined;
  sshAgent: boolean;
  /** The ssh-agent socket announced after `ready:`, once one serves this session. */
  sshAgentPath: string | undefined;
}

function isAddrInUse(e: unknown): boolean {
  return (e as NodeJS.ErrnoException | undefined)?.code === 'EADDRINUSE';
}

/** Serves the socket; the holders are this session's and those of sessions that attach. */
async function runServing(s: Session): Promise<number | 'retry'> {
  const set = new HolderSet();
  const attached = new Set<TunnelClient>();
  let closing = false;
  /** Why the attached session that left last went: a lingering facade ends with a clean one. */
  let lastLeft: string | undefined;
  let control: net.Server;
  try {
    // The control socket doubles as the lock: whoever binds it serves the agent socket.
    control = await listenAt(s.ctlPath, (sock) => {
      sock.on('error', () => sock.destroy());
      if (closing) {
        sock.destroy();
        return;
      }
      const tc = tunnelClient(sock, { software: s.software });
      attached.add(tc);
      void tc.closed.then(({ reason }) => {
        attached.delete(tc);
        lastLeft = reason;
      });
      tc.ready.then(
        () => {
          if (closing) return tc.close('the serving session ended');
          let remove: () => void;
          try {
            remove = set.add(tc);
          } catch {
            // The set is full; throwing here would be an unhandled rejection that ends the process.
            return tc.close('too many sessions');
          }
          void tc.closed.then(remove);
        },
        () => {},
      );
    });
  } catch (e) {
    if (isAddrInUse(e)) return 'retry';
    throw e;
  }
  const removeAtExit = () => {
    for (const p of [s.socketPath, s.ctlPath]) {
      try {
        unlinkSync(p);
      } catch {
        // Already gone.
      }
    }
  };
  process.on('exit', removeAtExit);
  let facade: Facade | undefined;
  let sshAgent: { close(): Promise<void> } | undefined;
  try {
    facade = await startFacade({
      socketPath: s.socketPath,
      holder: set,
      front: 'ssh',
      payloadDir: s.homedir,
    });
    await s.up();
    // Over the same set: attached sessions serve it too, and it lingers with the gpg socket.
    if (s.sshAgent) {
      sshAgent = await serveSshAgentBeside(s.socketPath, s.homedir, set, s.log);
      s.sshAgentPath = sshAgent ? sshAgentSocketPath(s.socketPath) : undefined;
    }
    const removeOwn = set.add(s.own);
    void s.own.closed.then(removeOwn);
    s.announce();
    const { reason } = await s.own.closed;
    if (set.size > 0) {
      s.log(`this session ended; ${s.socketPath} stays up for the other sessions using it`);
      await Promise.race([new Promise<void>((r) => set.onEmpty(r)), s.stopped]);
    }
    if (s.lingerMs !== undefined && !isFinalClose(reason)) {
      await linger({ lingerMs: s.lingerMs, stopped: s.stopped }, set, () => lastLeft);
      return 0;
    }
    return exitStatus(reason);
  } finally {
    closing = true;
    // Attached sessions notice and take the socket over themselves, and whichever serves last
    // cleans up gpg.conf.
    const last = attached.size === 0;
    for (const tc of attached) tc.close('the serving session ended');
    await facade?.close();
    await sshAgent?.close();
    // Before the control socket goes: while it is bound no new session can start serving, so a
    // session starting now adds the line again rather than seeing this one about to go.
    if (last) await restoreGpgConf(s);
    await new Promise<void>((r) => control.close(() => r()));
    await removeSocket(s.ctlPath);
    process.off('exit', removeAtExit);
  }
}

async function restoreGpgConf(s: Session): Promise<void> {
  try {
    if (await removeOwnNoAutostart(s.homedir)) {
      s.log(`removed the 'no-autostart' keytether added to ${path.join(s.homedir, 'gpg.conf')}`);
    }
  } catch (e) {
    s.log(
      `could not remove the 'no-autostart' keytether added to ${path.join(s.homedir, 'gpg.conf')} (${(e as Error).message}); delete it and the comment above it by hand`,
    );
  }
}

/** Lends this session's holder to the session serving the socket. */
async function runAttached(s: Session): Promise<number | 'retry'> {
  await s.up();
  const sock = await connectOwnSocket(s.ctlPath);
  if (!sock) return 'retry';
  sock.on('error', () => sock.destroy());
  const handle = serveTunnel(s.own, sock, {
    software: s.software,
    // Unsubscribed when this link closes: a session that re-attaches must not pile up listeners.
    onInventoryChange: (changed) => s.own.on('inventory', () => changed()),
  });
  const ownClosed = s.own.closed.then((c) => ({ own: c.reason }));
  const linked = await Promise.race([
    handle.ready.then(() => true),
    handle.closed.then(() => false),
    ownClosed,
  ]);
  if (linked === false) return 'retry';
  if (linked !== true) {
    handle.close(SESSION_ENDED);
    return exitStatus(linked.own);
  }
  const sshPath = sshAgentSocketPath(s.socketPath);
  s.sshAgentPath = s.sshAgent && (await probeSocket(sshPath)) === 'live' ? sshPath : undefined;
  s.announce();
  const ended = await Promise.race([ownClosed, handle.closed.then(() => null)]);
  if (ended === null) return 'retry';
  // A lingering serving facade (--linger) tells a stop from a dropped link by this reason.
  handle.close(isFinalClose(ended.own) ? SESSION_ENDED : 'the link to the workstation dropped');
  return exitStatus(ended.own);
}

export async function serveStdio(opts: ServeStdioOptions): Promise<number> {
  const env = opts.env ?? process.env;
  const log = opts.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  // A lingering facade outlives the SSH connection that gave it stderr: a write there failing
  // must not end the process.
  if (opts.lingerMs !== undefined && opts.log === undefined) process.stderr.on('error', () => {});
  const input = opts.input ?? process.stdin;
  const output = opts.output ?? process.stdout;

  const dirs: GnupgDirs = await gnupgDirs(env);
  const socketPath = path.resolve(opts.socket ?? dirs.agentSocket);

  // Refusals come before the tunnel is even looked at, so they are immediate.
  let role = await claimPath(socketPath, opts.replace ?? false, env);
  if (role === 'serve') await ensureSocketDir(socketPath);

  const own = tunnelClient(Duplex.from({ readable: input, writable: output }), {
    software: opts.software,
  });
  let ownReason: string | undefined;
  void own.closed.then((c) => (ownReason = c.reason));
  let resolveStopped!: () => void;
  const stopped = new Promise<void>((r) => (resolveStopped = r));
  const onSignal = () => {
    resolveStopped();
    own.close(STOPPED);
  };
  const signals: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];
  for (const sig of signals) process.on(sig, onSignal);

  let prepared: Promise<void> | undefined;
  const up = () =>
    (prepared ??= (async () => {
      const closedFirst = await Promise.race([
        own.ready.then(() => null),
        own.closed.then((c) => c.reason),
      ]);
      if (closedFirst !== null) {
        throw new UserError(`the tunnel to the workstation did not come up: ${closedFirst}`);
      }
      if (await ensureNoAutostart(dirs.homedir)) {
        log(
          `added 'no-autostart' to ${path.join(dirs.homedir, 'gpg.conf')} so gpg never starts ` +
            `a local gpg-agent over this socket; it is removed when the last session ends`,
        );
      }
      // git on this server clear-signs through the shim once the user points gpg.program at it;
      // keytether never edits their git config, so it says how.
      const gitSign = await writeGitSignProgram(dirs.homedir).catch(() => undefined);
      if (gitSign) {
        log(
          `git: to clear-sign commits here, run 'git config --global gpg.program ${gitSign}' ` +
            `(or pass -c gpg.program=${gitSign})`,
        );
      }
      if (opts.importKeys) {
        const inv = await own.inventory();
        if (inv.certificates.length > 0) {
          const r = await importCertificates(inv.certificates, env);
          if (r.ok) log(`imported ${inv.certificates.length} public key(s) into ${dirs.homedir}`);
          else log(`importing the workstation's public keys failed: ${r.detail ?? 'gpg failed'}`);
        }
      }
    })());
  let announced = false;
  const announce = () => {
    if (!announced) log(`ready: ${socketPath}`);
    else log(`now serving through ${socketPath} again`);
    if (session.sshAgentPath !== undefined) log(`ssh-agent: ${session.sshAgentPath}`);
    announced = true;
  };
  const session: Session = {
    socketPath,
    ctlPath: controlSocketPath(socketPath),
    homedir: dirs.homedir,
    own,
    software: opts.software,
    log,
    up,
    announce,
    stopped,
    lingerMs: opts.lingerMs,
    sshAgent: opts.sshAgent ?? true,
    sshAgentPath: undefined,
  };

  try {
    for (let attempt = 1; ; attempt++) {
      const result = role === 'serve' ? await runServing(session) : await runAttached(session);
      if (result !== 'retry') return result;
      if (ownReason !== undefined) return exitStatus(ownReason);
      if (attempt >= MAX_CLAIM_ATTEMPTS) {
        throw new UserError(
          `${socketPath} kept changing hands while this session tried to serve it; try again`,
        );
      }
      role = await claimPath(socketPath, false, env);
      if (role === 'serve') await ensureSocketDir(socketPath);
    }
  } finally {
    own.close(STOPPED);
    for (const sig of signals) process.off(sig, onSignal);
    // stdin would otherwise keep the process alive after a clean close.
    if (input === process.stdin) process.stdin.destroy();
  }
}
