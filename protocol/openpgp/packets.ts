// OpenPGP packet framing (RFC 9580 §4.2): where each packet of a key export starts, what its tag
// is and where its body lies. Values in, values out; every length is checked against the input
// and a limit before anything is sliced.

export class PacketFormatError extends Error {
  /** The tag of the packet being read when the input went wrong, when known. */
  readonly tag: number | undefined;
  /** The first body byte of that packet (a key packet's version), when it was present. */
  readonly version: number | undefined;
  constructor(message: string, tag?: number, version?: number) {
    super(message);
    this.tag = tag;
    this.version = version;
  }
}

export interface RawPacket {
  tag: number;
  /** Offset of the header's first byte. */
  start: number;
  bodyStart: number;
  end: number;
}

export interface PacketLimits {
  maxPackets: number;
  maxBodyBytes: number;
}

function u32(b: Uint8Array, at: number): number {
  return ((b[at]! << 24) >>> 0) + (b[at + 1]! << 16) + (b[at + 2]! << 8) + b[at + 3]!;
}

/** The packets of BYTES in order; a PacketFormatError for anything gpg never writes in a key. */
export function readPackets(bytes: Uint8Array, limits: PacketLimits): RawPacket[] {
  const out: RawPacket[] = [];
  let off = 0;
  while (off < bytes.length) {
    if (out.length >= limits.maxPackets) {
      throw new PacketFormatError(`more than ${limits.maxPackets} packets`);
    }
    const start = off;
    const ctb = bytes[off++]!;
    if ((ctb & 0x80) === 0) throw new PacketFormatError(`no packet header at byte ${start}`);
    let tag: number;
    let length: number;
    const need = (n: number) => {
      if (off + n > bytes.length) {
        throw new PacketFormatError(`packet header at byte ${start} is truncated`);
      }
    };
    if (ctb & 0x40) {
      tag = ctb & 0x3f;
      need(1);
      const l0 = bytes[off++]!;
      if (l0 < 192) length = l0;
      else if (l0 < 224) {
        need(1);
        length = ((l0 - 192) << 8) + bytes[off++]! + 192;
      } else if (l0 === 255) {
        need(4);
        length = u32(bytes, off);
        off += 4;
      } else {
        // Partial lengths belong to streamed data packets, never to a key export.
        throw new PacketFormatError(`packet at byte ${start} has a partial body length`, tag);
      }
    } else {
      tag = (ctb >> 2) & 0x0f;
      const type = ctb & 0x03;
      if (type === 3) {
        throw new PacketFormatError(`packet at byte ${start} has an indeterminate length`, tag);
      }
      const n = 1 << type;
      need(n);
      length = 0;
      for (let i = 0; i < n; i++) length = length * 256 + bytes[off++]!;
    }
    const version = off < bytes.length ? bytes[off] : undefined;
    if (length > limits.maxBodyBytes) {
      throw new PacketFormatError(
        `packet at byte ${start} is ${length} bytes long, more than ${limits.maxBodyBytes}`,
        tag,
        version,
      );
    }
    if (off + length > bytes.length) {
      throw new PacketFormatError(
        `packet at byte ${start} is truncated (${length} bytes announced, ${bytes.length - off} present)`,
        tag,
        version,
      );
    }
    out.push({ tag, start, bodyStart: off, end: off + length });
    off += length;
  }
  return out;
}

/** A new-format packet: header for TAG and BODY's length, then BODY. */
export function encodePacket(tag: number, body: Uint8Array): Buffer {
  const n = body.length;
  let len: Buffer;
  if (n < 192) len = Buffer.of(n);
  else if (n < 8384) len = Buffer.of(((n - 192) >> 8) + 192, (n - 192) & 0xff);
  else {
    len = Buffer.alloc(5);
    len[0] = 255;
    len.writeUInt32BE(n, 1);
  }
  return Buffer.concat([Buffer.of(0xc0 | tag), len, body]);
}
