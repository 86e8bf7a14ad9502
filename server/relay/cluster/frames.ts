// What relay instances say to each other over Redis pub/sub (`keytether relay --redis`) about one
// facade stream that was accepted on one instance (its origin) while its holder is connected to
// another (its owner). One frame per pub/sub message, on the receiving instance's channel:
//
//   byte 0       kind
//   bytes 1..4   stream number, uint32 big-endian, chosen by the origin
//   byte 5       length of the origin's instance id, then the id (ASCII)
//   then         the body: open → JSON LinkOpen; refuse → JSON {code, reason, metric};
//                data → sealed tunnel bytes, as the relay itself sees them; credit → uint32 bytes
//                taken; close → uint16 close code (0: none, 1: cut off) and a UTF-8 reason
//
// The stream's identity is (origin, number). Decoding never throws: a bad frame is a value.

import { z } from 'zod';
import { MAX_CLOSE_REASON_BYTES, truncateUtf8 } from '../../../protocol/relay/mux.js';

export const LinkKind = { Open: 1, Accept: 2, Refuse: 3, Data: 4, Credit: 5, Close: 6 } as const;
export type LinkKind = (typeof LinkKind)[keyof typeof LinkKind];

/** In a close frame: the origin closes the facade with no code of its own (it went away). */
export const CLOSE_NONE = 0;
/** In a close frame: the origin cuts the facade off at once (it did not read its answers). */
export const CLOSE_TERMINATE = 1;

/**
 * Credit is returned in batches of this many bytes, not per message: a signature's few small
 * messages then cost no credit frames at all, and the windows (1 MiB one way, maxBufferedBytes the
 * other) stay far above a batch.
 */
export const CREDIT_BATCH_BYTES = 256 * 1024;

const MAX_INSTANCE_ID = 64;
const MAX_JSON_BODY = 12 * 1024;

export interface LinkFrame {
  kind: LinkKind;
  stream: number;
  origin: string;
  body: Buffer;
}

export interface LinkOpen {
  hid: string;
  tid: string;
  /** The token's public part and the facade's address, as the holder's open frame carries. */
  token: string;
  peer: string;
}

export interface LinkRefusal {
  code: number;
  reason: string;
  /** The refusals-metric reason the origin counts. */
  metric: string;
}

export function refusal(code: number, reason: string, metric: string): LinkRefusal {
  return { code, reason, metric };
}

const OpenSchema = z.strictObject({
  hid: z.string().min(1).max(128),
  tid: z.string().min(1).max(128),
  token: z.string().min(1).max(4096),
  peer: z.string().max(256),
});

const RefusalSchema = z.strictObject({
  code: z.number().int().min(1000).max(4999),
  reason: z.string().max(MAX_CLOSE_REASON_BYTES),
  metric: z.string().regex(/^[a-z_]{1,40}$/),
});

function isKind(n: number): n is LinkKind {
  return n >= LinkKind.Open && n <= LinkKind.Close;
}

export function encodeLink(kind: LinkKind, stream: number, origin: string, body: Uint8Array) {
  const id = Buffer.from(origin, 'ascii');
  if (id.length === 0 || id.length > MAX_INSTANCE_ID) throw new RangeError('bad instance id');
  const out = Buffer.allocUnsafe(6 + id.length + body.length);
  out[0] = kind;
  out.writeUInt32BE(stream, 1);
  out[5] = id.length;
  id.copy(out, 6);
  out.set(body, 6 + id.length);
  return out;
}

export function decodeLink(buf: Buffer): LinkFrame | { error: string } {
  if (buf.length < 7) return { error: 'link frame is shorter than its header' };
  const kind = buf[0] as number;
  if (!isKind(kind)) return { error: `link frame kind ${kind} is unknown` };
  const idLen = buf[5] as number;
  if (idLen === 0 || idLen > MAX_INSTANCE_ID || buf.length < 6 + idLen) {
    return { error: 'link frame has a bad instance id' };
  }
  return {
    kind,
    stream: buf.readUInt32BE(1),
    origin: buf.subarray(6, 6 + idLen).toString('ascii'),
    body: buf.subarray(6 + idLen),
  };
}

function parseJson<T>(body: Buffer, schema: z.ZodType<T>): T | undefined {
  if (body.length > MAX_JSON_BODY) return undefined;
  try {
    const r = schema.safeParse(JSON.parse(body.toString('utf8')));
    return r.success ? r.data : undefined;
  } catch {
    return undefined;
  }
}

export const openBody = (o: LinkOpen): Buffer => Buffer.from(JSON.stringify(o), 'utf8');
export const parseOpen = (body: Buffer): LinkOpen | undefined => parseJson(body, OpenSchema);

export const refusalBody = (r: LinkRefusal): Buffer =>
  Buffer.from(
    JSON.stringify({ ...r, reason: truncateUtf8(r.reason, MAX_CLOSE_REASON_BYTES).toString() }),
  );
export const parseRefusal = (body: Buffer): LinkRefusal | undefined =>
  parseJson(body, RefusalSchema);

export function creditBody(bytes: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32BE(Math.min(bytes, 0xffffffff));
  return b;
}
export const parseCredit = (body: Buffer): number | undefined =>
  body.length === 4 ? body.readUInt32BE(0) : undefined;

export function closeBody(code: number, reason: string): Buffer {
  const r = truncateUtf8(reason, MAX_CLOSE_REASON_BYTES);
  const b = Buffer.allocUnsafe(2 + r.length);
  b.writeUInt16BE(code);
  r.copy(b, 2);
  return b;
}
export function parseClose(body: Buffer): { code: number; reason: string } | undefined {
  if (body.length < 2 || body.length > 2 + MAX_CLOSE_REASON_BYTES) return undefined;
  return { code: body.readUInt16BE(0), reason: body.subarray(2).toString('utf8') };
}
