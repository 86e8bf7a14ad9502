// Host key verification against OpenSSH known_hosts files, so `keytether ssh` trusts exactly the
// hosts that `ssh` trusts and records new ones in the same place and format.

import { createHash, createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { mkdir, open, readFile, stat } from 'node:fs/promises';
import path from 'node:path';

/** Bigger files are not read at all: a known_hosts file is a few KiB, rarely a few MiB. */
export const MAX_KNOWN_HOSTS_BYTES = 16 * 1024 * 1024;
/** Longer lines are skipped: the biggest plain RSA key line is under 3 KiB. */
export const MAX_KNOWN_HOSTS_LINE = 32 * 1024;

export type HostKeyStatus = 'match' | 'unknown' | 'changed' | 'revoked';

export interface HostKeyCheck {
  status: HostKeyStatus;
  /** `SHA256:…` exactly as `ssh-keygen -l` prints it. */
  fingerprint: string;
  /** The key type inside the blob (`ssh-ed25519`, `ecdsa-sha2-nistp256`, `ssh-rsa`, …). */
  keyType: string;
  /** For `match`, `changed` and `revoked`: the line that decided it (1-based). */
  file?: string;
  line?: number;
  /** Other key types recorded for this host (OpenSSH prefers them when negotiating). */
  knownKeyTypes: string[];
  /** Files that exist but could not be used, lines skipped; for diagnostics only. */
  warnings: string[];
}

/** `SHA256:` + unpadded base64 of SHA-256 over the key blob, as OpenSSH prints it. */
export function fingerprint(keyBlob: Buffer): string {
  return 'SHA256:' + createHash('sha256').update(keyBlob).digest('base64').replace(/=+$/, '');
}

/** The first SSH string of a public key blob is its type; null when the blob is malformed. */
export function blobKeyType(keyBlob: Buffer): string | null {
  if (keyBlob.length < 4) return null;
  const len = keyBlob.readUInt32BE(0);
  if (len === 0 || len > 64 || 4 + len > keyBlob.length) return null;
  const type = keyBlob.subarray(4, 4 + len).toString('latin1');
  return /^[\x21-\x7e]+$/.test(type) ? type : null;
}

/** The name known_hosts records for a host: `host` on port 22, `[host]:port` elsewhere. */
export function knownHostsName(host: string, port: number): string {
  const h = host.toLowerCase();
  return port === 22 ? h : `[${h}]:${port}`;
}

export interface KnownHostEntry {
  marker: 'revoked' | 'cert-authority' | null;
  hosts: string;
  keyType: string | null;
  blob: Buffer;
  line: number;
}

type ParsedLine = { entry: KnownHostEntry } | { skip: true } | { error: string };

function parseLine(text: string, lineNo: number): ParsedLine {
  const trimmed = text.trim();
  if (trimmed === '' || trimmed.startsWith('#')) return { skip: true };
  if (text.length > MAX_KNOWN_HOSTS_LINE) return { error: `line ${lineNo} is too long` };
  const fields = trimmed.split(/[ \t]+/);
  let marker: KnownHostEntry['marker'] = null;
  if (fields[0]?.startsWith('@')) {
    const m = fields.shift();
    if (m === '@revoked') marker = 'revoked';
    else if (m === '@cert-authority') marker = 'cert-authority';
    else return { error: `line ${lineNo} has an unknown marker` };
  }
  const [hosts, , b64] = fields;
  if (hosts === undefined || b64 === undefined) return { error: `line ${lineNo} is malformed` };
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(b64)) return { error: `line ${lineNo} has a malformed key` };
  const blob = Buffer.from(b64, 'base64');
  return { entry: { marker, hosts, keyType: blobKeyType(blob), blob, line: lineNo } };
}

