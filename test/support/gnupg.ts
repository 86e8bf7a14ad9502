// Real GnuPG in throwaway homes, for integration tests. Every home gets its own gpg-agent
// (started on demand by gpg); cleanup() kills it and removes the directory.

import { spawn, spawnSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import { mkdtemp, rm, writeFile, chmod, readFile } from 'node:fs/promises';
import path from 'node:path';

export interface GpgRunOptions {
  input?: string | Buffer;
  env?: Record<string, string>;
  /** Kill gpg and reject after this long (default 120 s) so a prompt can never hang a test. */
  timeoutMs?: number;
}

export interface GpgResult {
  code: number;
  stdout: Buffer;
  stderr: string;
}

export interface TempGnupg {
  home: string;
  /** Runs gpg with GNUPGHOME=home (no options added; pass --batch yourself where needed). */
  gpg(args: string[], opts?: GpgRunOptions): Promise<GpgResult>;
  /** Runs gpg-connect-agent against this home's agent with the given command lines. */
  connectAgent(commands: string[], opts?: GpgRunOptions): Promise<GpgResult>;
  /** Any GnuPG tool (gpgconf, gpg-agent, …) from the same directory as gpg, in this home. */
  run(tool: string, args: string[], opts?: GpgRunOptions): Promise<GpgResult>;
  /** Environment (GNUPGHOME, C locale) used for every tool run in this home. */
  env: Record<string, string>;
  cleanup(): Promise<void>;
}

export interface MakeGnupgHomeOptions {
  gpgBin?: string;
  /** Extra lines for gpg.conf / gpg-agent.conf. */
  gpgConf?: string[];
  agentConf?: string[];
}

const DEFAULT_TIMEOUT_MS = 120_000;

// Homes not cleaned up yet. A test that dies before its teardown would otherwise leave a
// gpg-agent daemon and a directory behind, so they are reaped synchronously at exit.
const liveHomes = new Map<string, { gpgconf: string; env: Record<string, string> }>();
let exitHookInstalled = false;
function reapAtExit(): void {
  for (const [home, { gpgconf, env }] of liveHomes) {
    spawnSync(gpgconf, ['--kill', 'all'], { env, stdio: 'ignore', timeout: 10_000 });
    rmSync(home, { recursive: true, force: true });
  }
  liveHomes.clear();
}

function runProcess(
  bin: string,
  args: string[],
  env: Record<string, string>,
  opts: GpgRunOptions = {},
): Promise<GpgResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(bin, args, {
      env: { ...env, ...opts.env },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, opts.timeoutMs ?? DEFAULT_TIMEOUT_MS);
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stderr.on('data', (d: Buffer) => err.push(d));
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      const stderr = Buffer.concat(err).toString('utf8');
      if (timedOut) {
        reject(new Error(`${path.basename(bin)} ${args.join(' ')} timed out\n${stderr}`));
        return;
      }
      resolve({ code: code ?? (signal ? 128 : 1), stdout: Buffer.concat(out), stderr });
    });
    // gpg may exit before reading its input; that is reported through the exit code instead.
    child.stdin.on('error', () => {});
    child.stdin.end(opts.input ?? '');
  });
}

/** A fresh GNUPGHOME (0700, short path under /tmp so the agent's socket path fits). */
export async function makeGnupgHome(opts: MakeGnupgHomeOptions = {}): Promise<TempGnupg> {
  const gpgBin = opts.gpgBin ?? '/usr/bin/gpg';
  const binDir = path.dirname(gpgBin);
  const home = await mkdtemp('/tmp/ktg-');
  await chmod(home, 0o700);
  await writeFile(
    path.join(home, 'gpg.conf'),
    ['trust-model always', 'no-greeting', 'keyid-format long', ...(opts.gpgConf ?? [])].join('\n') +
      '\n',
    { mode: 0o600 },
  );
  await writeFile(
    path.join(home, 'gpg-agent.conf'),
    ['allow-loopback-pinentry', ...(opts.agentConf ?? [])].join('\n') + '\n',
    { mode: 0o600 },
  );

  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) {
    // An inherited agent/socket pointer would make gpg talk to someone else's agent.
    if (v !== undefined && !/^(GPG_AGENT_INFO|GNUPGHOME|LC_ALL|LANG|LANGUAGE)$/.test(k)) env[k] = v;
  }
  env.GNUPGHOME = home;
  env.LC_ALL = 'C';
  env.LANG = 'C';

  const run = (tool: string, args: string[], o?: GpgRunOptions) =>
    runProcess(tool.includes('/') ? tool : path.join(binDir, tool), args, env, o);
  liveHomes.set(home, { gpgconf: path.join(binDir, 'gpgconf'), env });
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    process.on('exit', reapAtExit);
  }
  let cleaned = false;
  return {
    home,
    env,
    gpg: (args, o) => runProcess(gpgBin, args, env, o),
    connectAgent: (commands, o) => run('gpg-connect-agent', [...commands, '/bye'], o),
    run,
    async cleanup() {
      if (cleaned) return;
      cleaned = true;
      liveHomes.delete(home);
      try {
        await run('gpgconf', ['--kill', 'all'], { timeoutMs: 30_000 });
      } finally {
        await rm(home, { recursive: true, force: true, maxRetries: 3 });
      }
    },
  };
}

