// The clear-signing tests' world, every part real: a workstation key (gpg's default sign+certify
// primary unless told otherwise) imported into a keytether home, a relay, a holder connected to
// it, a token for the key, and `keytether connect -- CMD` as the "server" side.

import type { Test } from 'tap';
import type { AuditInput } from '../../workstation/audit/audit.js';
import type { ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { exportSecretKey, generateKey, makeGnupgHome, type TempGnupg } from './gnupg.js';
import { runCli, spawnCli, waitForLine, type RunResult } from './cli.js';

/** One audit record as the log holds it (the fields these tests read). */
export type SignRecord = Pick<
  AuditInput,
  'op' | 'decision' | 'reason' | 'verification' | 'content'
>;

export interface ClearSignRig {
  ws: TempGnupg;
  fingerprint: string;
  tmp: string;
  home: string;
  url: string;
  token: string;
  /** The holder's stderr so far (its one line per operation). */
  holderStderr(): string;
  /** `keytether connect -- CMD…` with the token. */
  connect(...cmd: string[]): Promise<RunResult>;
  /** The sign records of the audit log, oldest first. */
  signs(): Promise<SignRecord[]>;
}

function stopper(child: ChildProcess): () => Promise<void> {
  const exited = new Promise<void>((r) => child.on('exit', () => r()));
  return async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await exited;
  };
}

export interface ClearSignRigOptions {
  /** More `keytether agent` arguments (a policy, a pinentry, --web). */
  agentArgs?: string[];
  /** More environment for the agent (a scripted pinentry's). */
  agentEnv?: Record<string, string>;
}

export async function clearSignRig(
  t: Test,
  uid: string,
  opts: ClearSignRigOptions = {},
): Promise<ClearSignRig> {
  const ws = await makeGnupgHome();
  t.teardown(() => ws.cleanup());
  const key = await generateKey(ws, { uid, algo: 'ed25519', usage: 'sign,cert' });
  const fingerprint = key.fingerprint;
  const tmp = await mkdtemp('/tmp/ktclear-');
  t.teardown(() => rm(tmp, { recursive: true, force: true }));
  const home = path.join(tmp, 'home');
  const env = { KEYTETHER_HOME: home };
  const secretFile = path.join(tmp, 'secret.gpg');
  await writeFile(secretFile, await exportSecretKey(ws, fingerprint), { mode: 0o600 });
  const imported = await runCli(['keys', 'import', secretFile], { env });
  await rm(secretFile);
  if (imported.code !== 0) throw new Error(`keys import: ${imported.stderr}`);

  const relay = await spawnCli(['relay', '--listen', '127.0.0.1:0']);
  t.teardown(stopper(relay));
  const url = (await waitForLine(relay.stdout!, /^listening: (\S+)$/, 30_000))[1]!;
  const holder = await spawnCli(
    ['agent', '--socket', path.join(tmp, 'S.local'), '--relay', url, ...(opts.agentArgs ?? [])],
    { env: { ...env, ...opts.agentEnv } },
  );
  t.teardown(stopper(holder));
  let holderErr = '';
  holder.stderr!.on('data', (b: Buffer) => (holderErr += b.toString()));
  const connected = waitForLine(holder.stderr!, /^relay connected: /, 30_000);
  connected.catch(() => {});
  await waitForLine(holder.stdout!, /^ready: /, 30_000);
  await connected;
  const made = await runCli(['token', 'create', '--key', fingerprint, '--relay', url], { env });
  if (made.code !== 0) throw new Error(`token create: ${made.stderr}`);
  const token = made.stdout.trim();
  return {
    ws,
    fingerprint,
    tmp,
    home,
    url,
    token,
    holderStderr: () => holderErr,
    connect: (...cmd) =>
      runCli(['connect', '--relay', url, '--', ...cmd], { env: { KEYTETHER_TOKEN: token } }),
    signs: async () =>
      (await readFile(path.join(home, 'audit.jsonl'), 'utf8'))
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l) as SignRecord)
        .filter((r) => r.op === 'sign'),
  };
}
