// Parsing the `(7:enc-val…)` gpg hands over in PKDECRYPT (reference §4.3). The input is untrusted:
// every failure is a GpgError, never an exception from deeper down.

import { gpgErr } from '../../protocol/gpg-error.js';
import { atomText, isList, parseSexp, type Sexp } from '../../protocol/sexp.js';

export type EncVal = { algo: 'rsa'; a: Buffer } | { algo: 'ecdh'; e: Buffer } | { algo: 'elg' };

const LIMITS = { maxDepth: 8, maxBytes: 16 * 1024, maxAtomBytes: 8 * 1024 };

function param(list: Sexp[], name: string): Buffer | undefined {
  for (const item of list.slice(1)) {
    if (isList(item) && atomText(item[0]) === name) {
      const v = item[1];
      return v !== undefined && Buffer.isBuffer(v) ? v : undefined;
    }
  }
  return undefined;
}

export function parseEncVal(input: Uint8Array): EncVal {
  const parsed = parseSexp(input, LIMITS);
  if (!parsed.ok) throw gpgErr('INV_SEXP', parsed.error);
  const top = parsed.value;
  if (!isList(top) || atomText(top[0]) !== 'enc-val') {
    throw gpgErr('INV_SEXP', 'ciphertext is not an enc-val');
  }
  // gpg may put a (flags …) list before the algorithm list; skip it and take the first other one.
  const body = top.slice(1).find((x): x is Sexp[] => isList(x) && atomText(x[0]) !== 'flags');
  const algo = body ? atomText(body[0]) : undefined;
  if (body === undefined || algo === undefined)
    throw gpgErr('INV_SEXP', 'enc-val names no algorithm');
  if (algo === 'rsa') {
    const a = param(body, 'a');
    if (!a) throw gpgErr('INV_DATA', 'RSA ciphertext has no value a');
    return { algo, a };
  }
  if (algo === 'ecdh') {
    const e = param(body, 'e');
    if (!e) throw gpgErr('INV_DATA', 'ECDH ciphertext has no ephemeral point e');
    return { algo, e };
  }
  if (algo === 'elg') return { algo };
  throw gpgErr('UNSUPPORTED_ALGORITHM', `ciphertext algorithm ${algo.slice(0, 20)}`);
}
