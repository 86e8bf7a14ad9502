// The destination of one SSH connection as the user names it: `[USER@]HOST`, `ssh://…` URIs and
// ProxyJump's `[USER@]HOST[:PORT]` hops, checked the way OpenSSH checks them.

import { UsageError, UserError } from '../../system/user-error.js';

// OpenSSH's valid_hostname()/valid_ruser() refuse these so a name can never smuggle shell syntax
// into a ProxyCommand or a `%h` expansion.
export const FORBIDDEN_NAME_CHARS = /[\s\x00-\x1f\x7f'`"$\\;&<>|(){}]/;
/** More hops than anyone routes through: a longer chain is a ProxyJump loop in the config. */
export const MAX_JUMP_HOPS = 8;

export interface ParsedTarget {
  user: string | undefined;
  host: string;
  port: number | undefined;
}

/** Splits `[USER@]HOST` (the last `@` separates, as in OpenSSH) or `ssh://[USER@]HOST[:PORT]`. */
export function parseTarget(target: string): ParsedTarget {
  let rest = target;
  let port: number | undefined;
  if (/^ssh:\/\//i.test(rest)) {
    rest = rest.slice('ssh://'.length).replace(/\/$/, '');
    const m = /^(.*?)(?::(\d+))?$/.exec(rest);
    if (m?.[2] !== undefined) {
      port = parsePort(m[2], 'the port in ' + target);
      rest = m[1] ?? '';
    }
  }
  const at = rest.lastIndexOf('@');
  const user = at >= 0 ? rest.slice(0, at) : undefined;
  let host = at >= 0 ? rest.slice(at + 1) : rest;
  if (host.startsWith('[') && host.endsWith(']')) host = host.slice(1, -1);
  if (host === '')
    throw new UsageError(`no host name in ${JSON.stringify(target)}; use [USER@]HOST`);
  if (host.startsWith('-') || FORBIDDEN_NAME_CHARS.test(host) || host.length > 255) {
    throw new UsageError(`${JSON.stringify(host)} is not a valid host name`);
  }
  if (user !== undefined && (user === '' || FORBIDDEN_NAME_CHARS.test(user) || user.length > 255)) {
    throw new UsageError(`${JSON.stringify(user)} is not a valid remote user name`);
  }
  return { user, host, port };
}

export function parsePort(text: string, what: string): number {
  const n = /^\d{1,5}$/.test(text.trim()) ? Number(text.trim()) : NaN;
  if (!Number.isInteger(n) || n < 1 || n > 65535) {
    throw new UsageError(
      `${what} must be a port number from 1 to 65535, not ${JSON.stringify(text)}`,
    );
  }
  return n;
}

/**
 * ProxyJump's value (or -J's): `[USER@]HOST[:PORT]` or `ssh://[USER@]HOST[:PORT]`, comma
 * separated, in the order they are passed through. `none` is the caller's to handle.
 */
export function parseJumpSpec(spec: string, what: string): ParsedTarget[] {
  const parts = spec.split(',').map((p) => p.trim());
  if (parts.length > MAX_JUMP_HOPS) {
    throw new UsageError(`${what} names more than ${MAX_JUMP_HOPS} jump hosts`);
  }
  return parts.map((part) => {
    if (part === '') throw new UsageError(`${what} ${JSON.stringify(spec)} has an empty host`);
    if (/^ssh:\/\//i.test(part)) return parseTarget(part);
    const at = part.lastIndexOf('@');
    const userPart = at >= 0 ? part.slice(0, at + 1) : '';
    let hostPort = part.slice(at + 1);
    let port: number | undefined;
    // `host:port` and `[v6]:port`; a bare IPv6 address has more than one colon and no port.
    const m = /^(\[[^\]]*\]|[^:]*):(\d*)$/.exec(hostPort);
    if (m) {
      port = parsePort(m[2] ?? '', `the port in ${what} ${JSON.stringify(part)}`);
      hostPort = m[1] ?? '';
    }
    return { ...parseTarget(userPart + hostPort), ...(port !== undefined ? { port } : {}) };
  });
}

/** Expands `%%`, `%h`, `%n`, `%p`, `%r`, `%u`, `%d`, `%i`, `%l`, `%L` as OpenSSH does for paths. */
export function expandTokens(text: string, tokens: Record<string, string>, what: string): string {
  return text.replace(/%(.)?/g, (_all, c: string | undefined) => {
    if (c === '%') return '%';
    const v = c === undefined ? undefined : tokens[c];
    if (v === undefined) {
      throw new UserError(`${what} ${JSON.stringify(text)} uses an unsupported %-token`);
    }
    return v;
  });
}
