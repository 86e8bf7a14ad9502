// The sshd settings `keytether doctor --server` looks at. keytether ssh needs only an exec
// channel, so a ForceCommand (or a disabled forwarding it does not use) matters only as far as
// it says so; classic forwarding (docs/classic-forwarding.md) needs the server to accept a
// forwarded unix socket and to replace a stale one; a jump host (ProxyJump) needs TCP forwarding.
// The effective settings come from `sshd -T` (which needs root to read the host keys); otherwise
// from the config file's global part, which is what sshd uses outside Match blocks.

import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import type { Finding } from '../system/diagnosis.js';

export const SSHD_CONFIG = '/etc/ssh/sshd_config';
const SSHD_BIN = '/usr/sbin/sshd';
const KEYS = [
  'allowstreamlocalforwarding',
  'allowtcpforwarding',
  'streamlocalbindunlink',
  'disableforwarding',
  'forcecommand',
] as const;
type Key = (typeof KEYS)[number];
type Settings = Partial<Record<Key, string>>;
/** A config file larger than this is not an sshd_config a human wrote. */
const MAX_CONFIG_BYTES = 1 << 20;

function fromSshdT(bin: string, config: string): Promise<Settings | string> {
  return new Promise((resolve) => {
    execFile(bin, ['-T', '-f', config], { timeout: 10_000 }, (err, stdout, stderr) => {
      if (err) {
        const why = String(stderr).trim().split('\n')[0] || err.message;
        resolve(why.slice(0, 200));
        return;
      }
      const s: Settings = {};
      for (const line of String(stdout).split('\n')) {
        const [k, ...v] = line.trim().split(/\s+/);
        if ((KEYS as readonly string[]).includes(k ?? '')) s[k as Key] = v.join(' ');
      }
      resolve(s);
    });
  });
}

/**
 * The global settings of an sshd_config text: keywords before the first Match, first one wins
 * (sshd's rule), defaults for the rest. Include is not followed, which the caller says.
 */
export function parseSshdConfig(text: string): { settings: Settings; includes: boolean } {
  const s: Settings = {};
  let includes = false;
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    const m = /^(\S+?)(?:\s*=\s*|\s+)(.*)$/.exec(line);
    if (!m) continue;
    const key = (m[1] as string).toLowerCase();
    if (key === 'match') break;
    if (key === 'include') includes = true;
    if ((KEYS as readonly string[]).includes(key) && s[key as Key] === undefined) {
      s[key as Key] = (m[2] as string)
        .trim()
        .replace(/^"(.*)"$/, '$1')
        .toLowerCase();
    }
  }
  return { settings: s, includes };
}

const DEFAULTS: Required<Settings> = {
  allowstreamlocalforwarding: 'yes',
  allowtcpforwarding: 'yes',
  streamlocalbindunlink: 'no',
  disableforwarding: 'no',
  forcecommand: 'none',
};

export async function diagnoseSshd(
  opts: { config?: string; sshd?: string } = {},
): Promise<Finding[]> {
  const config = opts.config ?? SSHD_CONFIG;
  let settings: Settings;
  let source: string;
  const t = await fromSshdT(opts.sshd ?? SSHD_BIN, config);
  if (typeof t !== 'string') {
    settings = t;
    source = `sshd -T -f ${config}`;
  } else {
    let text: string;
    try {
      const buf = await readFile(config);
      if (buf.length > MAX_CONFIG_BYTES) throw new Error('larger than 1 MiB');
      text = buf.toString('utf8');
    } catch (e) {
      const why = (e as NodeJS.ErrnoException).code ?? (e as Error).message;
      return [
        {
          severity: 'info',
          text: `cannot check sshd's forwarding settings: sshd -T failed (${t}) and ${config} is not readable (${why})`,
          fix: 'run this as root (sudo keytether doctor --server) to check them',
        },
      ];
    }
    const parsed = parseSshdConfig(text);
    settings = parsed.settings;
    source = `${config}, outside Match blocks${parsed.includes ? ', Include not followed' : ''} (sshd -T needs root)`;
  }
  const v = (k: Key) => settings[k] ?? DEFAULTS[k];
  const out: Finding[] = [{ severity: 'info', text: `sshd settings read from ${source}` }];

  const force = v('forcecommand');
  if (force !== 'none') {
    out.push({
      severity: 'warn',
      text: `sshd has ForceCommand ${force}, so keytether ssh cannot run keytether serve here`,
      fix: 'exempt your account from the ForceCommand (a Match block), or use the relay',
    });
  }
  const disabled = v('disableforwarding') === 'yes';
  const stream = v('allowstreamlocalforwarding');
  if (disabled || stream === 'no' || stream === 'local') {
    out.push({
      severity: 'info',
      text: `sshd refuses forwarded unix sockets (${disabled ? 'DisableForwarding yes' : `AllowStreamLocalForwarding ${stream}`}): keytether ssh does not need them, classic forwarding (ssh -R of a socket) does`,
      fix: 'for classic forwarding set AllowStreamLocalForwarding yes (or remote) in sshd_config',
    });
  } else {
    out.push({
      severity: 'ok',
      text: `sshd accepts forwarded unix sockets (AllowStreamLocalForwarding ${stream})`,
    });
    if (v('streamlocalbindunlink') !== 'yes') {
      out.push({
        severity: 'info',
        text: 'sshd has StreamLocalBindUnlink no, so a classic forward (ssh -R of a socket) fails while a stale socket file is left from an earlier session',
        fix: 'for classic forwarding add StreamLocalBindUnlink yes to sshd_config and reload sshd',
      });
    } else {
      out.push({ severity: 'ok', text: 'sshd has StreamLocalBindUnlink yes' });
    }
  }
  const tcp = v('allowtcpforwarding');
  if (disabled || tcp === 'no' || tcp === 'remote') {
    out.push({
      severity: 'info',
      text: `sshd refuses TCP forwarding (${disabled ? 'DisableForwarding yes' : `AllowTcpForwarding ${tcp}`}), so this host cannot be a ProxyJump host for keytether ssh`,
    });
  } else {
    out.push({ severity: 'ok', text: `sshd allows TCP forwarding (AllowTcpForwarding ${tcp})` });
  }
  return out;
}
