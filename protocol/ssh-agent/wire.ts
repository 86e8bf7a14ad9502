// The ssh-agent wire format (draft-miller-ssh-agent): each message is a uint32 length, a type
// byte and a body of SSH strings and integers (RFC 4251 §5). Values only; the session reads them.

/** OpenSSH's own agent refuses messages over 256 KiB; a signature request never needs more. */
export const MAX_MESSAGE_BYTES = 256 * 1024;

export const MSG = {
  FAILURE: 5,
  SUCCESS: 6,
  REQUEST_IDENTITIES: 11,
  IDENTITIES_ANSWER: 12,
  SIGN_REQUEST: 13,
  SIGN_RESPONSE: 14,
  ADD_IDENTITY: 17,
  REMOVE_IDENTITY: 18,
  REMOVE_ALL_IDENTITIES: 19,
  ADD_SMARTCARD_KEY: 20,
  REMOVE_SMARTCARD_KEY: 21,
  LOCK: 22,
  UNLOCK: 23,
  ADD_ID_CONSTRAINED: 25,
  ADD_SMARTCARD_KEY_CONSTRAINED: 26,
  EXTENSION: 27,
  EXTENSION_FAILURE: 28,
} as const;

export const SIGN_FLAGS = { RSA_SHA2_256: 2, RSA_SHA2_512: 4 } as const;

export class WireError extends Error {}

/** Reads SSH values from one message body; every read is bounds-checked. */
export class SshReader {
  private pos = 0;
  constructor(private readonly buf: Buffer) {}

  get done(): boolean {
    return this.pos === this.buf.length;
  }

  byte(): number {
    if (this.pos + 1 > this.buf.length) throw new WireError('truncated message');
    return this.buf[this.pos++]!;
  }

  uint32(): number {
    if (this.pos + 4 > this.buf.length) throw new WireError('truncated message');
    const v = this.buf.readUInt32BE(this.pos);
    this.pos += 4;
    return v;
  }

  string(): Buffer {
    const len = this.uint32();
    if (len > this.buf.length - this.pos) throw new WireError('string runs past the message');
    const v = this.buf.subarray(this.pos, this.pos + len);
    this.pos += len;
    return v;
  }

  text(): string {
    const v = this.string();
    const s = v.toString('utf8');
    if (!Buffer.from(s, 'utf8').equals(v)) throw new WireError('string is not UTF-8');
    return s;
  }

  rest(): Buffer {
    const v = this.buf.subarray(this.pos);
    this.pos = this.buf.length;
    return v;
  }

  end(): void {
    if (!this.done) throw new WireError('trailing bytes in message');
  }
}

export function sshString(v: Uint8Array | string): Buffer {
  const b = typeof v === 'string' ? Buffer.from(v, 'utf8') : Buffer.from(v);
  const len = Buffer.alloc(4);
  len.writeUInt32BE(b.length);
  return Buffer.concat([len, b]);
}

export function sshUint32(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v);
  return b;
}

/** An unsigned big-endian integer as an SSH mpint: no leading zeros, a 0 byte if the top bit is set. */
export function sshMpint(v: Uint8Array): Buffer {
  let i = 0;
  while (i < v.length && v[i] === 0) i++;
  const trimmed = Buffer.from(v.subarray(i));
  return sshString(
    trimmed.length > 0 && trimmed[0]! & 0x80 ? Buffer.concat([Buffer.from([0]), trimmed]) : trimmed,
  );
}

/** One framed message: uint32 length, then type and body. */
export function frame(type: number, ...body: Buffer[]): Buffer {
  const payload = Buffer.concat([Buffer.from([type]), ...body]);
  return Buffer.concat([sshUint32(payload.length), payload]);
}

export type FrameResult = { kind: 'message'; type: number; body: Buffer } | { kind: 'oversize' };

/**
 * Splits a byte stream into messages. A length over the limit cannot be skipped safely (the
 * peer may be streaming gigabytes), so it ends the connection after a FAILURE.
 */
export class MessageReader {
  private chunks: Buffer[] = [];
  private size = 0;

  push(chunk: Buffer): FrameResult[] {
    this.chunks.push(chunk);
    this.size += chunk.length;
    const out: FrameResult[] = [];
    let buf = Buffer.concat(this.chunks);
    for (;;) {
      if (buf.length < 4) break;
      const len = buf.readUInt32BE(0);
      if (len === 0 || len > MAX_MESSAGE_BYTES) {
        out.push({ kind: 'oversize' });
        buf = Buffer.alloc(0);
        break;
      }
      if (buf.length < 4 + len) break;
      out.push({ kind: 'message', type: buf[4]!, body: Buffer.from(buf.subarray(5, 4 + len)) });
      buf = buf.subarray(4 + len);
    }
    this.chunks = buf.length > 0 ? [buf] : [];
    this.size = buf.length;
    return out;
  }
}