export interface KeygripRecord {
  fingerprint: string;
  keygrip: string;
  /** OpenPGP public-key algorithm number (1 RSA, 18 ECDH, 19 ECDSA, 22 EdDSA). */
  algo: number;
  /** gpg's curve name from the colon listing (ed25519, cv25519, nistp256, brainpoolP256r1, …). */
  curve?: string;
  bits: number;
  /** The key's own capabilities in lower case (e.g. "sc", "e"). */
  usage: string;
  primary: boolean;
}

/** Keys (primary and subkeys, in keyring order) from `--with-colons --with-keygrip`. */
export async function listKeygrips(g: TempGnupg, fpr?: string): Promise<KeygripRecord[]> {
  const args = ['--batch', '--with-colons', '--with-keygrip', '--fixed-list-mode', '--list-keys'];
  if (fpr !== undefined) args.push(fpr);
  const r = await g.gpg(args);
  if (r.code !== 0) throw new Error(`gpg --list-keys failed (${r.code}): ${r.stderr}`);
  const records: KeygripRecord[] = [];
  let current: Partial<KeygripRecord> | undefined;
  const flush = () => {
    if (current === undefined) return;
    if (current.fingerprint === undefined || current.keygrip === undefined) {
      throw new Error('colon listing lacks fpr/grp for a key');
    }
    records.push(current as KeygripRecord);
    current = undefined;
  };
  for (const line of r.stdout.toString('utf8').split('\n')) {
    const f = line.split(':');
    const type = f[0];
    if (type === 'pub' || type === 'sub') {
      flush();
      const curve = f[16];
      current = {
        algo: Number(f[3]),
        bits: Number(f[2]),
        usage: (f[11] ?? '').replace(/[^a-z]/g, ''),
        primary: type === 'pub',
        ...(curve ? { curve } : {}),
      };
    } else if (current !== undefined && type === 'fpr' && current.fingerprint === undefined) {
      current.fingerprint = f[9];
    } else if (current !== undefined && type === 'grp' && current.keygrip === undefined) {
      current.keygrip = f[9];
    }
  }
  flush();
  return records;
}

export interface GeneratedKey {
  fingerprint: string;
  uid: string;
  keygrip: string;
  /** gpg-style algorithm of the primary: curve name or rsa<bits>. */
  algo: string;
  usage: string;
  subkeys: { fingerprint: string; keygrip: string; usage: string; algo: string }[];
}

export interface KeySpec {
  uid: string;
  /** `gpg --quick-gen-key` algo: ed25519, rsa3072, nistp256, brainpoolP256r1, … */
  algo: string;
  /** sign, cert, encr, auth, comma-separated; default "default". */
  usage?: string;
  subkeys?: { algo: string; usage: string }[];
  /** Omitted or empty: the secret key is stored unprotected. */
  passphrase?: string;
}

function algoLabel(r: KeygripRecord): string {
  return r.curve ?? (r.algo === 1 ? `rsa${r.bits}` : `algo${r.algo}-${r.bits}`);
}

