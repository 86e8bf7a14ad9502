// Mux frames: how the relay carries many facade streams over one holder WebSocket
// (relay-protocol.md, "Routing"). One frame per binary WebSocket message:
//
//   byte 0      kind (1 open, 2 data, 3 close)
//   bytes 1..4  stream id, uint32 big-endian
//   bytes 5..   open  → UTF-8 JSON {"token":"<public part>","peer":"<remote address>"}
//               data  → raw tunnel bytes
//               close → UTF-8 reason, at most 200 bytes
//
// Both the relay and the holder's relay client use this module, so it is pure and decoding never
// throws: a bad frame is a value the caller refuses.

import { z } from 'zod';

export const MuxKind = { Open: 1, Data: 2, Close: 3 } as const;
export type MuxKind = (typeof MuxKind)[keyof typeof MuxKind];

export const MUX_HEADER_BYTES = 5;
export const MAX_STREAM_ID = 0xffffffff;
export const MAX_CLOSE_REASON_BYTES = 200;
// A token's public part is at most 4096 chars and a peer address is short; anything much larger
// in an open frame is not one.
export const MAX_OPEN_PAYLOAD_BYTES = 8192;

export interface MuxFrame {
  kind: MuxKind;
  streamId: number;
  payload: Buffer;
}

function isKind(n: number): n is MuxKind {
  return n === MuxKind.Open || n === MuxKind.Data || n === MuxKind.Close;
}

/**
 * One frame as bytes. Throws RangeError for a kind, stream id or payload the spec does not allow:
 * those are the caller's bugs, not input to be refused.
 */
export function encodeMux(kind: MuxKind, streamId: number, payload: Uint8Array): Buffer {
  if (!isKind(kind)) throw new RangeError(`mux kind ${String(kind)} is not 1, 2 or 3`);
  if (!Number.isInteger(streamId) || streamId < 0 || streamId > MAX_STREAM_ID) {
    throw new RangeError('mux stream id must be a uint32');
  }
  if (kind === MuxKind.Close && payload.length > MAX_CLOSE_REASON_BYTES) {
    throw new RangeError(`mux close reason is longer than ${MAX_CLOSE_REASON_BYTES} bytes`);
  }
  if (kind === MuxKind.Open && payload.length > MAX_OPEN_PAYLOAD_BYTES) {
    throw new RangeError(`mux open payload is longer than ${MAX_OPEN_PAYLOAD_BYTES} bytes`);
  }
  const out = Buffer.allocUnsafe(MUX_HEADER_BYTES + payload.length);
  out[0] = kind;
  out.writeUInt32BE(streamId, 1);
  out.set(payload, MUX_HEADER_BYTES);
  return out;
}

/**
 * Parses one frame. The payload is a view into `buf`, not a copy. `maxDataBytes` caps data
 * payloads (the WebSocket layer normally caps the whole message already).
 */
export function decodeMux(buf: Uint8Array, maxDataBytes = Infinity): MuxFrame | { error: string } {
  if (buf.length < MUX_HEADER_BYTES) return { error: 'mux frame is shorter than its header' };
  const b = Buffer.from(buf.buffer, buf.byteOffset, buf.length);
  const kind = b[0] as number;
  if (!isKind(kind)) return { error: `mux frame kind ${kind} is not 1, 2 or 3` };
  const streamId = b.readUInt32BE(1);
  const payload = b.subarray(MUX_HEADER_BYTES);
  if (kind === MuxKind.Close && payload.length > MAX_CLOSE_REASON_BYTES) {
    return { error: `mux close reason is longer than ${MAX_CLOSE_REASON_BYTES} bytes` };
  }
  if (kind === MuxKind.Open && payload.length > MAX_OPEN_PAYLOAD_BYTES) {
    return { error: `mux open payload is longer than ${MAX_OPEN_PAYLOAD_BYTES} bytes` };
  }
  if (kind === MuxKind.Data && payload.length > maxDataBytes) {
    return { error: `mux data payload is longer than ${maxDataBytes} bytes` };
  }
  return { kind, streamId, payload };
}

export interface MuxOpen {
  /** The token's public part, `kt1.<payload>.<sig>`, as the facade presented it. */
  token: string;
  /** The facade's remote address as the relay saw it. */
  peer: string;
}

const MuxOpenSchema = z.strictObject({
  token: z.string().min(1).max(4096),
  peer: z.string().max(256),
});

export function encodeMuxOpen(streamId: number, open: MuxOpen): Buffer {
  return encodeMux(MuxKind.Open, streamId, Buffer.from(JSON.stringify(open), 'utf8'));
}

/** The JSON body of an open frame. */
export function parseMuxOpen(payload: Uint8Array): MuxOpen | { error: string } {
  if (payload.length > MAX_OPEN_PAYLOAD_BYTES) return { error: 'mux open payload is too long' };
  let json: unknown;
  try {
    json = JSON.parse(Buffer.from(payload.buffer, payload.byteOffset, payload.length).toString());
  } catch {
    return { error: 'mux open payload is not JSON' };
  }
  const r = MuxOpenSchema.safeParse(json);
  return r.success ? r.data : { error: 'mux open payload is not {"token","peer"}' };
}

/** A close frame; the reason is cut to 200 bytes without splitting a UTF-8 character. */
export function encodeMuxClose(streamId: number, reason: string): Buffer {
  return encodeMux(MuxKind.Close, streamId, truncateUtf8(reason, MAX_CLOSE_REASON_BYTES));
}

/** The longest prefix of `text` whose UTF-8 encoding fits in `max` bytes. */
export function truncateUtf8(text: string, max: number): Buffer {
  const b = Buffer.from(text, 'utf8');
  if (b.length <= max) return b;
  let end = max;
  // Back off over continuation bytes (10xxxxxx) so the cut lands on a character boundary.
  while (end > 0 && ((b[end] as number) & 0xc0) === 0x80) end--;
  return b.subarray(0, end);
}
