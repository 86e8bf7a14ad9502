// The relay's TLS certificate: checked before it is used, swapped in place on reload. A reload
// that fails keeps the certificate being served: a typo in a renewal script must not take the
// relay down or make it serve nothing.

import { X509Certificate, createPrivateKey } from 'node:crypto';
import type { Server as HttpsServer } from 'node:https';
import { createSecureContext } from 'node:tls';

export interface TlsPair {
  cert: string | Buffer;
  key: string | Buffer;
}

export interface CertificateSummary {
  subject: string;
  /** When the certificate stops being valid, in ms since the epoch. */
  notAfter: number;
  /** `sha256:<hex>` of the DER, the form `--relay-fingerprint` takes. */
  fingerprint: string;
}

/**
 * Checks that CERT parses, that KEY is its private key and that OpenSSL accepts the pair; throws
 * an Error whose message is one sentence without any of the key's bytes.
 */
export function checkTlsPair(pair: TlsPair): CertificateSummary {
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(pair.cert);
  } catch {
    throw new Error('the TLS certificate is not a PEM certificate');
  }
  let matches: boolean;
  try {
    matches = cert.checkPrivateKey(createPrivateKey(pair.key));
  } catch {
    throw new Error('the TLS key is not a PEM private key (or it is encrypted)');
  }
  if (!matches) throw new Error('the TLS key does not belong to the certificate');
  try {
    createSecureContext({ cert: pair.cert, key: pair.key });
  } catch {
    throw new Error('OpenSSL refuses the TLS certificate and key together');
  }
  return {
    subject: cert.subject.replace(/\n/g, ', '),
    notAfter: Date.parse(cert.validTo),
    fingerprint: `sha256:${cert.fingerprint256.replace(/:/g, '').toLowerCase()}`,
  };
}

/**
 * New connections get PAIR from now on; connections already open keep the session they have.
 * Throws (see checkTlsPair) and changes nothing when the pair is not usable.
 */
export function replaceCertificate(server: HttpsServer, pair: TlsPair): CertificateSummary {
  const summary = checkTlsPair(pair);
  server.setSecureContext({ cert: pair.cert, key: pair.key });
  return summary;
}
