// One SSH handshake made with ssh2 but trusting, refusing and authenticating like OpenSSH's
// `ssh`: known_hosts decides the host key, the user's agent and identity files log in, and every
// failure becomes one sentence that says what to do. Over a socket, a ProxyCommand, or a channel
// of a jump host (connect.ts chooses).

import type { Duplex } from 'node:stream';
import ssh2 from 'ssh2';
import type { AuthMethod, Client, ConnectConfig } from 'ssh2';
import { UserError } from '../../system/user-error.js';
import type { SshTarget } from './config.js';
import { CountingAgent, IdentityFileAgent } from './identity-agent.js';
import type { AskPassphrase, UnlockedIdentities } from './identity-agent.js';
import { startProxyCommand, type ProxyProcess } from './proxy-command.js';
import {
  appendKnownHost,
  blobKeyType,
  checkHostKey,
  knownHostKeyTypes,
  knownHostsName,
} from './known-hosts.js';

export interface ConnectSshOptions {
  /** `--accept-new`: trust an unknown host key and record it in the first UserKnownHostsFile. */
  acceptNew?: boolean;
  /** Asked for an encrypted identity's passphrase (keytether ssh: the pinentry). */
  askPassphrase?: AskPassphrase;
  /** Keeps identities unlocked across connections (keytether ssh --reconnect asks once). */
  unlocked?: UnlockedIdentities;
  /** Where a ProxyCommand's stderr goes: the user's terminal (default) or nowhere. */
  proxyStderr?: 'inherit' | 'ignore';
  /** Network handshake limit; the clock stops while a passphrase is being asked. Default 20 s
   * or ConnectTimeout. */
  readyTimeoutMs?: number;
  /** SSH-level keepalives; default 15 s × 3 or ServerAliveInterval/ServerAliveCountMax. */
  keepaliveIntervalMs?: number;
  keepaliveCountMax?: number;
  /** Informational sentences, e.g. that a host key was recorded. */
  onNotice?: (sentence: string) => void;
  debug?: (message: string) => void;
}

// ssh2's host key algorithms, strongest first; reordered so types already in known_hosts come
// first, otherwise a server with several host keys could present one we have no record of.
const HOST_KEY_ALGORITHMS: Record<string, string[]> = {
  'ssh-ed25519': ['ssh-ed25519'],
  'ecdsa-sha2-nistp256': ['ecdsa-sha2-nistp256'],
  'ecdsa-sha2-nistp384': ['ecdsa-sha2-nistp384'],
  'ecdsa-sha2-nistp521': ['ecdsa-sha2-nistp521'],
  'ssh-rsa': ['rsa-sha2-512', 'rsa-sha2-256', 'ssh-rsa'],
};

const lastErrors = new WeakMap<Client, Error>();

/** Records what took CLIENT's connection down, for sshLastError (e.g. a jump host's failure). */
export function setSshLastError(client: Client, err: Error): void {
  lastErrors.set(client, err);
}

/** The last error a connected client reported (ssh2 always follows it with 'close'). */
export function sshLastError(client: Client): Error | undefined {
  return lastErrors.get(client);
}

function keyTypeLabel(type: string): string {
  if (type === 'ssh-ed25519') return 'ED25519';
  if (type.startsWith('ecdsa-')) return 'ECDSA';
  if (type === 'ssh-rsa') return 'RSA';
  return type;
}

function where(t: SshTarget): string {
  return t.port === 22 ? t.hostName : `${t.hostName} port ${t.port}`;
}

function hostKeyAlgorithms(knownTypes: string[]): string[] {
  const preferred = knownTypes.flatMap((t) => HOST_KEY_ALGORITHMS[t] ?? []);
  const all = Object.values(HOST_KEY_ALGORITHMS).flat();
  return [...new Set([...preferred, ...all])];
}

