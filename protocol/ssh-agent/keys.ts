// SSH public key blobs and signatures (RFC 4253 §6.6, RFC 5656, RFC 8332, RFC 8709) built from
// the holder's S-expressions: a key's `(10:public-key…)` and a signature's `(7:sig-val…)`.

import type { PublicKeyParams } from '../keygrip.js';
import { atom, encodeSexp, findList, mpiUsg, parseSexp, type Sexp } from '../sexp.js';
import { SshReader, sshMpint, sshString, WireError } from './wire.js';

export type SshHash = 'sha1' | 'sha256' | 'sha384' | 'sha512';

export interface SshPublicKey {
  /** `ssh-ed25519`, `ecdsa-sha2-nistp256`, `ssh-rsa`… */
  type: string;
  blob: Buffer;
  /** The hash the signature covers: EdDSA hashes internally (`undefined`), ECDSA per curve. */
  hash?: SshHash;
}

const NIST: Record<string, { id: string; hash: SshHash }> = {
  'NIST P-256': { id: 'nistp256', hash: 'sha256' },
  'NIST P-384': { id: 'nistp384', hash: 'sha384' },
  'NIST P-521': { id: 'nistp521', hash: 'sha512' },
  nistp256: { id: 'nistp256', hash: 'sha256' },
  nistp384: { id: 'nistp384', hash: 'sha384' },
  nistp521: { id: 'nistp521', hash: 'sha512' },
};

function value(list: Sexp, name: string): Buffer | undefined {
  const l = findList(list, name);
  const v = l?.[1];
  return v !== undefined && Buffer.isBuffer(v) ? v : undefined;
}

/** The SSH form of a holder key, or undefined for a key SSH cannot use (Brainpool, Curve25519). */
export function sshPublicKey(publicKey: Uint8Array): SshPublicKey | undefined {
  const parsed = parseSexp(publicKey);
  if (!parsed.ok) return undefined;
  const root = parsed.value;
  const rsa = findList(root, 'rsa');
  if (rsa) {
    const n = value(rsa, 'n');
    const e = value(rsa, 'e');
    if (!n || !e) return undefined;
    return {
      type: 'ssh-rsa',
      blob: Buffer.concat([sshString('ssh-rsa'), sshMpint(e), sshMpint(n)]),
    };
  }
  const ecc = findList(root, 'ecc');
  if (!ecc) return undefined;
  const curve = value(ecc, 'curve')?.toString('latin1');
  const q = value(ecc, 'q');
  if (!curve || !q) return undefined;
  if (curve === 'Ed25519' || curve === 'ed25519') {
    const point = q.length === 33 && q[0] === 0x40 ? q.subarray(1) : q;
    if (point.length !== 32) return undefined;
    return {
      type: 'ssh-ed25519',
      blob: Buffer.concat([sshString('ssh-ed25519'), sshString(point)]),
    };
  }
  const nist = NIST[curve];
  if (!nist || q[0] !== 0x04) return undefined;
  const type = `ecdsa-sha2-${nist.id}`;
  return {
    type,
    blob: Buffer.concat([sshString(type), sshString(nist.id), sshString(q)]),
    hash: nist.hash,
  };
}

/**
 * The SSH signature blob for a holder `(7:sig-val…)`. RSA's s is left-padded to the modulus
 * size, as RFC 8332 requires and OpenSSH checks.
 */