/** Shell-style `*` and `?` matching without regular expressions (no backtracking blow-up). */
export function wildcardMatch(pattern: string, text: string): boolean {
  let p = 0;
  let t = 0;
  let starP = -1;
  let starT = 0;
  while (t < text.length) {
    const pc = pattern[p];
    if (pc === '?' || (pc !== undefined && pc !== '*' && pc === text[t])) {
      p++;
      t++;
    } else if (pc === '*') {
      starP = p++;
      starT = t;
    } else if (starP >= 0) {
      p = starP + 1;
      t = ++starT;
    } else {
      return false;
    }
  }
  while (pattern[p] === '*') p++;
  return p === pattern.length;
}

function hashedMatch(field: string, name: string): boolean {
  // |1|base64(salt)|base64(HMAC-SHA1(salt, name))
  const parts = field.split('|');
  if (parts.length !== 4 || parts[1] !== '1') return false;
  const salt = Buffer.from(parts[2] ?? '', 'base64');
  const want = Buffer.from(parts[3] ?? '', 'base64');
  if (salt.length === 0 || want.length !== 20) return false;
  const got = createHmac('sha1', salt).update(name).digest();
  return timingSafeEqual(got, want);
}

/** OpenSSH semantics: any matching negated pattern vetoes the line; otherwise any positive match. */
export function hostsMatch(hosts: string, name: string): boolean {
  if (hosts.startsWith('|')) return hashedMatch(hosts, name);
  let matched = false;
  for (const raw of hosts.split(',')) {
    const negated = raw.startsWith('!');
    const pattern = (negated ? raw.slice(1) : raw).toLowerCase();
    if (pattern === '') continue;
    if (wildcardMatch(pattern, name)) {
      if (negated) return false;
      matched = true;
    }
  }
  return matched;
}

export async function readKnownHosts(file: string, warnings: string[]): Promise<KnownHostEntry[]> {
  let text: string;
  try {
    const st = await stat(file);
    if (!st.isFile()) return [];
    if (st.size > MAX_KNOWN_HOSTS_BYTES) {
      warnings.push(`${file} is larger than ${MAX_KNOWN_HOSTS_BYTES} bytes and was not read`);
      return [];
    }
    text = await readFile(file, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code !== 'ENOENT' && code !== 'ENOTDIR') {
      warnings.push(`${file} could not be read (${code ?? 'error'})`);
    }
    return [];
  }
  return parseKnownHosts(text, file, warnings);
}

/** The usable lines of a known_hosts file's text; each unusable one adds a warning. */
export function parseKnownHosts(text: string, file: string, warnings: string[]): KnownHostEntry[] {
  const entries: KnownHostEntry[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const parsed = parseLine(lines[i] ?? '', i + 1);
    if ('entry' in parsed) entries.push(parsed.entry);
    else if ('error' in parsed) warnings.push(`${file}: ${parsed.error}`);
  }
  return entries;
}

/**
 * Decides whether `keyBlob` is the recorded key of host:port. Precedence follows OpenSSH: a
 * revoked key always loses, any matching line wins, a recorded key of the same type that differs
 * means the key changed, otherwise the host is unknown. `@cert-authority` lines are not supported
 * and never match.
 */
export async function checkHostKey(
  files: readonly string[],
  host: string,
  port: number,
  keyType: string,
  keyBlob: Buffer,
  opts: CheckHostKeyOptions = {},
): Promise<HostKeyCheck> {
  const res = await checkName(files, host, port, keyType, keyBlob);
  // OpenSSH: a host with no entry at all for [host]:port is also looked up without the port,
  // and accepted if that matches (never when a [host]:port entry exists and differs).
  if (res.status === 'unknown' && port !== 22 && !opts.noPortFallback) {
    const bare = await checkName(files, host, 22, keyType, keyBlob);
    if (bare.status === 'match') return bare;
  }
  return res;
}

export interface CheckHostKeyOptions {
  /** No port-less fallback (OpenSSH skips it when HostKeyAlias is set). */
  noPortFallback?: boolean;
}

async function checkName(
  files: readonly string[],
  host: string,
  port: number,
  keyType: string,
  keyBlob: Buffer,
): Promise<HostKeyCheck> {
  const warnings: string[] = [];
  const sources: KnownHostsSource[] = [];
  for (const file of files) sources.push({ file, entries: await readKnownHosts(file, warnings) });
  return decideHostKey(sources, host, port, keyType, keyBlob, warnings);
}

