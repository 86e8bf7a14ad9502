// A decrypted secret key, ready for the two raw operations gpg-agent performs. The keystore builds
// one from OpenPGP key material after the passphrase check; callers must destroy() it when the
// cache lets go of it.

import type { DecryptResult } from '../../protocol/keyholder.js';
import type { CurveName } from '../../protocol/keygrip.js';
import { CURVES } from '../../protocol/curves.js';
import { gpgErr } from '../../protocol/gpg-error.js';
import { RsaKey } from './rsa-key.js';
import { EdDsaKey } from './eddsa-key.js';
import { WeierstrassKey } from './weierstrass-key.js';
import { XdhKey } from './xdh-key.js';

export interface UnlockedKey {
  readonly keygrip: string;
  readonly algorithm: string;
  /** Canonical `(7:sig-val…)` over DIGEST, made with hash id HASHALGO (SETHASH numbering). */
  sign(hashAlgo: number, digest: Uint8Array): Buffer;
  /**
   * PureEdDSA over DATA itself, as SSH's ssh-ed25519 signs (RFC 8709): only EdDSA keys have it,
   * the others sign a digest the caller made.
   */
  signMessage?(data: Uint8Array): Buffer;
  /** The value gpg expects back for a canonical `(7:enc-val…)`. */
  decrypt(encVal: Uint8Array): DecryptResult;
  /** Zeroes the secret bytes this object holds; afterwards every operation fails. */
  destroy(): void;
}

/**
 * Secret key material in OpenPGP's own conventions (the bytes of the secret-key packet's MPIs):
 * RSA has p < q and u = p⁻¹ mod q; Curve25519's d is big-endian (reversed against RFC 7748),
 * X448's native; q is the public point exactly as the packet holds it (0x40-prefixed for the
 * 25519 curves, bare for the 448 ones).
 */
export type SecretKeyMaterial =
  | {
      kind: 'rsa';
      n: Uint8Array;
      e: Uint8Array;
      d: Uint8Array;
      p: Uint8Array;
      q: Uint8Array;
      u: Uint8Array;
    }
  | { kind: 'eddsa'; curve: CurveName; q: Uint8Array; seed: Uint8Array }
  | { kind: 'ecdsa' | 'ecdh'; curve: CurveName; q: Uint8Array; d: Uint8Array };

/** Builds the key; the material is copied, so the caller should zero its own copy afterwards. */
export function createUnlockedKey(
  keygrip: string,
  algorithm: string,
  m: SecretKeyMaterial,
): UnlockedKey {
  switch (m.kind) {
    case 'rsa':
      return new RsaKey(keygrip, algorithm, m);
    case 'eddsa':
      if (m.curve !== 'Ed25519' && m.curve !== 'Ed448') break;
      return new EdDsaKey(keygrip, algorithm, m.curve, m.q, m.seed);
    case 'ecdh':
      if (m.curve === 'Curve25519' || m.curve === 'X448')
        return new XdhKey(keygrip, algorithm, m.curve, m.q, m.d);
      if (m.curve === 'Ed25519' || m.curve === 'Ed448') break;
      return new WeierstrassKey(keygrip, algorithm, m.curve, m.q, m.d, 'ecdh');
    case 'ecdsa':
      if (CURVES[m.curve].model !== 'weierstrass') break;
      return new WeierstrassKey(keygrip, algorithm, m.curve, m.q, m.d, 'ecdsa');
  }
  throw gpgErr('UNSUPPORTED_ALGORITHM', `${algorithm} keys are not supported`);
}
