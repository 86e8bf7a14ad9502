// The server-side ssh-agent: a unix socket for stock ssh, ssh-add and ssh-keygen (SSH_AUTH_SOCK),
// served by the one ssh-agent front (protocol/ssh-agent) over the same KeyHolder as the gpg-agent
// socket, so signatures go to the workstation through the same tunnel, policy and audit. Beside
// it, an env file a login shell can source, since nothing else tells a shell where the socket is.

import { rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { KeyHolder, Requester } from '../protocol/keyholder.js';
import { serveSshAgent, type SshAgentEvent } from '../protocol/ssh-agent/index.js';
import { requesterWithPeer, type PeerLookupOptions } from '../system/peer-process.js';
import { probeSocket, removeSocket } from '../system/unix-socket.js';
import { localRequester } from './facade.js';
import { serveSocket, type SocketService } from './socket-service.js';

/** Beside the gpg-agent socket, in its owner-only directory (gpg-agent's own is `.ssh`). */
export function sshAgentSocketPath(gpgSocketPath: string): string {
  return `${gpgSocketPath}.kt-ssh`;
}

/** The file a login shell sources for SSH_AUTH_SOCK: `. ~/.gnupg/keytether-ssh-agent.env`. */
export function sshAgentEnvPath(gnupgHome: string): string {
  return path.join(gnupgHome, 'keytether-ssh-agent.env');
}

export interface SshAgentSocketOptions {
  socketPath: string;
  holder: KeyHolder;
  front?: Requester['front'];
  peerLookup?: PeerLookupOptions | false;
  onEvent?: (e: SshAgentEvent) => void;
}

export type SshAgentSocket = SocketService;

/**
 * Serves the ssh-agent socket at a path that is free or holds a stale socket. A live listener
 * or a file there is not ours to take: `{ refused }` with the reason, for the caller's log.
 */
export async function startSshAgentSocket(
  opts: SshAgentSocketOptions,
): Promise<SshAgentSocket | { refused: string }> {
  const state = await probeSocket(opts.socketPath);
  if (state === 'live') return { refused: `something is already listening on ${opts.socketPath}` };
  if (state === 'not-a-socket') return { refused: `${opts.socketPath} exists and is not a socket` };
  if (state === 'stale') await removeSocket(opts.socketPath);
  const requester = localRequester(opts.front ?? 'ssh');
  return serveSocket(opts.socketPath, (sock) => {
    // Looked up on the first signature only: `ssh-add -l` needs no requester.
    let who: Promise<Requester> | undefined;
    return serveSshAgent(sock, {
      holder: opts.holder,
      requester: () => (who ??= requesterWithPeer(requester, sock, opts.peerLookup)),
      ...(opts.onEvent ? { onEvent: opts.onEvent } : {}),
    });
  });
}

function shellQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

/** Writes FILE so that `. FILE` sets SSH_AUTH_SOCK to SOCKET (ssh-agent -s's own format). */
export async function writeSshAgentEnv(file: string, socket: string): Promise<void> {
  const text = `SSH_AUTH_SOCK=${shellQuote(socket)}; export SSH_AUTH_SOCK;\n`;
  const aside = `${file}.${process.pid}.tmp`;
  await writeFile(aside, text, { mode: 0o600 });
  await rename(aside, file);
}

export async function removeSshAgentEnv(file: string): Promise<void> {
  await rm(file, { force: true });
}

/**
 * `serve --stdio`'s ssh-agent: the socket beside GPG_SOCKET over HOLDER, and the env file in
 * GNUPG_HOME naming it. Never fails the session: a path that is taken is one line in LOG and no
 * socket. Closing removes both.
 */
export async function serveSshAgentBeside(
  gpgSocket: string,
  gnupgHome: string,
  holder: KeyHolder,
  log: (line: string) => void,
): Promise<{ socketPath: string; close(): Promise<void> } | undefined> {
  const socketPath = sshAgentSocketPath(gpgSocket);
  let started: SshAgentSocket | { refused: string };
  try {
    started = await startSshAgentSocket({ socketPath, holder });
  } catch (e) {
    started = { refused: (e as Error).message };
  }
  if ('refused' in started) {
    log(`no ssh-agent socket this session: ${started.refused}`);
    return undefined;
  }
  const envFile = sshAgentEnvPath(gnupgHome);
  const wrote = await writeSshAgentEnv(envFile, socketPath).then(
    () => true,
    (e: unknown) => {
      log(
        `could not write ${envFile} (${(e as Error).message}); set SSH_AUTH_SOCK=${socketPath} yourself`,
      );
      return false;
    },
  );
  if (wrote) {
    log(
      `ssh: for ssh, git and ssh-add in a shell here, run '. ${envFile}' (or add it to ~/.profile)`,
    );
  }
  const socket = started;
  return {
    socketPath,
    async close() {
      await socket.close();
      if (wrote) await removeSshAgentEnv(envFile).catch(() => {});
    },
  };
}
