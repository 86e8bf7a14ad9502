// What the ssh-agent front's tests share: a real Holder over given back ends, the front served on
// a unix socket, and ssh-keygen's SSHSIG sign and verify as a user runs them.

import { execFile } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:net';
import path from 'node:path';
import { promisify } from 'node:util';
import type { KeyHolder, Requester } from '../../protocol/keyholder.js';
import { serveSshAgent, type SshAgentEvent } from '../../protocol/ssh-agent/index.js';
import type { AuditLog } from '../../workstation/audit/audit.js';
import type { Backend } from '../../workstation/backends/backend.js';
import type { UnlockedKey } from '../../workstation/crypto/index.js';
import { Holder } from '../../workstation/holder/holder.js';
import { UnlockCache } from '../../workstation/holder/unlock-cache.js';
import type { Keystore } from '../../workstation/keystore/index.js';
import { ApprovalMemory } from '../../workstation/policy/approvals.js';
import type { PolicyRule } from '../../workstation/policy/policy.js';

const run = promisify(execFile);

export interface RigHolderOptions {
  keystore: Keystore;
  audit: AuditLog;
  policy: PolicyRule[];
  backends?: Backend[];
  /** The confirmation's answer; every prompt's text is passed to it. Default: decline. */
  confirm?: (description: string) => boolean;
  knownHostsFiles?: string[];
}

/** A Holder with no unlock caching and no passphrases (the rigs' keys are unprotected). */
export function rigHolder(o: RigHolderOptions): Holder {
  return new Holder({
    keystore: o.keystore,
    ...(o.backends ? { backends: o.backends } : {}),
    policy: o.policy,
    pinentry: {
      getPassphrase: async () => Buffer.from(''),
      confirm: async ({ description }) => o.confirm?.(description) ?? false,
    },
    audit: o.audit,
    cache: new UnlockCache<UnlockedKey>({ defaultTtlMs: 0, maxTtlMs: 0 }),
    approvals: new ApprovalMemory(),
    knownHostsFiles: o.knownHostsFiles ?? [],
  });
}

export interface AgentFront {
  socket: string;
  /** The environment that makes ssh, ssh-add and ssh-keygen use the front. */
  env: NodeJS.ProcessEnv;
  events: SshAgentEvent[];
  close(): Promise<void>;
}

/** HOLDER's ssh-agent front on DIR/agent.sock, as a server's `ssh` front would see it. */
export async function serveFront(
  holder: KeyHolder,
  dir: string,
  requester: Requester = { front: 'ssh', host: 'build.example' },
): Promise<AgentFront> {
  const events: SshAgentEvent[] = [];
  const socket = path.join(dir, 'agent.sock');
  const server: Server = createServer((s) => {
    void serveSshAgent(s, { holder, requester, onEvent: (e) => events.push(e) });
  });
  await new Promise<void>((r) => server.listen(socket, r));
  return {
    socket,
    env: { ...process.env, SSH_AUTH_SOCK: socket },
    events,
    close: () => new Promise<void>((r) => server.close(() => r())),
  };
}

/** `ssh-keygen -Y sign -n git` over BODY with the agent key PUB; the signature file's path. */
export async function sshsigSign(
  env: NodeJS.ProcessEnv,
  dir: string,
  name: string,
  pub: string,
  body: string,
): Promise<string> {
  const pubFile = path.join(dir, `${name}.pub`);
  await writeFile(pubFile, pub + '\n');
  const msg = path.join(dir, `${name}.msg`);
  await writeFile(msg, body);
  await run('ssh-keygen', ['-Y', 'sign', '-n', 'git', '-f', pubFile, msg], { env });
  return `${msg}.sig`;
}

/** `ssh-keygen -Y verify` of SIG over BODY for dev@example.org holding PUB; exit code, output. */
export async function sshsigVerify(
  dir: string,
  pub: string,
  sig: string,
  body: string,
): Promise<[number | null, string]> {
  const allowed = path.join(dir, 'allowed_signers');
  await writeFile(allowed, `dev@example.org ${pub.split(' ').slice(0, 2).join(' ')}\n`);
  const v = execFile('ssh-keygen', [
    '-Y',
    'verify',
    '-f',
    allowed,
    '-I',
    'dev@example.org',
    '-n',
    'git',
    '-s',
    sig,
  ]);
  v.stdin!.end(body);
  let out = '';
  v.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  v.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  return [await new Promise<number | null>((r) => v.on('close', r)), out];
}
