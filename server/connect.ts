// `keytether connect`: a facade whose holder is reached through a relay. The facade shows the
// relay the token's public part only; the relay routes the WebSocket's binary messages to the
// holder. Inside them runs the sealed channel (server/seal.ts: TLS 1.3 pinned to the token's
// holder key, then proof of the token's secret), and the tunnel runs over that unchanged. With a command, a private GNUPGHOME is made for
// it (public keys, no-autostart, our socket) and removed again however the command ends.

import { commandEnvironment, withGitSigning } from './command-env.js';
import { writeGitSignProgram } from './git-sign.js';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import fs from 'node:fs/promises';
import { constants } from 'node:os';
import path from 'node:path';
import { Duplex } from 'node:stream';
import { UserError } from '../system/user-error.js';
import { ErrorCode } from '../protocol/gpg-error.js';
import { relayEndpoint, type RelayTrust } from '../protocol/relay/endpoint.js';
import { parseToken } from '../protocol/token.js';
import { tunnelClient, type TunnelClient } from '../protocol/tunnel/index.js';
import { ensureSocketDir, probeSocket, removeSocket } from '../system/unix-socket.js';
import { startFacade, type Facade } from './facade.js';
import { openFacadeSocket, refusal, RelayRefusal } from './facade-socket.js';
import { RelayHolder } from './relay-holder.js';
import { sealFacadeStream } from './seal.js';
import { gnupgDirs } from './gnupg-dirs.js';
import {
  startSshAgentSocket,
  sshAgentSocketPath,
  type SshAgentSocket,
} from './ssh-agent-socket.js';
import { ensureNoAutostart, importCertificates } from './gnupg-setup.js';

export interface ConnectOptions {
  relay: string;
  /** The full token (or its public part); only the public part leaves this process. */
  token: string;
  socket?: string;
  /** Serve an ssh-agent socket beside the gpg-agent one (default true; `--no-ssh-agent`). */
  sshAgent?: boolean;
  /** Run this with a private GNUPGHOME, then exit with its status. */
  command?: string[];
  software: string;
  insecure?: boolean;
  /** How to trust a wss:// relay's certificate (default: the system CAs). */
  trust?: RelayTrust | undefined;
  env?: NodeJS.ProcessEnv;
  /** Lines for the user (stderr); `ready:` goes to `out`. */
  log?: (line: string) => void;
  out?: (line: string) => void;
}

const MIN_BACKOFF_MS = 250;
/** For a relay that refused this facade (too many connections, a bad token…). */
const MAX_BACKOFF_MS = 30_000;
// While only the holder is missing, the relay answers at once and cheaply; retrying often means
// the socket works again within a second or two of the holder coming back.
const MAX_HOLDER_WAIT_BACKOFF_MS = 1_000;
// A relay that is not there (refused, reset, gone) costs nothing to ask again: with this cap the
// facade is back within about 5 s of a relay restart, however long the relay was down.
const MAX_UNREACHABLE_BACKOFF_MS = 2_500;

interface TempHome {
  home: string;
  socket: string;
  cleanup(): Promise<void>;
}

/** A private GNUPGHOME under the system temp dir; its agent socket path as gpg will look for it. */
async function makeTempHome(env: NodeJS.ProcessEnv): Promise<TempHome> {
  // Short and under /tmp: unix socket paths are limited to ~107 bytes.
  const home = await fs.mkdtemp('/tmp/ktc-');
  await fs.chmod(home, 0o700);
  const created: string[] = [home];
  const cleanup = async () => {
    for (const p of created.reverse()) await fs.rm(p, { recursive: true, force: true });
  };
  try {
    const dirs = await gnupgDirs({ ...env, GNUPGHOME: home });
    const socket = dirs.agentSocket;
    // gpg may put the socket under /run/user/<uid>/gnupg/d.<hash>; that directory is ours too.
    const dir = path.dirname(socket);
    if (!existsSync(dir)) {
      await ensureSocketDir(socket);
      created.push(dir);
    }
    await ensureNoAutostart(home);
    return { home, socket, cleanup };
  } catch (e) {
    await cleanup();
    throw e;
  }
}

