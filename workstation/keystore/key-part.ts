// What the keystore knows about one OpenPGP (sub)key without unlocking it: the names gpg shows,
// the keygrip gpg computes, what the key may be used for, and whether its secret is present here.

import type * as openpgp from 'openpgp';
import type { KeyUsage } from '../../protocol/keyholder.js';
import {
  curveFromOid,
  keygrip as computeKeygrip,
  oidToDotted,
  type CurveName,
  type PublicKeyParams,
} from '../../protocol/keygrip.js';
import type { SecretKeyMaterial } from '../crypto/unlocked-key.js';

type KeyPacket = openpgp.Key['keyPacket'] | openpgp.Subkey['keyPacket'];

export interface KeyPart {
  fingerprint: string;
  primaryFingerprint: string;
  isPrimary: boolean;
  /** gpg's spelling: rsa3072, ed25519, cv25519, nistp256, brainpoolP256r1… */
  algorithm: string;
  /** Undefined for algorithms whose keygrip is not known here (Ed448, X448…). */
  keygrip: string | undefined;
  publicKey: PublicKeyParams | undefined;
  /** Undefined when the builtin store cannot use the secret (DSA, ElGamal): gpg-agent can. */
  materialKind: SecretKeyMaterial['kind'] | undefined;
  /**
   * Usage as words, in gpg's order (certify, sign, encrypt, auth) — words rather than gpg's
   * letters because `keys list --json` is read by scripts and the KeyHolder types use them.
   */
  usage: KeyUsage[];
  /** False for gnu-dummy stubs (e.g. `gpg --export-secret-subkeys`) and unparseable material. */
  secret: boolean;
  /** P: passphrase-protected, C: stored in the clear. */
  protection: 'P' | 'C';
}

// OpenPGP public-key algorithm ids (RFC 9580 §9.1).
const RSA_IDS = new Set([1, 2, 3]);
const ECDH = 18;
const ECDSA = 19;
const EDDSA_LEGACY = 22;
const ED25519 = 27;
const ELGAMAL_IDS = new Set([16, 20]);
const DSA = 17;

const FALLBACK_NAMES: Record<number, string> = {
  16: 'elg',
  17: 'dsa',
  20: 'elg',
  25: 'x25519',
  26: 'x448',
  28: 'ed448',
};

const CURVE_ALGO_NAMES: Record<CurveName, string> = {
  Ed25519: 'ed25519',
  Curve25519: 'cv25519',
  Ed448: 'ed448',
  X448: 'cv448',
  'NIST P-256': 'nistp256',
  'NIST P-384': 'nistp384',
  'NIST P-521': 'nistp521',
  brainpoolP256r1: 'brainpoolP256r1',
  brainpoolP384r1: 'brainpoolP384r1',
  brainpoolP512r1: 'brainpoolP512r1',
};

function bytesParam(params: object, name: string): Uint8Array | undefined {
  const v = (params as Record<string, unknown>)[name];
  return v instanceof Uint8Array ? v : undefined;
}

function bitLength(n: Uint8Array): number {
  let i = 0;
  while (i < n.length && n[i] === 0) i++;
  if (i === n.length) return 0;
  return (n.length - i - 1) * 8 + (32 - Math.clz32(n[i]!));
}

function curveOf(params: object): CurveName | undefined {
  const oid = (params as { oid?: { oid?: unknown } }).oid?.oid;
  if (!(oid instanceof Uint8Array)) return undefined;
  const dotted = oidToDotted(oid);
  return dotted === undefined ? undefined : curveFromOid(dotted);
}

interface AlgorithmInfo {
  algorithm: string;
  publicKey: PublicKeyParams | undefined;
  materialKind: SecretKeyMaterial['kind'] | undefined;
}

export function describeAlgorithm(packet: KeyPacket): AlgorithmInfo {
  const algo = packet.algorithm as number;
  const params = packet.publicParams;
  if (RSA_IDS.has(algo)) {
    const n = bytesParam(params, 'n');
    const e = bytesParam(params, 'e');
    if (!n || !e) return { algorithm: 'rsa', publicKey: undefined, materialKind: undefined };
    return {
      algorithm: `rsa${bitLength(n)}`,
      publicKey: { kind: 'rsa', n, e },
      materialKind: 'rsa',
    };
  }
  if (algo === ED25519) {
    // RFC 9580 Ed25519 carries the bare 32-byte point; libgcrypt sees it 0x40-prefixed.
    const a = bytesParam(params, 'A');
    const q = a ? Buffer.concat([Buffer.of(0x40), a]) : undefined;
    return {
      algorithm: 'ed25519',
      publicKey: q ? { kind: 'ecc', curve: 'Ed25519', q } : undefined,
      materialKind: q ? 'eddsa' : undefined,
    };
  }
  if (algo === ECDH || algo === ECDSA || algo === EDDSA_LEGACY) {
    const curve = curveOf(params);
    const q = bytesParam(params, 'Q');
    if (!curve || !q) return { algorithm: 'ecc', publicKey: undefined, materialKind: undefined };
    const kind = algo === ECDH ? 'ecdh' : algo === ECDSA ? 'ecdsa' : 'eddsa';
    return {
      algorithm: CURVE_ALGO_NAMES[curve],
      publicKey: { kind: 'ecc', curve, q },
      materialKind: kind,
    };
  }
  if (algo === DSA || ELGAMAL_IDS.has(algo)) {
    const p = bytesParam(params, 'p');
    const q = bytesParam(params, 'q');
    const g = bytesParam(params, 'g');
    const y = bytesParam(params, 'y');
    const name = algo === DSA ? 'dsa' : 'elg';
    if (!p || !g || !y || (algo === DSA && !q)) {
      return { algorithm: name, publicKey: undefined, materialKind: undefined };
    }
    return {
      algorithm: `${name}${bitLength(p)}`,
      publicKey: algo === DSA ? { kind: 'dsa', p, q: q!, g, y } : { kind: 'elg', p, g, y },
      materialKind: undefined,
    };
  }
  return {
    algorithm: FALLBACK_NAMES[algo] ?? `algo${algo}`,
    publicKey: undefined,
    materialKind: undefined,
  };
}