/** Creates a key with --quick-gen-key, adds subkeys with --quick-add-key, and lists the result. */
export async function generateKey(g: TempGnupg, spec: KeySpec): Promise<GeneratedKey> {
  const pass = ['--batch', '--pinentry-mode', 'loopback', '--passphrase', spec.passphrase ?? ''];
  const gen = await g.gpg([
    ...pass,
    '--status-fd',
    '1',
    '--quick-gen-key',
    spec.uid,
    spec.algo,
    spec.usage ?? 'default',
    'never',
  ]);
  const created = /^\[GNUPG:\] KEY_CREATED [BP] ([0-9A-F]{40})/m.exec(gen.stdout.toString('utf8'));
  if (gen.code !== 0 || !created) {
    throw new Error(`gpg --quick-gen-key ${spec.algo} failed (${gen.code}): ${gen.stderr}`);
  }
  const fingerprint = created[1]!;
  // Subkeys go one after another: each rewrites the same keyblock.
  for (const sub of spec.subkeys ?? []) {
    const add = await g.gpg([
      ...pass,
      '--quick-add-key',
      fingerprint,
      sub.algo,
      sub.usage,
      'never',
    ]);
    if (add.code !== 0) {
      throw new Error(
        `gpg --quick-add-key ${sub.algo} ${sub.usage} failed (${add.code}): ${add.stderr}`,
      );
    }
  }
  const listed = await listKeygrips(g, fingerprint);
  const primary = listed.find((r) => r.primary);
  if (!primary || primary.fingerprint !== fingerprint) {
    throw new Error(`generated key ${fingerprint} not found in listing`);
  }
  return {
    fingerprint,
    uid: spec.uid,
    keygrip: primary.keygrip,
    algo: algoLabel(primary),
    usage: primary.usage,
    subkeys: listed
      .filter((r) => !r.primary)
      .map((r) => ({
        fingerprint: r.fingerprint,
        keygrip: r.keygrip,
        usage: r.usage,
        algo: algoLabel(r),
      })),
  };
}

/** `gpg --export` of the given key (binary, public only). */
export async function exportPublicKey(g: TempGnupg, fpr: string): Promise<Buffer> {
  const r = await g.gpg(['--batch', '--export', fpr]);
  if (r.code !== 0 || r.stdout.length === 0) {
    throw new Error(`gpg --export ${fpr} failed (${r.code}): ${r.stderr}`);
  }
  return r.stdout;
}

/** `gpg --export-secret-keys` (binary); the key must be unprotected or passphrase given. */
export async function exportSecretKey(g: TempGnupg, fpr: string, passphrase = ''): Promise<Buffer> {
  const r = await g.gpg([
    '--batch',
    '--pinentry-mode',
    'loopback',
    '--passphrase',
    passphrase,
    '--export-secret-keys',
    fpr,
  ]);
  if (r.code !== 0 || r.stdout.length === 0) {
    throw new Error(`gpg --export-secret-keys ${fpr} failed (${r.code}): ${r.stderr}`);
  }
  return r.stdout;
}

/**
 * The raw D-line payload of a single agent command (e.g. `READKEY <grip>`), unescaped, via
 * gpg-connect-agent's /datafile. Rejects when the agent answers ERR.
 */
export async function agentData(g: TempGnupg, command: string): Promise<Buffer> {
  const dataDir = await mkdtemp(path.join(g.home, 'data-'));
  const file = path.join(dataDir, 'out');
  try {
    const r = await g.connectAgent([`/datafile ${file}`, command]);
    const text = r.stdout.toString('latin1');
    if (r.code !== 0 || /^ERR /m.test(text) || !/^OK/m.test(text)) {
      throw new Error(`agent command failed: ${text.trim()} ${r.stderr.trim()}`);
    }
    return await readFile(file);
  } finally {
    await rm(dataDir, { recursive: true, force: true });
  }
}

/**
 * Makes gpg in G (as GPGCONF, e.g. gpg 2.4's, places it) reach AGENT_SOCKET: a libassuan
 * `%Assuan%` redirect file where `gpgconf --list-dirs agent-socket` says gpg looks.
 */
export async function redirectAgentSocket(
  g: TempGnupg,
  agentSocket: string,
  gpgconf = 'gpgconf',
): Promise<void> {
  const dirs = await g.run(gpgconf, ['--list-dirs', 'agent-socket']);
  const at = dirs.stdout.toString().trim() || path.join(g.home, 'S.gpg-agent');
  await writeFile(at, `%Assuan%\nsocket=${agentSocket}\n`);
}

/**
 * A public-keys-only GNUPGHOME for gpg clients of keytether: `no-autostart`, PUBLIC_KEYS imported,
 * and a libassuan `%Assuan%` redirect file at the path `gpgconf --list-dirs agent-socket` names,
 * pointing at AGENT_SOCKET (works with gpg 2.2 and 2.4).
 */
export async function clientHome(
  agentSocket: string,
  publicKeys: string | Buffer,
  gpgBin?: string,
): Promise<TempGnupg> {
  const g = await makeGnupgHome({ ...(gpgBin ? { gpgBin } : {}), gpgConf: ['no-autostart'] });
  await redirectAgentSocket(g, agentSocket);
  const imp = await g.gpg(['--batch', '--import'], { input: publicKeys });
  if (imp.code !== 0) throw new Error(`importing public keys failed: ${imp.stderr}`);
  return g;
}
