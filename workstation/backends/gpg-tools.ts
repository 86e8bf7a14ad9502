// The workstation's GnuPG command-line tools, used only to find gpg-agent's sockets and to read
// public keys (never secret ones). Output is size-capped and runs are time-limited.

import { execFile } from 'node:child_process';

export interface GnupgTools {
  gpg: string;
  gpgconf: string;
  /** GNUPGHOME for the tools; undefined: whatever the environment says. */
  home: string | undefined;
  /** Test hook: sees the key specifications of every keyring export. */
  onExport?: (specs: string[]) => void;
}

export interface AgentDirs {
  homedir: string;
  agentSocket: string;
  extraSocket: string;
}

const MAX_EXPORT_BYTES = 64 * 1024 * 1024;
const TOOL_TIMEOUT_MS = 30_000;

function run(bin: string, args: string[], tools: GnupgTools, maxBuffer: number): Promise<Buffer> {
  const env: NodeJS.ProcessEnv = { ...process.env, LC_ALL: 'C' };
  if (tools.home !== undefined) env.GNUPGHOME = tools.home;
  return new Promise((resolve, reject) => {
    execFile(
      bin,
      args,
      { env, encoding: 'buffer', maxBuffer, timeout: TOOL_TIMEOUT_MS },
      (err, stdout, stderr) => {
        if (err) {
          const why = stderr.toString('utf8').trim().split('\n')[0] ?? '';
          reject(new Error(`${bin} ${args[0] ?? ''} failed${why ? `: ${why.slice(0, 200)}` : ''}`));
        } else resolve(stdout);
      },
    );
  });
}

/** `gpgconf --list-dirs`: values are percent-escaped (`%3a` for ':'). */
export async function agentDirs(tools: GnupgTools): Promise<AgentDirs> {
  const out = (await run(tools.gpgconf, ['--list-dirs'], tools, 1024 * 1024)).toString('utf8');
  const dirs = new Map<string, string>();
  for (const line of out.split('\n')) {
    const i = line.indexOf(':');
    if (i <= 0) continue;
    dirs.set(line.slice(0, i), decodeURIComponentSafe(line.slice(i + 1)));
  }
  const homedir = dirs.get('homedir');
  const agentSocket = dirs.get('agent-socket');
  const extraSocket = dirs.get('agent-extra-socket');
  if (!homedir || !agentSocket || !extraSocket) {
    throw new Error(`${tools.gpgconf} --list-dirs did not name gpg-agent's sockets`);
  }
  return { homedir, agentSocket, extraSocket };
}

function decodeURIComponentSafe(s: string): string {
  return s.replace(/%([0-9a-fA-F]{2})/g, (_, h: string) => String.fromCharCode(parseInt(h, 16)));
}

/** Starts the agent if it is not running (what gpg itself would do on first use). */
export async function launchAgent(tools: GnupgTools): Promise<void> {
  await run(tools.gpgconf, ['--launch', 'gpg-agent'], tools, 64 * 1024);
}

/**
 * The public certificates holding any of KEYGRIPS (gpg's `&KEYGRIP` key specification), binary,
 * with only the newest self-signatures.
 */
export async function exportPublicKeys(tools: GnupgTools, keygrips: string[]): Promise<Buffer> {
  const specs = keygrips.filter((g) => /^[0-9A-F]{40}$/i.test(g)).map((g) => `&${g}`);
  if (specs.length === 0) return Buffer.alloc(0);
  tools.onExport?.(specs);
  return run(
    tools.gpg,
    [
      '--batch',
      '--no-tty',
      '--no-autostart',
      '--export-options',
      'export-minimal',
      '--export',
      ...specs,
    ],
    tools,
    MAX_EXPORT_BYTES,
  );
}

/**
 * `gpg -K --with-colons --with-keygrip` for the keys holding KEYGRIPS: how keys openpgp.js cannot
 * read (gpg 2.4's v5 Ed448/X448 keys) are named.
 */
export async function listSecretKeysColons(tools: GnupgTools, keygrips: string[]): Promise<string> {
  const specs = keygrips.filter((g) => /^[0-9A-F]{40}$/i.test(g)).map((g) => `&${g}`);
  if (specs.length === 0) return '';
  const out = await run(
    tools.gpg,
    ['--batch', '--no-tty', '--no-autostart', '--with-colons', '--with-keygrip', '-K', ...specs],
    tools,
    MAX_EXPORT_BYTES,
  );
  return out.toString('utf8');
}

/** The armored public certificate of FINGERPRINT, with only the newest self-signatures. */
export async function exportArmoredKey(tools: GnupgTools, fingerprint: string): Promise<string> {
  if (!/^([0-9A-F]{40}|[0-9A-F]{64})$/.test(fingerprint)) return '';
  const out = await run(
    tools.gpg,
    [
      '--batch',
      '--no-tty',
      '--no-autostart',
      '--armor',
      '--export-options',
      'export-minimal',
      '--export',
      fingerprint,
    ],
    tools,
    MAX_EXPORT_BYTES,
  );
  return out.toString('utf8');
}
