// Where a holder or facade connects: the relay prints its base URL as http(s)://…, users may
// also write ws(s)://…; both name the same WebSocket endpoints under /v1/.

export type RelayRole = 'holder' | 'facade';

export type EndpointResult = { ok: true; url: string } | { ok: false; error: string };

const MAX_URL_CHARS = 2048;

function isLoopback(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '').toLowerCase();
  return h === 'localhost' || h === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h);
}

/**
 * The WebSocket URL of `/v1/<role>` under the relay base `base`. Plain ws:// (or http://) leaves
 * the token's public part and all routing metadata readable on the wire, so it is only accepted
 * for loopback relays unless `insecure` is set.
 */
export function relayEndpoint(base: string, role: RelayRole, insecure = false): EndpointResult {
  if (base.length > MAX_URL_CHARS) return { ok: false, error: 'the relay URL is too long' };
  let u: URL;
  try {
    u = new URL(base);
  } catch {
    return {
      ok: false,
      error: `'${base.slice(0, 200)}' is not a URL; use the URL the relay printed`,
    };
  }
  const scheme = { 'http:': 'ws:', 'ws:': 'ws:', 'https:': 'wss:', 'wss:': 'wss:' }[u.protocol];
  if (!scheme) {
    return { ok: false, error: `the relay URL must start with https://, wss://, http:// or ws://` };
  }
  if (scheme === 'ws:' && !insecure && !isLoopback(u.hostname)) {
    return {
      ok: false,
      error: `refusing an unencrypted connection to the relay at ${u.host}; use https:// or pass --insecure`,
    };
  }
  if (u.username || u.password) {
    return { ok: false, error: 'the relay URL must not contain a user name or password' };
  }
  u.protocol = scheme;
  u.pathname = `${u.pathname.replace(/\/+$/, '')}/v1/${role}`;
  u.search = '';
  u.hash = '';
  return { ok: true, url: u.toString() };
}