/** Resolves once STREAM has closed, or after MS. */
function streamClosed(stream: Duplex, ms: number): Promise<void> {
  if (stream.destroyed) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    stream.once('close', () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

function describe(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** Runs the facade until a signal (no command) or until COMMAND exits; resolves to the status. */
export async function runConnect(opts: ConnectOptions): Promise<number> {
  const env = opts.env ?? process.env;
  const log = opts.log ?? ((l: string) => process.stderr.write(`${l}\n`));
  const out = opts.out ?? ((l: string) => process.stdout.write(`${l}\n`));
  const parsed = parseToken(opts.token.trim());
  if (!parsed.ok) throw new UserError(`the token is not usable: ${parsed.error}`);
  const publicPart = parsed.token.publicPart;
  const hpk = parsed.token.hpk;
  const secret = parsed.token.secret;
  if (!secret) {
    throw new UserError(
      'the token has no secret part; pass the whole token (kt1.<payload>.<sig>.<secret>) as printed by `keytether token create`',
    );
  }
  const endpoint = relayEndpoint(opts.relay, 'facade', opts.insecure ?? false);
  if (!endpoint.ok) throw new UserError(endpoint.error);
  const url = endpoint.url;

  const holder = new RelayHolder();
  let stopping = false;
  let retryTimer: NodeJS.Timeout | undefined;
  let permanentFailure: string | undefined;
  let wakeStop!: () => void;
  const stopRequested = new Promise<void>((r) => (wakeStop = r));

  const attach = async (): Promise<TunnelClient> => {
    const stream = await openFacadeSocket(url, publicPart, opts.trust);
    let sealed;
    try {
      sealed = await sealFacadeStream(stream, {
        hpk,
        secret,
        closeReason: () => stream.closeInfo?.reason || undefined,
        onFailure: (reason) => stream.closeWith?.(reason),
      });
    } catch (e) {
      const info = stream.closeInfo;
      if (info && info.code !== 1000 && info.code !== 1005)
        throw refusal(info.code, info.reason, url);
      throw e;
    }
    const tunnel = tunnelClient(sealed, { software: opts.software });
    holder.set(tunnel);
    const up = await Promise.race([
      // A failed handshake rejects `ready` as soon as `closed` resolves: both mean "not up".
      tunnel.ready.then(
        () => null,
        (e: unknown) => describe(e),
      ),
      tunnel.closed.then((c) => c.reason),
    ]);
    if (up !== null) {
      // The holder's reason travels in the relay's close frame, which can arrive just after the
      // TLS stream inside it ended; it says more than "closed before the handshake".
      await streamClosed(stream, 2_000);
      const info = stream.closeInfo;
      if (info && info.code !== 1000 && info.code !== 1005)
        throw refusal(info.code, info.reason, url);
      const why = info?.reason && info.reason !== 'facade done' ? info.reason : up;
      throw new Error(`the tunnel to the holder did not come up: ${why}`);
    }
    void tunnel.closed.then(({ reason }) => onDrop(tunnel, stream.closeInfo, reason));
    return tunnel;
  };

  let attempt = 0;
  const reconnect = () => {
    retryTimer = undefined;
    if (stopping) return;
    attach().then(
      () => {
        attempt = 0;
        log('reconnected to the holder through the relay');
      },
      (e: unknown) => {
        if (e instanceof RelayRefusal && e.permanent) {
          permanentFailure = e.message;
          wakeStop();
          return;
        }
        schedule(e);
      },
    );
  };
  const schedule = (e: unknown) => {
    if (stopping) return;
    const unreachable = !(e instanceof RelayRefusal) || e.code === 1006 || e.code === 1001;
    const cap = unreachable
      ? MAX_UNREACHABLE_BACKOFF_MS
      : e.code === 4005
        ? MAX_HOLDER_WAIT_BACKOFF_MS
        : MAX_BACKOFF_MS;
    const ceiling = Math.min(cap, MIN_BACKOFF_MS * 2 ** Math.min(attempt++, 20));
    const delay = Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
    if (attempt === 1) log(`${describe(e)}; retrying`);
    retryTimer = setTimeout(reconnect, delay);
  };
  const onDrop = (
    tunnel: TunnelClient,
    info: { code: number; reason: string } | undefined,
    reason: string,
  ) => {
    if (stopping || (holder.current !== undefined && holder.current !== tunnel)) return;
    // A holder that ended the stream (e.g. it saw a broken sealed record) says why in the reason.
    const why =
      info && info.code !== 1000
        ? refusal(info.code, info.reason, url).message
        : info?.reason && info.reason !== 'facade done'
          ? `${reason} (the holder said: ${info.reason})`
          : reason;
    schedule(new Error(`lost the holder: ${why}`));
  };

  // First connection: a refusal here is the user's to fix, so it ends the command.
  let first: TunnelClient;
  try {
    first = await attach();
  } catch (e) {
    holder.current?.close();
    secret.fill(0);
    throw new UserError(describe(e));
  }

  let temp: TempHome | undefined;
  let facade: Facade | undefined;
  let sshAgent: SshAgentSocket | undefined;
  const signals: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];
  let child: ReturnType<typeof spawn> | undefined;
  let interrupted: NodeJS.Signals | undefined;
  const onSignal = (sig: NodeJS.Signals) => {
    interrupted ??= sig;
    if (child && child.exitCode === null) child.kill(sig);
    else wakeStop();
  };
  for (const s of signals) process.on(s, onSignal);
  try {
    let socketPath: string;
    let childEnv: NodeJS.ProcessEnv | undefined;
    if (opts.command && opts.command.length > 0) {
      temp = await makeTempHome(env);
      socketPath = temp.socket;
      // git in CMD signs through keytether git-sign, so the holder sees what it signs.
      const gitSign = await writeGitSignProgram(temp.home);
      childEnv = withGitSigning(
        {
          ...commandEnvironment(env, opts.token),
          GNUPGHOME: temp.home,
          // The same shim for files: "$KEYTETHER_GIT_SIGN" --detach-sign FILE is clear-signed.
          KEYTETHER_GIT_SIGN: gitSign,
        },
        gitSign,
      );
      delete childEnv.GPG_AGENT_INFO;
      const inv = await first.inventory();
      if (inv.certificates.length > 0) {
        const r = await importCertificates(inv.certificates, childEnv);
        if (!r.ok) {
          throw new UserError(
            `importing the token's public keys failed: ${r.detail ?? 'gpg failed'}`,
          );
        }
      }
    } else {
      const dirs = await gnupgDirs(env);
      socketPath = path.resolve(opts.socket ?? dirs.agentSocket);
      const state = await probeSocket(socketPath);
      if (state === 'live') {
        throw new UserError(
          `a gpg-agent is already listening on ${socketPath}; stop it with 'gpgconf --kill gpg-agent' or choose another path with --socket`,
        );
      }
      if (state === 'not-a-socket') {
        throw new UserError(
          `${socketPath} exists and is not a socket; move it away or choose another path with --socket`,
        );
      }
      if (state === 'stale') await removeSocket(socketPath);
      await ensureSocketDir(socketPath);
    }
    facade = await startFacade({
      socketPath,
      holder,
      front: 'relay',
      ...(temp ? { payloadDir: temp.home } : {}),
      onEvent: (e) => {
        // Refusals from the holder carry a one-line reason that gpg itself does not print.
        if (e.error && e.error.code !== ErrorCode.CANCELED && e.error.detail) {
          log(`${e.command}: ${e.error.message}`);
        }
      },
    });
    if (opts.sshAgent !== false) {
      const started = await startSshAgentSocket({
        socketPath: sshAgentSocketPath(socketPath),
        holder,
        front: 'relay',
        // The holder's refusal (a token without ssh-sign) is one line ssh itself does not print.
        onEvent: (e) => {
          if (e.kind === 'refused') log(`ssh-agent: ${e.detail}`);
        },
      });
      if ('refused' in started) log(`no ssh-agent socket: ${started.refused}`);
      else sshAgent = started;
    }
    if (childEnv && sshAgent) childEnv.SSH_AUTH_SOCK = sshAgent.socketPath;
    // With a command, stdout belongs to the command (e.g. `gpg --armor --detach-sign`).
    (childEnv ? log : out)(`ready: ${socketPath}`);
    if (sshAgent) (childEnv ? log : out)(`ssh-agent: ${sshAgent.socketPath}`);
    if (childEnv) {
      log(
        'git in the command signs through keytether git-sign (gpg.program set via GIT_CONFIG_*); ' +
          'for files use "$KEYTETHER_GIT_SIGN" in place of gpg',
      );
    }

    if (childEnv && opts.command) {
      // A signal during setup: the command never starts, and the cleanup below still runs.
      if (interrupted) return 128 + (constants.signals[interrupted] ?? 1);
      const [cmd, ...args] = opts.command as [string, ...string[]];
      const c = spawn(cmd, args, { env: childEnv, stdio: 'inherit' });
      child = c;
      return await new Promise<number>((resolve, reject) => {
        c.on('error', (e) => reject(new UserError(`cannot run ${cmd}: ${e.message}`)));
        c.on('exit', (code, signal) => {
          if (code !== null) resolve(code);
          else resolve(128 + (signal ? (constants.signals[signal] ?? 1) : 1));
        });
      });
    }

    await stopRequested;
    if (permanentFailure) throw new UserError(permanentFailure);
    return 0;
  } finally {
    stopping = true;
    if (retryTimer) clearTimeout(retryTimer);
    for (const s of signals) process.off(s, onSignal);
    holder.current?.close('stopped on the server');
    await facade?.close();
    await sshAgent?.close();
    await temp?.cleanup();
    secret.fill(0);
  }
}
