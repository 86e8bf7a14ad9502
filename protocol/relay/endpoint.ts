// Where a holder or facade connects: the relay prints its base URL as http(s)://…, users may
// also write ws(s)://…; both name the same WebSocket endpoints under /v1/. Also: what makes a
// wss:// relay trusted (CA bundle or pinned certificate fingerprint), as values.

import { displayField } from '../display-text.js';
import { createHash, timingSafeEqual } from 'node:crypto';

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

/**
 * How a holder or facade decides to trust a wss:// relay. Without either field: the system's CAs
 * and the URL's host name, as any HTTPS client. `ca` replaces the system CAs (like curl --cacert).
 * `fingerprint` pins the relay's leaf certificate (SHA-256 of its DER bytes); a pin alone skips
 * CA and host-name checks, as ssh's known_hosts does, since the pin already names the one
 * certificate to accept. Both together: the chain must verify against `ca` AND match the pin.
 */
export interface RelayTrust {
  ca?: string;
  fingerprint?: Uint8Array;
}

/** The `code` of the error a client raises when the relay's certificate is not the pinned one. */
export const RELAY_PIN_MISMATCH = 'ERR_KEYTETHER_RELAY_PIN_MISMATCH';

const MAX_FINGERPRINT_CHARS = 200;

export type FingerprintResult = { ok: true; sha256: Uint8Array } | { ok: false; error: string };

/**
 * A certificate fingerprint as users copy it: `sha256:HEX`, `sha256:BASE64`, plain hex, hex with
 * colons, or the whole line `openssl x509 -noout -fingerprint -sha256` prints
 * (`sha256 Fingerprint=AB:CD:…`).
 */
export function parseRelayFingerprint(text: string): FingerprintResult {
  const usage =
    'must be a SHA-256 certificate fingerprint: sha256:HEX (64 hex digits, colons allowed) or sha256:BASE64';
  if (text.length > MAX_FINGERPRINT_CHARS) return { ok: false, error: `is too long; it ${usage}` };
  let v = text.trim();
  const prefix = /^([A-Za-z0-9-]{1,16})(?::|\s+fingerprint\s*=)\s*(?=[A-Za-z0-9+/_-])/i.exec(v);
  if (prefix && !/^[0-9a-f]{2}$/i.test(prefix[1]!)) {
    if (!/^sha-?256$/i.test(prefix[1]!)) {
      return { ok: false, error: `uses ${prefix[1]}; only SHA-256 fingerprints are supported` };
    }
    v = v.slice(prefix[0].length);
  }
  if (/^[0-9a-f]{2}(?::[0-9a-f]{2}){31}$/i.test(v) || /^[0-9a-f]{64}$/i.test(v)) {
    return { ok: true, sha256: Uint8Array.from(Buffer.from(v.replace(/:/g, ''), 'hex')) };
  }
  if (/^[A-Za-z0-9+/_-]{43}=?$/.test(v)) {
    const b = Buffer.from(v.replace(/-/g, '+').replace(/_/g, '/'), 'base64');
    if (b.length === 32) return { ok: true, sha256: Uint8Array.from(b) };
  }
  return { ok: false, error: usage };
}

/** The form fingerprints are shown in: `sha256:` and 64 lowercase hex digits. */
export function formatRelayFingerprint(sha256: Uint8Array): string {
  return `sha256:${Buffer.from(sha256).toString('hex')}`;
}

/** undefined when `certDer` is the pinned certificate, else the sentence saying it is not. */
export function checkRelayPin(certDer: Uint8Array, pin: Uint8Array): string | undefined {
  const got = createHash('sha256').update(certDer).digest();
  if (got.length === pin.length && timingSafeEqual(got, pin)) return undefined;
  return (
    `the relay's TLS certificate is not the pinned one: expected ${formatRelayFingerprint(pin)}, ` +
    `got ${formatRelayFingerprint(got)}`
  );
}

