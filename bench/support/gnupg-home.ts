// A throwaway GNUPGHOME driven by the real gpg, for benches that compare against gpg-agent. The
// agent gpg starts for the home is the one measured; cleanup() kills it and removes the home.

import { spawnSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import { chmod, mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { runTool, type ToolResult } from './processes.js';

export interface BenchGnupg {
  home: string;
  env: NodeJS.ProcessEnv;
  gpg(args: string[]): Promise<ToolResult>;
  /** gpgconf, gpg-connect-agent, … from gpg's directory, in this home. */
  tool(name: string, args: string[]): Promise<ToolResult>;
  /** Path of the agent socket, with the agent started if it is not running yet. */
  agentSocket(): Promise<string>;
  /** Process id of the running agent (GETINFO pid). */
  agentPid(): Promise<number>;
  cleanup(): Promise<void>;
}

export interface BenchKey {
  fingerprint: string;
  keygrip: string;
}

/** Creates `dir` (0700); `dir` must be new and short enough for socket paths inside it. */
export async function makeBenchGnupg(dir: string, gpgBin = '/usr/bin/gpg'): Promise<BenchGnupg> {
  const binDir = path.dirname(gpgBin);
  await mkdir(dir, { mode: 0o700 });
  await chmod(dir, 0o700);
  await writeFile(path.join(dir, 'gpg.conf'), 'no-greeting\ntrust-model always\n', {
    mode: 0o600,
  });
  await writeFile(path.join(dir, 'gpg-agent.conf'), 'allow-loopback-pinentry\n', { mode: 0o600 });
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    // An inherited agent pointer would make gpg talk to someone else's agent.
    if (!/^(GPG_AGENT_INFO|GNUPGHOME|LC_ALL|LANG|LANGUAGE)$/.test(k)) env[k] = v;
  }
  Object.assign(env, { GNUPGHOME: dir, LC_ALL: 'C', LANG: 'C' });
  const tool = (name: string, args: string[]) => runTool(path.join(binDir, name), args, env);
  const killAgent = () =>
    spawnSync(path.join(binDir, 'gpgconf'), ['--kill', 'all'], {
      env,
      stdio: 'ignore',
      timeout: 10_000,
    });
  // A bench that dies half-way must not leave a gpg-agent daemon behind. Prepended: gpgconf
  // finds the agent through the home, so this must run before a caller's hook removes it.
  const onExit = () => {
    killAgent();
    rmSync(dir, { recursive: true, force: true });
  };
  process.prependOnceListener('exit', onExit);
  let cleaned = false;
  return {
    home: dir,
    env,
    gpg: (args) => runTool(gpgBin, args, env),
    tool,
    async agentSocket() {
      const start = await tool('gpg-connect-agent', ['/bye']);
      if (start.code !== 0) throw new Error(`gpg-connect-agent failed: ${start.stderr}`);
      const r = await tool('gpgconf', ['--list-dirs', 'agent-socket']);
      const socket = r.stdout.toString('utf8').trim();
      if (r.code !== 0 || socket === '') throw new Error(`gpgconf --list-dirs failed: ${r.stderr}`);
      return socket;
    },
    async agentPid() {
      const r = await tool('gpg-connect-agent', ['GETINFO pid', '/bye']);
      const m = /^D (\d+)$/m.exec(r.stdout.toString('utf8'));
      if (r.code !== 0 || !m) throw new Error(`GETINFO pid failed: ${r.stderr}`);
      return Number(m[1]);
    },
    async cleanup() {
      if (cleaned) return;
      cleaned = true;
      process.removeListener('exit', onExit);
      try {
        await tool('gpgconf', ['--kill', 'all']);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    },
  };
}

/**
 * Generates a primary key with no passphrase (usage `sign` unless `usage` says otherwise, e.g.
 * `cert`) and returns its fingerprint and grip.
 */
export async function generateUnprotectedKey(
  g: BenchGnupg,
  uid: string,
  algo: string,
  usage = 'sign',
): Promise<BenchKey> {
  const gen = await g.gpg([
    '--batch',
    '--pinentry-mode',
    'loopback',
    '--passphrase',
    '',
    '--status-fd',
    '1',
    '--quick-gen-key',
    uid,
    algo,
    usage,
    'never',
  ]);
  const created = /^\[GNUPG:\] KEY_CREATED [BP] ([0-9A-F]{40})/m.exec(gen.stdout.toString('utf8'));
  if (gen.code !== 0 || !created) throw new Error(`gpg --quick-gen-key ${algo}: ${gen.stderr}`);
  const fingerprint = created[1]!;
  const list = await g.gpg(['--batch', '--with-keygrip', '--with-colons', '-K', fingerprint]);
  let inPrimary = false;
  for (const line of list.stdout.toString('utf8').split('\n')) {
    const f = line.split(':');
    if (f[0] === 'sec') inPrimary = true;
    else if (f[0] === 'ssb') inPrimary = false;
    else if (inPrimary && f[0] === 'grp' && /^[0-9A-F]{40}$/.test(f[9] ?? '')) {
      return { fingerprint, keygrip: f[9]! };
    }
  }
  throw new Error(`no keygrip for ${fingerprint} in gpg -K: ${list.stderr}`);
}

/**
 * Adds a signing subkey with no passphrase to PRIMARY and returns its fingerprint and grip;
 * gpg -u PRIMARY then signs with it.
 */
export async function addSigningSubkey(
  g: BenchGnupg,
  primary: string,
  algo: string,
): Promise<BenchKey> {
  const r = await g.gpg([
    '--batch',
    '--pinentry-mode',
    'loopback',
    '--passphrase',
    '',
    '--quick-add-key',
    primary,
    algo,
    'sign',
    'never',
  ]);
  if (r.code !== 0) throw new Error(`gpg --quick-add-key ${algo} sign: ${r.stderr}`);
  const list = await g.gpg(['--batch', '--with-keygrip', '--with-colons', '-K', primary]);
  // ssb, then its fpr and grp lines; the newest signing subkey is the last.
  let found: BenchKey | undefined;
  let inSigning = false;
  let fpr = '';
  for (const line of list.stdout.toString('utf8').split('\n')) {
    const f = line.split(':');
    if (f[0] === 'sec' || f[0] === 'ssb') {
      inSigning = f[0] === 'ssb' && (f[11] ?? '').includes('s');
      fpr = '';
    } else if (inSigning && f[0] === 'fpr') fpr = f[9] ?? '';
    else if (inSigning && f[0] === 'grp' && /^[0-9A-F]{40}$/.test(f[9] ?? '') && fpr) {
      found = { fingerprint: fpr, keygrip: f[9]! };
    }
  }
  if (!found) throw new Error(`no signing subkey of ${primary} in gpg -K: ${list.stderr}`);
  return found;
}

/** `gpg --export-secret-keys` of every key in the home (binary); keys must be unprotected. */
export async function exportAllSecretKeys(g: BenchGnupg): Promise<Buffer> {
  const r = await g.gpg([
    '--batch',
    '--pinentry-mode',
    'loopback',
    '--passphrase',
    '',
    '--export-secret-keys',
  ]);
  if (r.code !== 0 || r.stdout.length === 0)
    throw new Error(`gpg --export-secret-keys: ${r.stderr}`);
  return r.stdout;
}