export function flagsToUsage(flags: number): KeyUsage[] {
  const out: KeyUsage[] = [];
  if (flags & 0x01) out.push('certify');
  if (flags & 0x02) out.push('sign');
  if (flags & 0x0c) out.push('encrypt');
  if (flags & 0x20) out.push('auth');
  return out;
}

type Sig = { keyFlags: Uint8Array | null; created: Date | null };

/** Key flags of the newest signature that states them. */
function newestFlags(sigs: Sig[]): number | undefined {
  let best: Sig | undefined;
  for (const s of sigs) {
    if (!s.keyFlags || s.keyFlags.length === 0) continue;
    if (!best || (s.created?.getTime() ?? 0) >= (best.created?.getTime() ?? 0)) best = s;
  }
  return best?.keyFlags?.[0];
}

export function defaultUsage(
  kind: SecretKeyMaterial['kind'] | undefined,
  isPrimary: boolean,
): KeyUsage[] {
  const base: KeyUsage[] = isPrimary ? ['certify'] : [];
  if (kind === 'ecdh') return ['encrypt'];
  if (kind === 'rsa') return [...base, 'sign', ...(isPrimary ? [] : (['encrypt'] as KeyUsage[]))];
  return [...base, 'sign'];
}

function usageOf(
  key: openpgp.Key,
  sub: openpgp.Subkey | undefined,
  kind: SecretKeyMaterial['kind'] | undefined,
): KeyUsage[] {
  // Signatures are the user's own export; they are read, not verified, so that old or expired
  // keys still list (gpg-agent does not judge validity either).
  let flags: number | undefined;
  if (sub) {
    flags = newestFlags(sub.bindingSignatures);
  } else {
    const direct = (key as unknown as { directSignatures?: Sig[] }).directSignatures ?? [];
    flags = newestFlags([...direct, ...key.users.flatMap((u) => u.selfCertifications)]);
  }
  return flags === undefined ? defaultUsage(kind, !sub) : flagsToUsage(flags);
}

export function describePart(key: openpgp.Key, sub?: openpgp.Subkey): KeyPart {
  const packet = sub ? sub.keyPacket : key.keyPacket;
  const info = describeAlgorithm(packet);
  let keygrip: string | undefined;
  if (info.publicKey) {
    try {
      keygrip = computeKeygrip(info.publicKey);
    } catch {
      keygrip = undefined;
    }
  }
  const secretPacket = packet as Partial<openpgp.SecretKeyPacket>;
  const hasSecret =
    typeof secretPacket.isMissingSecretKeyMaterial === 'function' &&
    !secretPacket.isMissingSecretKeyMaterial();
  return {
    fingerprint: packet.getFingerprint().toUpperCase(),
    primaryFingerprint: key.getFingerprint().toUpperCase(),
    isPrimary: !sub,
    algorithm: info.algorithm,
    keygrip,
    publicKey: keygrip ? info.publicKey : undefined,
    materialKind: keygrip ? info.materialKind : undefined,
    usage: usageOf(key, sub, info.materialKind),
    secret: hasSecret,
    // s2kUsage 0 means the secret MPIs are stored in the clear.
    protection: (packet as { s2kUsage?: number }).s2kUsage === 0 ? 'C' : 'P',
  };
}

export function describeKey(key: openpgp.Key): KeyPart[] {
  return [describePart(key), ...key.subkeys.map((s) => describePart(key, s))];
}

/** Copies the decrypted secret MPIs of PACKET into the shape the crypto layer takes. */
export function secretMaterial(part: KeyPart, packet: KeyPacket): SecretKeyMaterial | undefined {
  const priv = (packet as { privateParams?: object | null }).privateParams;
  const pub = part.publicKey;
  if (!priv || !pub) return undefined;
  const b = (name: string) => bytesParam(priv, name);
  if (part.materialKind === 'rsa' && pub.kind === 'rsa') {
    const d = b('d'),
      p = b('p'),
      q = b('q'),
      u = b('u');
    if (!d || !p || !q || !u) return undefined;
    return { kind: 'rsa', n: pub.n, e: pub.e, d, p, q, u };
  }
  if (pub.kind !== 'ecc') return undefined;
  if (part.materialKind === 'eddsa') {
    const seed = b('seed');
    return seed ? { kind: 'eddsa', curve: pub.curve, q: pub.q, seed } : undefined;
  }
  if (part.materialKind === 'ecdsa' || part.materialKind === 'ecdh') {
    const d = b('d');
    return d ? { kind: part.materialKind, curve: pub.curve, q: pub.q, d } : undefined;
  }
  return undefined;
}