export function sshSignature(
  key: SshPublicKey,
  rsaAlgo: 'rsa-sha2-256' | 'rsa-sha2-512' | 'ssh-rsa',
  modulusBytes: number,
  sigVal: Uint8Array,
): Buffer {
  const parsed = parseSexp(sigVal);
  if (!parsed.ok) throw new Error('the holder returned a malformed signature');
  const root = parsed.value;
  if (key.type === 'ssh-rsa') {
    const s = mpiUsg(value(root, 's') ?? Buffer.alloc(0));
    if (s.length === 0 || s.length > modulusBytes) throw new Error('malformed RSA signature');
    const padded = Buffer.concat([Buffer.alloc(modulusBytes - s.length), s]);
    return Buffer.concat([sshString(rsaAlgo), sshString(padded)]);
  }
  const r = value(root, 'r');
  const s = value(root, 's');
  if (!r || !s) throw new Error('malformed signature');
  if (key.type === 'ssh-ed25519') {
    const fixed = (v: Buffer): Buffer =>
      Buffer.concat([Buffer.alloc(Math.max(0, 32 - v.length)), v]);
    return Buffer.concat([sshString(key.type), sshString(Buffer.concat([fixed(r), fixed(s)]))]);
  }
  return Buffer.concat([sshString(key.type), sshString(Buffer.concat([sshMpint(r), sshMpint(s)]))]);
}

/** Bytes of an RSA key's modulus, from its SSH blob. */
export function rsaModulusBytes(publicKey: Uint8Array): number {
  const parsed = parseSexp(publicKey);
  if (!parsed.ok) return 0;
  return mpiUsg(value(parsed.value, 'n') ?? Buffer.alloc(0)).length;
}

const NIST_CURVES: Record<string, 'NIST P-256' | 'NIST P-384' | 'NIST P-521'> = {
  nistp256: 'NIST P-256',
  nistp384: 'NIST P-384',
  nistp521: 'NIST P-521',
};

/**
 * An SSH public key blob as the holder names keys: the public parameters (for the keygrip and
 * the `(10:public-key…)`) and an algorithm label. Undefined for types keytether does not sign
 * with (certificates, security keys, DSA).
 */
export function publicKeyFromBlob(
  blob: Uint8Array,
): { params: PublicKeyParams; algorithm: string } | undefined {
  try {
    const r = new SshReader(Buffer.from(blob));
    const type = r.text();
    if (type === 'ssh-ed25519') {
      const point = r.string();
      r.end();
      if (point.length !== 32) return undefined;
      const q = Buffer.concat([Buffer.from([0x40]), point]);
      return { params: { kind: 'ecc', curve: 'Ed25519', q }, algorithm: 'ed25519' };
    }
    if (type.startsWith('ecdsa-sha2-')) {
      const id = r.text();
      const q = r.string();
      r.end();
      const curve = NIST_CURVES[id];
      if (!curve || type !== `ecdsa-sha2-${id}` || q[0] !== 0x04) return undefined;
      return { params: { kind: 'ecc', curve, q }, algorithm: id };
    }
    if (type === 'ssh-rsa') {
      const e = mpiUsg(r.string());
      const n = mpiUsg(r.string());
      r.end();
      if (n.length < 128 || e.length === 0) return undefined;
      return { params: { kind: 'rsa', n, e }, algorithm: `rsa${n.length * 8}` };
    }
    return undefined;
  } catch {
    return undefined;
  }
}

/** The holder's `(7:sig-val…)` for an SSH signature blob (the inverse of sshSignature). */
export function sigValFromSsh(signature: Uint8Array): Buffer {
  const r = new SshReader(Buffer.from(signature));
  const type = r.text();
  const sig = r.string();
  r.end();
  if (type === 'ssh-ed25519') {
    if (sig.length !== 64) throw new WireError('malformed ssh-ed25519 signature');
    return encodeSexp([
      atom('sig-val'),
      [atom('eddsa'), [atom('r'), sig.subarray(0, 32)], [atom('s'), sig.subarray(32)]],
    ]);
  }
  if (type.startsWith('ecdsa-sha2-nistp')) {
    const rs = new SshReader(sig);
    const rv = mpiUsg(rs.string());
    const sv = mpiUsg(rs.string());
    rs.end();
    return encodeSexp([atom('sig-val'), [atom('ecdsa'), [atom('r'), rv], [atom('s'), sv]]]);
  }
  if (type === 'rsa-sha2-256' || type === 'rsa-sha2-512' || type === 'ssh-rsa') {
    return encodeSexp([atom('sig-val'), [atom('rsa'), [atom('s'), mpiUsg(sig)]]]);
  }
  throw new WireError(`unexpected signature type ${type}`);
}
