// Keys as gpg's colon listing names them (`gpg -K --with-colons --with-keygrip`, doc/DETAILS):
// for the parts openpgp.js cannot parse — gpg 2.4's v5 Ed448 and X448 keys — the listing still
// gives each part's fingerprint, keygrip, capabilities and curve, and gpg-agent's READKEY the
// public key itself.

import type { KeyUsage } from '../../protocol/keyholder.js';

export interface ColonKey {
  keygrip: string;
  fingerprint: string;
  primaryFingerprint: string;
  /** `ed448`, `cv448`, `rsa3072`… */
  algorithm: string;
  usage: KeyUsage[];
}

export interface ColonCertificate {
  fingerprint: string;
  userIds: string[];
  parts: ColonKey[];
}

const USAGE: Record<string, KeyUsage> = { c: 'certify', s: 'sign', e: 'encrypt', a: 'auth' };
const MAX_USER_ID_CHARS = 2048;

/** `\x3a` and friends, as DETAILS escapes user ids. */
function unescapeField(s: string): string {
  return s.replace(/\\x([0-9a-fA-F]{2})/g, (_, h: string) => String.fromCharCode(parseInt(h, 16)));
}

/** Every certificate in a colon listing, with its parts in listing order. */
export function parseColonListing(text: string): ColonCertificate[] {
  const certs: ColonCertificate[] = [];
  let cert: ColonCertificate | undefined;
  let part: Partial<ColonKey> | undefined;
  let expect: 'fpr' | 'grp' | undefined;
  const finish = (): void => {
    if (cert && part?.keygrip && part.fingerprint) cert.parts.push(part as ColonKey);
    part = undefined;
  };
  for (const line of text.split('\n')) {
    const f = line.split(':');
    const type = f[0];
    if (type === 'sec' || type === 'ssb') {
      finish();
      if (type === 'sec') {
        cert = { fingerprint: '', userIds: [], parts: [] };
        certs.push(cert);
      }
      // Field 12: the part's own capabilities in lower case (upper case: the whole key's).
      const caps = [...(f[11] ?? '')].filter((c) => c >= 'a' && c <= 'z');
      const curve = f[16] ?? '';
      const bits = f[2] ?? '';
      part = {
        usage: [...new Set(caps.flatMap((c) => (USAGE[c] ? [USAGE[c]] : [])))],
        algorithm: curve !== '' ? curve : f[3] === '1' ? `rsa${bits}` : `algo${f[3] ?? '?'}`,
      };
      expect = 'fpr';
    } else if (type === 'fpr' && part && expect === 'fpr') {
      part.fingerprint = (f[9] ?? '').toUpperCase();
      if (cert && cert.fingerprint === '') cert.fingerprint = part.fingerprint;
      part.primaryFingerprint = cert?.fingerprint ?? part.fingerprint;
      expect = 'grp';
    } else if (type === 'grp' && part && expect === 'grp') {
      part.keygrip = (f[9] ?? '').toUpperCase();
      expect = undefined;
    } else if (type === 'uid' && cert) {
      cert.userIds.push(unescapeField(f[9] ?? '').slice(0, MAX_USER_ID_CHARS));
    }
  }
  finish();
  return certs.filter((c) => /^([0-9A-F]{40}|[0-9A-F]{64})$/.test(c.fingerprint));
}
