// Conversions between the byte strings OpenPGP and S-expressions carry and what Node's JWK import
// and BigInt arithmetic want.

export function b64url(v: Uint8Array): string {
  return Buffer.from(v.buffer, v.byteOffset, v.length).toString('base64url');
}

export function toBigInt(v: Uint8Array): bigint {
  return v.length === 0
    ? 0n
    : BigInt('0x' + Buffer.from(v.buffer, v.byteOffset, v.length).toString('hex'));
}

export function fromBigInt(v: bigint): Buffer {
  let h = v.toString(16);
  if (h.length % 2) h = '0' + h;
  return Buffer.from(h, 'hex');
}

/**
 * V as exactly SIZE bytes: leading zeros dropped or added. Undefined when the number needs more.
 * MPIs arrive both as STD (extra 00) and minimal, so every consumer normalises through this.
 */
export function fixedLength(v: Uint8Array, size: number): Buffer | undefined {
  let i = 0;
  while (i < v.length && v[i] === 0) i++;
  const len = v.length - i;
  if (len > size) return undefined;
  const out = Buffer.alloc(size);
  out.set(v.subarray(i), size - len);
  return out;
}

/** Copies V into a Buffer this module owns, so destroy() can zero it without touching the caller's. */
export function own(v: Uint8Array): Buffer {
  return Buffer.from(v);
}
