// Where an SSH login signature lets the server log in: the destination's host key, which the
// ssh-agent front only reports when the client proved it with session-bind@openssh.com, named by
// the workstation's own known_hosts. The server cannot choose the name: a rule saying
// `destination = "github.com"` matches only when the user's known_hosts records that very key
// for github.com, so a server that binds to its own host key gets no github.com rule.

import os from 'node:os';
import path from 'node:path';
import {
  fingerprint,
  hostsMatch,
  knownHostsName,
  readKnownHosts,
  wildcardMatch,
  type KnownHostEntry,
} from '../ssh/known-hosts.js';

export interface Destination {
  /** The host key's `SHA256:` fingerprint. */
  fingerprint: string;
  /** Plain (unhashed, non-wildcard) known_hosts names recorded for that key, for display. */
  names: string[];
  /** Whether known_hosts records that key for NAME (`host`, `host:port`, `[host]:port`). */
  knownAs(name: string): boolean;
}

/** The files OpenSSH reads by default on the workstation. */
export function defaultKnownHostsFiles(home: string = os.homedir()): string[] {
  return [path.join(home, '.ssh', 'known_hosts'), '/etc/ssh/ssh_known_hosts'];
}

/** The destination for FPR as FILES name it; no file or no entry leaves it nameless. */
export async function resolveDestination(
  fpr: string,
  files: readonly string[],
): Promise<Destination> {
  const all: KnownHostEntry[] = [];
  for (const file of files) all.push(...(await readKnownHosts(file, [])));
  const mine = all.filter((e) => e.marker !== 'cert-authority' && fingerprint(e.blob) === fpr);
  // A revoked line for the key vetoes every name, as it does in OpenSSH's own check.
  const live = mine.some((e) => e.marker === 'revoked') ? [] : mine;
  const names: string[] = [];
  for (const e of live) {
    if (e.hosts.startsWith('|')) continue;
    for (const n of e.hosts.split(',')) {
      if (n && !n.startsWith('!') && !/[*?]/.test(n) && !names.includes(n)) names.push(n);
    }
  }
  return {
    fingerprint: fpr,
    names,
    knownAs: (name) => {
      const canonical = canonicalName(name);
      return canonical !== undefined && live.some((e) => hostsMatch(e.hosts, canonical));
    },
  };
}

/** `host:port` → `[host]:port` (known_hosts' spelling), `host:22` → `host`; lower case. */
function canonicalName(name: string): string | undefined {
  const m = /^\[([^\]]+)\]:(\d{1,5})$/.exec(name) ?? /^([^:[\]]+):(\d{1,5})$/.exec(name);
  if (m) return knownHostsName(m[1]!, Number(m[2]));
  return /^[^\s[\]]+$/.test(name) ? name.toLowerCase() : undefined;
}

/**
 * A rule's `destination`: a `SHA256:` fingerprint, a name known_hosts records for the key (also
 * hashed entries), or a glob over the plain names. A request with no proven destination matches
 * no such rule.
 */
export function destinationMatches(pattern: string, dest: Destination | undefined): boolean {
  if (dest === undefined) return false;
  if (pattern.startsWith('SHA256:')) return pattern === dest.fingerprint;
  if (/[*?]/.test(pattern)) {
    const p = pattern.toLowerCase();
    return dest.names.some((n) => wildcardMatch(p, n.toLowerCase()));
  }
  return dest.knownAs(pattern);
}

/** `github.com (SHA256:…)`, or the fingerprint alone when known_hosts has no plain name for it. */
export function describeDestination(dest: Destination): string {
  return dest.names.length > 0 ? `${dest.names[0]} (${dest.fingerprint})` : dest.fingerprint;
}
