// The holder's end of the sealed channel: each relayed stream is a TLS 1.3 server connection with
// the holder identity's own key and a self-signed certificate for it (which the token pins), and
// the first message inside must prove the token's secret part. Only then is the tunnel served.
// The relay sees TLS records; it can drop or break a stream but not read, forge or replay one.

import 'reflect-metadata'; // @peculiar/x509's dependency injection needs it loaded first.
import * as x509 from '@peculiar/x509';
import {
  createPrivateKey,
  createPublicKey,
  randomBytes,
  webcrypto,
  type KeyObject,
} from 'node:crypto';
import * as path from 'node:path';
import type { Duplex } from 'node:stream';
import tls from 'node:tls';
import {
  SEAL_ACCEPTED,
  SEAL_HANDSHAKE_TIMEOUT_MS,
  SEAL_PROOF_BYTES,
  SEAL_TLS_VERSION,
  certificateEd25519Key,
  describeSealError,
  parseSealProof,
} from '../../protocol/seal.js';
import { tokenSecretHash } from '../../protocol/token.js';
import { ensureHome, readSecretFile, writeSecretFile } from '../home/home.js';
import { IDENTITY_FILE, loadOrCreateIdentity } from '../home/identity.js';

export const SEAL_CERT_FILE = 'seal-cert.pem';
const MAX_CERT_FILE_BYTES = 64 * 1024;

/** What the holder's TLS server needs; made once per agent, used for every stream. */
export interface SealCredentials {
  context: tls.SecureContext;
  /** The certificate (PEM) whose key is the identity's; tests and `status` may show it. */
  certPem: string;
  hpk: Buffer;
}

x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);

async function makeCertificate(key: KeyObject, hid: string): Promise<string> {
  const alg = { name: 'Ed25519' };
  const pkcs8 = key.export({ type: 'pkcs8', format: 'der' });
  const spki = createPublicKey(key).export({ type: 'spki', format: 'der' });
  try {
    const privateKey = await webcrypto.subtle.importKey('pkcs8', pkcs8, alg, false, ['sign']);
    const publicKey = await webcrypto.subtle.importKey('spki', spki, alg, true, ['verify']);
    const cert = await x509.X509CertificateGenerator.createSelfSigned({
      serialNumber: randomBytes(8)
        .toString('hex')
        .replace(/^[89a-f]/, '1'),
      name: `CN=${hid}`,
      // The token pins the key, not the certificate; dates only have to satisfy parsers.
      notBefore: new Date('2020-01-01T00:00:00Z'),
      notAfter: new Date('2999-12-31T00:00:00Z'),
      signingAlgorithm: alg,
      keys: { privateKey, publicKey },
    });
    return cert.toString('pem');
  } finally {
    pkcs8.fill(0);
  }
}

/**
 * Loads the holder's sealing credentials from HOME: the identity key (created on first use) and
 * a certificate for it, cached in `seal-cert.pem` (0600) and remade when it names another key.
 */
export async function loadSealCredentials(home: string): Promise<SealCredentials> {
  await ensureHome(home);
  const identity = await loadOrCreateIdentity(home);
  const pem = await readSecretFile(path.join(home, IDENTITY_FILE));
  let key: KeyObject;
  try {
    key = createPrivateKey({ key: pem, format: 'pem' });
  } finally {
    pem.fill(0);
  }
  const certFile = path.join(home, SEAL_CERT_FILE);
  let certPem: string | undefined;
  try {
    const bytes = await readSecretFile(certFile);
    if (bytes.length <= MAX_CERT_FILE_BYTES) {
      const text = bytes.toString('utf8');
      const der = pemBody(text);
      const k = der ? certificateEd25519Key(der) : undefined;
      if (k?.equals(identity.hpk)) certPem = text;
    }
  } catch {
    // Missing or unreadable: a new one is made below.
  }
  if (!certPem) {
    certPem = await makeCertificate(key, identity.hid);
    await writeSecretFile(certFile, certPem);
  }
  const keyPem = key.export({ type: 'pkcs8', format: 'pem' }) as string;
  const context = tls.createSecureContext({
    key: keyPem,
    cert: certPem,
    minVersion: SEAL_TLS_VERSION,
    maxVersion: SEAL_TLS_VERSION,
  });
  return { context, certPem, hpk: identity.hpk };
}