export async function handshake(
  target: SshTarget,
  opts: ConnectSshOptions,
  sock: Duplex | undefined,
): Promise<Client> {
  const lookupName = target.hostKeyAlias ?? target.hostName;
  const checkFiles = [...target.knownHostsFiles, ...target.globalKnownHostsFiles];
  const knownTypes = await knownHostKeyTypes(checkFiles, lookupName, target.port);

  const systemAgent =
    target.identityAgent && !target.identitiesOnly
      ? new CountingAgent(target.identityAgent)
      : undefined;
  const timer = handshakeTimer(opts.readyTimeoutMs ?? target.connectTimeoutMs ?? 20_000);
  const fileAgent = new IdentityFileAgent(target.identityFiles, {
    askPassphrase: opts.askPassphrase,
    unlocked: opts.unlocked,
    login: `${target.user}@${where(target)}`,
    // With IdentitiesOnly the agent offers nothing of its own, but a listed file whose key it
    // holds is still signed by it, unprompted, as OpenSSH does.
    ...(target.identityAgent && target.identitiesOnly
      ? { agent: new CountingAgent(target.identityAgent) }
      : {}),
    quietMissing: target.identityFilesDefaulted,
    onPrompt: (active) => (active ? timer.pause() : timer.resume()),
  });
  const methods: AuthMethod[] = [];
  if (systemAgent)
    methods.push({ type: 'agent', username: target.user, agent: systemAgent } as AuthMethod);
  if (target.identityFiles.length > 0) {
    methods.push({ type: 'agent', username: target.user, agent: fileAgent } as AuthMethod);
  }
  if (methods.length === 0) {
    throw new UserError(
      `no SSH key to log in to ${where(target)} with: no identity file is configured and ` +
        `${target.identitiesOnly ? 'IdentitiesOnly is set' : 'SSH_AUTH_SOCK is not set'}; pass one with -i`,
    );
  }

  let hostKeyRefusal: UserError | undefined;
  const verifyHostKey = async (key: Buffer): Promise<boolean> => {
    timer.pause();
    try {
      const type = blobKeyType(key) ?? 'unknown';
      const res = await checkHostKey(checkFiles, lookupName, target.port, type, key, {
        noPortFallback: target.hostKeyAlias !== undefined,
      });
      const label = `${keyTypeLabel(res.keyType)} key ${res.fingerprint}`;
      if (res.status === 'match') return true;
      if (res.status === 'revoked') {
        hostKeyRefusal = new UserError(
          `refusing to connect to ${where(target)}: its ${label} is marked @revoked in ${res.file} line ${res.line}`,
        );
        return false;
      }
      if (res.status === 'changed') {
        const name = knownHostsName(lookupName, target.port);
        hostKeyRefusal = new UserError(
          `REFUSING to connect to ${where(target)}: its host key has CHANGED (it now presents ${label}, ` +
            `${res.file} line ${res.line} records a different one), so someone may be intercepting ` +
            `the connection; if the server was reinstalled and you have checked the new fingerprint ` +
            `with its administrator, remove the old key with ssh-keygen -R '${name}' -f ${res.file} and try again`,
        );
        return false;
      }
      const trust =
        opts.acceptNew ||
        target.strictHostKeyChecking === 'accept-new' ||
        target.strictHostKeyChecking === 'no';
      const recordIn = target.knownHostsFiles[0];
      if (!trust || !recordIn) {
        hostKeyRefusal = new UserError(
          `the authenticity of ${where(target)} cannot be established: its ${label} is not in ` +
            `${target.knownHostsFiles.join(' or ') || 'any known_hosts file'}` +
            (res.knownKeyTypes.length > 0
              ? ` (keys of other types are recorded: ${res.knownKeyTypes.map(keyTypeLabel).join(', ')})`
              : '') +
            (recordIn
              ? `; if that is the server's fingerprint (ask its administrator, or run ssh-keygen -lf on its ` +
                `/etc/ssh/ssh_host_*_key.pub), run again with --accept-new to trust and record it`
              : '; set UserKnownHostsFile to a file where it can be recorded'),
        );
        return false;
      }
      await appendKnownHost(recordIn, lookupName, target.port, res.keyType, key, {
        hash: target.hashKnownHosts,
      });
      opts.onNotice?.(
        `permanently added ${knownHostsName(lookupName, target.port)} (${label}) to ${recordIn}`,
      );
      return true;
    } catch (e) {
      hostKeyRefusal = new UserError(
        `could not check the host key of ${where(target)}: ${e instanceof Error ? e.message : String(e)}`,
      );
      return false;
    } finally {
      timer.resume();
    }
  };

  const proxy: ProxyProcess | undefined =
    !sock && target.proxyCommand
      ? startProxyCommand(target.proxyCommand, { stderr: opts.proxyStderr ?? 'inherit' })
      : undefined;
  const client = new ssh2.Client();
  const config: ConnectConfig = {
    ...(sock ? { sock } : proxy ? { sock: proxy.sock } : {}),
    host: target.hostName,
    port: target.port,
    username: target.user,
    // Our own timer replaces ssh2's so that a passphrase prompt does not count against it.
    readyTimeout: 0,
    keepaliveInterval: opts.keepaliveIntervalMs ?? target.serverAliveIntervalMs ?? 15_000,
    keepaliveCountMax: opts.keepaliveCountMax ?? target.serverAliveCountMax ?? 3,
    algorithms: { serverHostKey: hostKeyAlgorithms(knownTypes) as never },
    hostVerifier: (key: Buffer, verify: (ok: boolean) => void) => {
      void verifyHostKey(key).then(verify);
    },
    authHandler: methods,
    ...(opts.debug ? { debug: opts.debug } : {}),
  };

  return new Promise<Client>((resolve, reject) => {
    const notes: string[] = [];
    let settled = false;
    const finish = (err: Error | undefined): void => {
      if (settled) return;
      settled = true;
      timer.stop();
      client.removeListener('ready', onReady);
      client.removeListener('error', onError);
      client.removeListener('close', onClose);
      if (err) {
        client.on('error', () => {});
        client.end();
        proxy?.stop();
        reject(err);
        return;
      }
      if (proxy) client.once('close', () => proxy.stop());
      client.on('error', (e: Error) => lastErrors.set(client, e));
      client.setNoDelay(true);
      resolve(client);
    };
    const onReady = (): void => finish(undefined);
    const onError = (err: Error & { level?: string; code?: string }): void => {
      // ssh2 reports a failing key or agent as an error and then moves on to the next one.
      if (
        err.level === 'agent' ||
        (err.level === 'client-authentication' && !/All configured/.test(err.message))
      ) {
        notes.push(err.message);
        return;
      }
      const failure = describeFailure(err, target, hostKeyRefusal, fileAgent, systemAgent);
      if (err.level === 'client-authentication' || hostKeyRefusal) finish(failure);
      else finishOrProxy(failure);
    };
    // A ProxyCommand that exits explains a lost connection better than the connection can.
    const finishOrProxy = (err: UserError): void => {
      if (!proxy) {
        finish(err);
        return;
      }
      void proxy.endedEarly(1000).then((early) => finish(early ?? err));
    };
    const onClose = (): void => {
      if (hostKeyRefusal) {
        finish(hostKeyRefusal);
        return;
      }
      finishOrProxy(
        new UserError(
          `the SSH connection to ${where(target)} closed during the handshake; check that an SSH ` +
            `server runs there (try ssh -p ${target.port} ${target.user}@${target.hostName})`,
        ),
      );
    };
    timer.start(() =>
      finish(
        new UserError(
          `timed out connecting to ${where(target)}: no SSH handshake within ${Math.round(timer.limitMs / 1000)} s; ` +
            `check the host name, port and network, or raise ConnectTimeout`,
        ),
      ),
    );
    client.on('ready', onReady);
    client.on('error', onError);
    client.on('close', onClose);
    client.connect(config);
  });
}