export interface KnownHostsSource {
  file: string;
  entries: readonly KnownHostEntry[];
}

/** checkHostKey's decision for one name, over files already parsed (without the port fallback). */
export function decideHostKey(
  sources: readonly KnownHostsSource[],
  host: string,
  port: number,
  keyType: string,
  keyBlob: Buffer,
  warnings: string[] = [],
): HostKeyCheck {
  const type = blobKeyType(keyBlob) ?? keyType;
  const name = knownHostsName(host, port);
  const known = new Set<string>();
  let revoked: { file: string; line: number } | undefined;
  let match: { file: string; line: number } | undefined;
  let changed: { file: string; line: number } | undefined;
  for (const { file, entries } of sources) {
    for (const e of entries) {
      if (e.marker === 'cert-authority' || !hostsMatch(e.hosts, name)) continue;
      if (e.marker === 'revoked') {
        if (!revoked && e.blob.equals(keyBlob)) revoked = { file, line: e.line };
        continue;
      }
      if (e.keyType) known.add(e.keyType);
      if (e.blob.equals(keyBlob)) match ??= { file, line: e.line };
      else if (e.keyType === type) changed ??= { file, line: e.line };
    }
  }
  const base = { fingerprint: fingerprint(keyBlob), keyType: type, warnings };
  const others = [...known].filter((t) => t !== type);
  if (revoked) return { status: 'revoked', ...revoked, knownKeyTypes: [...known], ...base };
  if (match) return { status: 'match', ...match, knownKeyTypes: [...known], ...base };
  if (changed) return { status: 'changed', ...changed, knownKeyTypes: [...known], ...base };
  return { status: 'unknown', knownKeyTypes: others, ...base };
}

/** Key types recorded for host:port across the files (to prefer them in key exchange). */
export async function knownHostKeyTypes(
  files: readonly string[],
  host: string,
  port: number,
): Promise<string[]> {
  const name = knownHostsName(host, port);
  const types = new Set<string>();
  for (const file of files) {
    for (const e of await readKnownHosts(file, [])) {
      if (e.marker === null && e.keyType && hostsMatch(e.hosts, name)) types.add(e.keyType);
    }
  }
  return [...types];
}

export interface AppendKnownHostOptions {
  /** Write the host name hashed (`|1|salt|hash`), as `HashKnownHosts yes` does. */
  hash?: boolean;
}

/** Records host:port's key (for `--accept-new`); creates the directory 0700 and the file 0600. */
export async function appendKnownHost(
  file: string,
  host: string,
  port: number,
  keyType: string,
  keyBlob: Buffer,
  opts: AppendKnownHostOptions = {},
): Promise<void> {
  const type = blobKeyType(keyBlob) ?? keyType;
  if (!/^[\x21-\x7e]+$/.test(type)) throw new Error('refusing to record a malformed key type');
  const name = knownHostsName(host, port);
  if (!/^[\x21-\x7e]+$/.test(name) || /[,|]/.test(name) || name.startsWith('@')) {
    throw new Error(`refusing to record a malformed host name ${JSON.stringify(host)}`);
  }
  let hostField = name;
  if (opts.hash) {
    const salt = randomBytes(20);
    const mac = createHmac('sha1', salt).update(name).digest();
    hostField = `|1|${salt.toString('base64')}|${mac.toString('base64')}`;
  }
  await mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
  const fh = await open(file, 'a+', 0o600);
  try {
    const { size } = await fh.stat();
    let prefix = '';
    if (size > 0) {
      const last = Buffer.alloc(1);
      await fh.read(last, 0, 1, size - 1);
      if (last[0] !== 0x0a) prefix = '\n';
    }
    await fh.appendFile(`${prefix}${hostField} ${type} ${keyBlob.toString('base64')}\n`);
    await fh.sync();
  } finally {
    await fh.close();
  }
}
