// The stock gpg clients integration tests run against: the system's gpg (2.2 on Debian 12)
// always, and gpg 2.4 when scripts/fetch-gpg24.sh has put it in its cache (npm test's pretest
// does) or KEYTETHER_GPG24 names one; under CI=true gpg 2.4 is required. Loop over gpgClients()
// so both versions meet the facade, and derive expected counts from its length.

import { execFileSync } from 'node:child_process';
import { accessSync, constants, existsSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import { ciRunsEverything } from './ci.js';

export interface GpgClient {
  /** e.g. '2.2.40' */
  version: string;
  /** the gpg executable */
  gpg: string;
  /** its gpgconf, when there is one beside it */
  gpgconf?: string;
  /** e.g. 'gpg 2.2.40', for test names */
  label: string;
}

function versionOf(gpg: string): string | null {
  try {
    const out = execFileSync(gpg, ['--version'], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'ignore'],
      timeout: 30_000,
    });
    return /^gpg \(GnuPG\) (\d+\.\d+\.\d+)/m.exec(out)?.[1] ?? null;
  } catch {
    return null;
  }
}

function executable(p: string): boolean {
  try {
    accessSync(p, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

function systemGpg(): string {
  for (const p of ['/usr/bin/gpg', '/usr/local/bin/gpg']) if (executable(p)) return p;
  for (const d of (process.env.PATH ?? '').split(':')) {
    if (d && executable(join(d, 'gpg'))) return join(d, 'gpg');
  }
  throw new Error('no gpg on this machine: install gnupg (the tests need a real gpg)');
}

/** Where scripts/fetch-gpg24.sh caches gpg 2.4 by default. */
export function defaultGpg24Path(env: NodeJS.ProcessEnv = process.env): string {
  const cache = env.XDG_CACHE_HOME || join(env.HOME || homedir(), '.cache');
  return join(cache, 'keytether', 'gpg24', 'bin', 'gpg');
}

function client(gpg: string, version: string): GpgClient {
  const gpgconf = join(dirname(gpg), 'gpgconf');
  return {
    version,
    gpg,
    ...(existsSync(gpgconf) ? { gpgconf } : {}),
    label: `gpg ${version}`,
  };
}

let cached: GpgClient[] | undefined;

/**
 * The system gpg (always) and gpg 2.4 when available. KEYTETHER_GPG24 set to a path that does not
 * run as gpg 2.4 is an error rather than a silent skip: someone asked for it explicitly.
 */
export function gpgClients(): GpgClient[] {
  if (cached) return cached;
  const sys = systemGpg();
  const sysVersion = versionOf(sys);
  if (!sysVersion) throw new Error(`${sys} --version did not print a GnuPG version`);
  const clients = [client(sys, sysVersion)];

  const explicit = process.env.KEYTETHER_GPG24;
  const candidate = explicit || defaultGpg24Path();
  if (existsSync(candidate)) {
    const v = versionOf(candidate);
    if (v?.startsWith('2.4.')) {
      if (candidate !== sys) clients.push(client(candidate, v));
    } else if (explicit) {
      throw new Error(
        `KEYTETHER_GPG24=${explicit} does not run as gpg 2.4 (it said ${v ?? 'nothing'})`,
      );
    }
  } else if (explicit) {
    throw new Error(`KEYTETHER_GPG24=${explicit} does not exist; run scripts/fetch-gpg24.sh`);
  }
  if (ciRunsEverything && !clients.some((c) => c.version.startsWith('2.4.'))) {
    throw new Error(
      `CI runs every test against gpg 2.4 too, and there is none at ${candidate}: run scripts/fetch-gpg24.sh (npm test's pretest does)`,
    );
  }
  cached = clients;
  return clients;
}