function describeFailure(
  err: Error & { level?: string; code?: string },
  target: SshTarget,
  hostKeyRefusal: UserError | undefined,
  fileAgent: IdentityFileAgent,
  systemAgent: CountingAgent | undefined,
): UserError {
  if (hostKeyRefusal) return hostKeyRefusal;
  const hp = `${target.hostName}:${target.port}`;
  switch (err.code) {
    case 'ECONNREFUSED':
      return new UserError(
        `cannot connect to ${hp}: connection refused; check that sshd runs there and that the port is right (-p)`,
      );
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
      return new UserError(
        `cannot resolve the host name ${target.hostName}; check its spelling and HostName in ~/.ssh/config`,
      );
    case 'ETIMEDOUT':
    case 'EHOSTUNREACH':
    case 'ENETUNREACH':
      return new UserError(
        `cannot reach ${hp} (${err.code}); check the host name, port and network`,
      );
    case 'ECONNRESET':
      return new UserError(
        `${hp} reset the connection during the SSH handshake; check that it is an SSH server`,
      );
  }
  if (err.level === 'client-authentication') {
    const tried: string[] = [];
    const offered = fileAgent.notes.filter((n) => n.outcome === 'offered').map((n) => n.file);
    if (offered.length > 0) tried.push(`identity files ${offered.join(', ')}`);
    if (systemAgent) {
      tried.push(
        systemAgent.failure
          ? `the agent at ${systemAgent.socketPath} (unusable: ${systemAgent.failure})`
          : `${systemAgent.offered} key(s) from the agent at ${systemAgent.socketPath}`,
      );
    }
    const skipped = fileAgent.notes
      .filter((n) => n.outcome !== 'offered')
      .map(
        (n) =>
          `${n.file} ${n.outcome === 'missing' ? 'not found' : `${n.outcome}${n.detail ? ` (${n.detail})` : ''}`}`,
      );
    return new UserError(
      `SSH login as ${target.user} to ${where(target)} failed: the server accepted none of the keys tried ` +
        `(${tried.length > 0 ? tried.join('; ') : 'no usable key was found'}` +
        `${skipped.length > 0 ? `; skipped ${skipped.join(', ')}` : ''}); ` +
        `add your public key to ~${target.user}/.ssh/authorized_keys on the server, or choose the right key with -i`,
    );
  }
  if (err.level === 'client-timeout') {
    return new UserError(
      `timed out connecting to ${where(target)}; check the host name, port and network`,
    );
  }
  return new UserError(`the SSH connection to ${where(target)} failed: ${err.message}`);
}

interface HandshakeTimer {
  readonly limitMs: number;
  start(onExpire: () => void): void;
  pause(): void;
  resume(): void;
  stop(): void;
}

/** A deadline that stands still while a human is being asked something. */
function handshakeTimer(limitMs: number): HandshakeTimer {
  let remaining = limitMs;
  let startedAt = 0;
  let handle: NodeJS.Timeout | undefined;
  let expire: (() => void) | undefined;
  let paused = 0;
  const arm = (): void => {
    if (!expire || limitMs <= 0) return;
    startedAt = Date.now();
    handle = setTimeout(expire, remaining);
  };
  return {
    limitMs,
    start(onExpire) {
      expire = onExpire;
      arm();
    },
    pause() {
      if (paused++ > 0 || !handle) return;
      clearTimeout(handle);
      handle = undefined;
      remaining = Math.max(0, remaining - (Date.now() - startedAt));
    },
    resume() {
      if (paused === 0 || --paused > 0) return;
      arm();
    },
    stop() {
      expire = undefined;
      if (handle) clearTimeout(handle);
      handle = undefined;
    },
  };
}