// OpenSSL's verify results and Node's host-name check: the relay answered, but with a certificate
// this client has no reason to believe. Anything else is a network problem, reported as such.
const UNTRUSTED_CERT_CODES = new Set([
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_DECRYPT_CERT_SIGNATURE',
  'UNABLE_TO_DECODE_ISSUER_PUBLIC_KEY',
  'CERT_SIGNATURE_FAILURE',
  'CERT_NOT_YET_VALID',
  'CERT_HAS_EXPIRED',
  'ERROR_IN_CERT_NOT_BEFORE_FIELD',
  'ERROR_IN_CERT_NOT_AFTER_FIELD',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'CERT_CHAIN_TOO_LONG',
  'CERT_REVOKED',
  'INVALID_CA',
  'PATH_LENGTH_EXCEEDED',
  'INVALID_PURPOSE',
  'CERT_UNTRUSTED',
  'CERT_REJECTED',
  'HOSTNAME_MISMATCH',
  'ERR_TLS_CERT_ALTNAME_INVALID',
]);

/**
 * The one sentence for a connection error that is about trusting the relay's certificate, or
 * undefined for any other error (refused, reset, DNS, …).
 */
export function describeRelayTlsError(e: { code?: unknown; message: string }): string | undefined {
  if (e.code === RELAY_PIN_MISMATCH) return e.message;
  if (typeof e.code !== 'string' || !UNTRUSTED_CERT_CODES.has(e.code)) return undefined;
  const reason = displayField(e.message.replace(/[\r\n\t]+/g, ' '), 200);
  return `cannot trust the relay's TLS certificate (${reason}); pass --relay-ca FILE or --relay-fingerprint sha256:…`;
}

/** The part of a TLS socket the pin check needs (node:tls TLSSocket fits). */
export interface PinnableSocket {
  once(event: 'secureConnect', listener: () => void): unknown;
  getPeerCertificate(): { raw?: Uint8Array };
  destroy(error?: Error): unknown;
}

/** The connect options ws hands to `createConnection` (node:tls ConnectionOptions fits). */
export interface RelayConnectOptions {
  host?: string | undefined;
  path?: string | undefined;
  servername?: string | undefined;
}

/** The TLS options of a WebSocket client (ws ClientOptions) that apply a RelayTrust. */
export interface RelayTlsOptions<O, S> {
  ca?: string;
  rejectUnauthorized?: boolean;
  createConnection?: (options: O) => S;
}

/**
 * WebSocket client options that apply `trust` to the relay at `wsUrl` (nothing for ws:// URLs).
 * `tlsConnect` is node:tls `connect`, handed in so this stays free of I/O. A pin is checked on the
 * TLS socket as soon as its handshake is done, so a relay that is not the pinned one is dropped
 * before the WebSocket upgrade is answered, and long before a token or a holder signature is sent.
 */
export function relayTlsOptions<O extends RelayConnectOptions, S extends PinnableSocket>(
  wsUrl: string,
  trust: RelayTrust | undefined,
  tlsConnect: (options: O) => S,
): RelayTlsOptions<O, S> {
  if (!trust || !wsUrl.startsWith('wss:')) return {};
  const out: RelayTlsOptions<O, S> = {};
  if (trust.ca !== undefined) out.ca = trust.ca;
  const pin = trust.fingerprint;
  if (pin === undefined) return out;
  // With a CA bundle as well, the chain must verify too; a pin alone is the whole check.
  out.rejectUnauthorized = trust.ca !== undefined;
  out.createConnection = (options: O) => {
    // As ws's own TLS connect: `path` is the URL's path, not a socket path; no SNI for an IP.
    options.path = undefined;
    const host = options.host ?? '';
    if (!options.servername && options.servername !== '') {
      options.servername = /^[\d.]+$/.test(host) || host.includes(':') ? '' : host;
    }
    const socket = tlsConnect(options);
    socket.once('secureConnect', () => {
      const raw = socket.getPeerCertificate().raw;
      const why = raw ? checkRelayPin(raw, pin) : 'the relay presented no TLS certificate';
      if (why !== undefined) {
        socket.destroy(Object.assign(new Error(why), { code: RELAY_PIN_MISMATCH }));
      }
    });
    return socket;
  };
  return out;
}
