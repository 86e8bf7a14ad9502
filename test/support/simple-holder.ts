// A real KeyHolder for protocol tests that needs no keystore: fresh Ed25519 (sign) and X25519
// (decrypt) keys from Node's crypto, with libgcrypt-compatible keygrips and READKEY S-exps.
// Signatures and shared secrets are genuine, so tests can verify them independently.

import {
  createPublicKey,
  diffieHellman,
  generateKeyPairSync,
  sign as cryptoSign,
  type KeyObject,
} from 'node:crypto';
import { ErrorCode, GpgError } from '../../protocol/gpg-error.js';
import type {
  DecryptRequest,
  DecryptResult,
  Inventory,
  KeyEntry,
  KeyHolder,
  SignRequest,
  SshSignRequest,
} from '../../protocol/keyholder.js';
import { keygrip, publicKeySexp } from '../../protocol/keygrip.js';
import { encodeSexp, atom, findList, parseSexp } from '../../protocol/sexp.js';

export interface SimpleKey {
  entry: KeyEntry;
  kind: 'ed25519' | 'x25519';
  privateKey: KeyObject;
  publicKey: KeyObject;
  /** Raw 32-byte public value (RFC 8032 / RFC 7748 encoding). */
  publicRaw: Buffer;
}

function rawPublic(key: KeyObject): Buffer {
  const jwk = key.export({ format: 'jwk' });
  if (typeof jwk.x !== 'string') throw new Error('not an OKP key');
  return Buffer.from(jwk.x, 'base64url');
}

function makeKey(kind: 'ed25519' | 'x25519', fingerprint: string): SimpleKey {
  const { privateKey, publicKey } =
    kind === 'ed25519' ? generateKeyPairSync('ed25519') : generateKeyPairSync('x25519');
  const publicRaw = rawPublic(publicKey);
  const q = Buffer.concat([Buffer.of(0x40), publicRaw]);
  const params = { kind: 'ecc', curve: kind === 'ed25519' ? 'Ed25519' : 'Curve25519', q } as const;
  const entry: KeyEntry = {
    keygrip: keygrip(params),
    fingerprint,
    primaryFingerprint: '',
    algorithm: kind === 'ed25519' ? 'ed25519' : 'cv25519',
    usage: kind === 'ed25519' ? ['certify', 'sign'] : ['encrypt'],
    publicKey: publicKeySexp(params),
    protection: 'C',
  };
  return { entry, kind, privateKey, publicKey, publicRaw };
}

export class SimpleHolder implements KeyHolder {
  readonly signKey: SimpleKey;
  readonly decryptKey: SimpleKey;
  /** Entries the holder lists but cannot use (e.g. a card key), for KEYINFO tests. */
  readonly extraEntries: KeyEntry[];
  readonly signRequests: SignRequest[] = [];
  readonly decryptRequests: DecryptRequest[] = [];
  /** Thrown by the next sign/decrypt instead of doing the operation. */
  nextError: unknown;
  /** Awaited before each sign/decrypt, with the request's signal (e.g. to hold it open). */
  beforeOperation: ((signal?: AbortSignal) => Promise<void>) | undefined;

  constructor(opts: { extraEntries?: KeyEntry[] } = {}) {
    this.signKey = makeKey('ed25519', 'A'.repeat(40));
    this.decryptKey = makeKey('x25519', 'B'.repeat(40));
    this.signKey.entry.primaryFingerprint = this.signKey.entry.fingerprint;
    this.decryptKey.entry.primaryFingerprint = this.signKey.entry.fingerprint;
    this.extraEntries = opts.extraEntries ?? [];
  }

  async inventory(): Promise<Inventory> {
    return {
      keys: [this.signKey.entry, this.decryptKey.entry, ...this.extraEntries],
      certificates: [],
    };
  }

  private async gate(signal?: AbortSignal): Promise<void> {
    await this.beforeOperation?.(signal);
    const e = this.nextError;
    if (e !== undefined) {
      this.nextError = undefined;
      throw e;
    }
  }

  async sign(req: SignRequest, signal?: AbortSignal): Promise<Uint8Array> {
    this.signRequests.push({ ...req, digest: Buffer.from(req.digest) });
    await this.gate(signal);
    if (req.keygrip !== this.signKey.entry.keygrip) throw new GpgError(ErrorCode.NO_SECKEY);
    // OpenPGP EdDSA signs the digest bytes as the message (reference §4.2).
    const rs = cryptoSign(null, req.digest, this.signKey.privateKey);
    return encodeSexp([
      atom('sig-val'),
      [atom('eddsa'), [atom('r'), rs.subarray(0, 32)], [atom('s'), rs.subarray(32)]],
    ]);
  }

  async decrypt(req: DecryptRequest, signal?: AbortSignal): Promise<DecryptResult> {
    this.decryptRequests.push({ ...req, ciphertext: Buffer.from(req.ciphertext) });
    await this.gate(signal);
    if (req.keygrip !== this.decryptKey.entry.keygrip) throw new GpgError(ErrorCode.NO_SECKEY);
    const parsed = parseSexp(req.ciphertext);
    if (!parsed.ok) throw new GpgError(ErrorCode.INV_SEXP);
    const e = findList(parsed.value, 'e')?.[1];
    if (!Buffer.isBuffer(e) || e.length !== 33 || e[0] !== 0x40) {
      throw new GpgError(ErrorCode.INV_DATA);
    }
    const ephemeral = createPublicKey({
      key: { kty: 'OKP', crv: 'X25519', x: e.subarray(1).toString('base64url') },
      format: 'jwk',
    });
    const shared = diffieHellman({ privateKey: this.decryptKey.privateKey, publicKey: ephemeral });
    // What a real agent returns for cv25519: the shared point with its 0x40 prefix (§4.4).
    const value = Buffer.concat([Buffer.of(0x40), shared]);
    shared.fill(0);
    return { value };
  }
}

/** A SimpleHolder whose Ed25519 key also authenticates, signing ssh-agent requests as they come. */
export class SshSimpleHolder extends SimpleHolder {
  readonly sshRequests: SshSignRequest[] = [];

  constructor(opts: { extraEntries?: KeyEntry[] } = {}) {
    super(opts);
    this.signKey.entry.usage = ['sign', 'auth'];
  }

  async sshSign(req: SshSignRequest, signal?: AbortSignal): Promise<Uint8Array> {
    this.sshRequests.push({ ...req, data: Buffer.from(req.data) });
    await this.beforeOperation?.(signal);
    const e = this.nextError;
    if (e !== undefined) {
      this.nextError = undefined;
      throw e;
    }
    if (req.keygrip !== this.signKey.entry.keygrip) throw new GpgError(ErrorCode.NO_SECKEY);
    const rs = cryptoSign(null, req.data, this.signKey.privateKey);
    return encodeSexp([
      atom('sig-val'),
      [atom('eddsa'), [atom('r'), rs.subarray(0, 32)], [atom('s'), rs.subarray(32)]],
    ]);
  }
}
