// A holder identity for the token and relay targets: a real Ed25519 key from node:crypto, so
// generated tokens and auth answers carry genuine signatures.

import { generateKeyPairSync, sign } from 'node:crypto';
import { holderIdFromPublicKey } from '../../protocol/relay/identity.js';

const { privateKey, publicKey } = generateKeyPairSync('ed25519');
const x = publicKey.export({ format: 'jwk' }).x;
if (typeof x !== 'string') throw new Error('no Ed25519 public key');

export const fuzzIdentity = {
  hpk: Buffer.from(x, 'base64url'),
  hid: holderIdFromPublicKey(Buffer.from(x, 'base64url')),
  sign: (bytes: Uint8Array): Buffer => sign(null, bytes, privateKey),
};