function pemBody(text: string): Buffer | undefined {
  const m = /-----BEGIN CERTIFICATE-----([A-Za-z0-9+/=\s]+)-----END CERTIFICATE-----/.exec(text);
  return m ? Buffer.from(m[1]!.replace(/\s+/g, ''), 'base64') : undefined;
}

/** Whether a stream may be served at all; `reason` is what the facade is told. */
export type Admission = { ok: true } | { ok: false; reason: string };

/**
 * Calls FN once with the first TLS or stream error of SOCKET after the handshake, then destroys
 * the socket. A server-side TLSSocket made without a tls.Server never "releases control", so
 * node:tls reports its record errors (bad MAC, unexpected message) only as the internal
 * `_tlsError` event and keeps the socket open; both events are watched so no error goes unseen.
 */
export function onSealedError(socket: tls.TLSSocket, fn: (e: Error) => void): void {
  let seen = false;
  const once = (e: Error) => {
    if (seen) return;
    seen = true;
    fn(e);
    socket.destroy(e);
  };
  socket.on('error', once);
  socket.on('_tlsError', once);
}

export type SealAcceptResult =
  { ok: true; socket: tls.TLSSocket; secretHash: string } | { ok: false; reason: string };

export interface SealAcceptOptions {
  credentials: SealCredentials;
  /**
   * Decides whether the proven secret (as its SHA-256 hex) is the token's, and may add why the
   * token is refused anyway (revoked, expired).
   */
  checkSecret(secretHash: string): Promise<Admission>;
  /** Called with the reason before the stream is destroyed on any failure. */
  refuse?(reason: string): void;
  timeoutMs?: number;
}

/**
 * Runs the holder's side of the sealed channel over RAW. Resolves once the facade proved the
 * token's secret (the TLS socket is then ready for the tunnel), or with a one-line reason after
 * destroying the stream; never rejects.
 */
export function acceptSealedStream(
  raw: Duplex,
  opts: SealAcceptOptions,
): Promise<SealAcceptResult> {
  return new Promise((resolve) => {
    const socket = new tls.TLSSocket(raw, {
      isServer: true,
      secureContext: opts.credentials.context,
      requestCert: false,
    });
    let done = false;
    const finish = (r: SealAcceptResult) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.off('readable', onReadable);
      if (!r.ok) {
        opts.refuse?.(r.reason);
        socket.destroy();
        raw.destroy();
      }
      resolve(r);
    };
    const timer = setTimeout(
      () => finish({ ok: false, reason: 'the facade did not complete the handshake in time' }),
      opts.timeoutMs ?? SEAL_HANDSHAKE_TIMEOUT_MS,
    );
    timer.unref();
    // Kept for the socket's life: later TLS errors are the tunnel's to report, never a crash.
    socket.on('error', (e: Error) => finish({ ok: false, reason: describeSealError(e) }));
    socket.on('close', () =>
      finish({ ok: false, reason: 'the stream closed during the handshake' }),
    );
    let checking = false;
    const onReadable = () => {
      if (checking || done) return;
      const msg = socket.read(SEAL_PROOF_BYTES) as Buffer | null;
      if (msg === null) return;
      checking = true;
      const proof = parseSealProof(msg);
      msg.fill(0);
      if (!proof.ok) return finish({ ok: false, reason: proof.error });
      const secretHash = tokenSecretHash(proof.secret);
      proof.secret.fill(0);
      opts.checkSecret(secretHash).then(
        (verdict) => {
          if (!verdict.ok) {
            finish({ ok: false, reason: verdict.reason });
            return;
          }
          if (done) return;
          socket.write(Buffer.of(SEAL_ACCEPTED));
          finish({ ok: true, socket, secretHash });
        },
        (e: unknown) => finish({ ok: false, reason: describeSealError(e) }),
      );
    };
    socket.on('readable', onReadable);
  });
}
