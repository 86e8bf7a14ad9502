// Tunnel messages and their encoding inside a frame (framing.ts).
//
// Payload layout: [u8 format = 1][u32 BE header length][JSON header][body bytes].
// The JSON header is parsed by a strict zod schema per message type. The one large byte field a
// message may carry (digest, ciphertext, sig-val, decrypted value) travels raw as the body rather
// than base64 inside the JSON: it costs no encoding work on the hot path, and a decrypted session
// key then never becomes an immutable JS string that cannot be wiped. Public bytes inside the
// inventory (READKEY S-expressions) are base64 in the JSON; they are public and sent rarely.
// JSON keeps every message readable in a hex dump and trivially validated; a signature's
// messages are a few hundred bytes, which encode and parse in microseconds.
//
// The hello message's layout is frozen (format byte 1, these field names) so that any two
// versions can always read each other's hello and explain a version mismatch.

import { z } from 'zod';
import { GIT_OBJECT_LIMITS } from '../git/object-bundle.js';
import { MAX_CONTENT_BYTES, MAX_PARENTS } from '../keyholder.js';

export const FRAME_FORMAT_JSON = 1;
const PAYLOAD_HEAD_BYTES = 5;

export const LIMITS = {
  digestBytes: 64,
  ciphertextBytes: 8 * 1024,
  sigValBytes: 4 * 1024,
  decryptedBytes: 4 * 1024,
  publicKeyBytes: 8 * 1024,
  descriptionChars: 2 * 1024,
  inventoryKeys: 1000,
  certificates: 1000,
  armoredChars: 256 * 1024,
  userIds: 100,
  userIdChars: 1024,
  reasonChars: 500,
  errorMessageChars: 200,
  /** One `content` frame's body: a payload travels in pieces, so no frame gets large. */
  contentChunkBytes: 256 * 1024,
  contentBytes: MAX_CONTENT_BYTES,
  contentNameChars: 1024,
  /** A commit's git objects, on top of its payload (same `content` frames, part `objects`). */
  gitObjectBytes: GIT_OBJECT_LIMITS.bundleBytes,
  /** An ssh-agent SIGN_REQUEST's data: the whole ssh-agent message is at most this large. */
  sshDataBytes: 256 * 1024,
  sshSubjectChars: 1024,
  /** An SSH key's comment (ssh-keygen writes user@host; 1024 is the keystore's own cap). */
  keyCommentChars: 1024,
} as const;

const MAX_ID = 0xffffffff;

const hex = (min: number, max: number) =>
  z.string().regex(new RegExp(`^[0-9A-F]{${min},${max}}$`), 'expected uppercase hex');
const keygrip = hex(40, 40);
const fingerprint = z
  .string()
  .regex(/^([0-9A-F]{40}|[0-9A-F]{64}|[0-9A-F]{32})$/, 'expected an uppercase hex fingerprint');
/** A key entry's: an OpenPGP fingerprint, or an SSH-only key's `SHA256:` one (protocol 7). */
const keyFingerprint = z
  .string()
  .regex(
    /^([0-9A-F]{40}|[0-9A-F]{64}|[0-9A-F]{32}|SHA256:[A-Za-z0-9+/]{43})$/,
    'expected an uppercase hex or SHA256: fingerprint',
  );
const shortText = (max: number) => z.string().max(max);
const requestId = z.int().min(1).max(MAX_ID);

const base64Bytes = (maxBytes: number) =>
  z
    .base64()
    .max(Math.ceil(maxBytes / 3) * 4)
    .transform((s) => Buffer.from(s, 'base64'));

export const HelloSchema = z.looseObject({
  type: z.literal('hello'),
  protocol: z.int().min(0).max(0xffff),
  minProtocol: z.int().min(0).max(0xffff),
  software: z
    .string()
    .max(100)
    .regex(/^[\x20-\x7e]*$/, 'expected printable ASCII'),
  role: z.enum(['holder', 'facade']),
  /** The largest frame this side accepts, so the other side never sends one it would refuse. */
  maxFrameBytes: z.int().min(64).max(0xffffffff).optional(),
});

const pid = z.int().min(0).max(0x7fffffff);

/** One process of the requester's parent chain (tunnel protocol 4). */
export const ProcessClaimSchema = z.strictObject({
  pid,
  name: shortText(64),
  command: shortText(256).optional(),
});

export const RequesterSchema = z.strictObject({
  front: z.enum(['local', 'ssh', 'relay']),
  host: shortText(255).optional(),
  user: shortText(255).optional(),
  pid: pid.optional(),
  uid: z.int().min(0).max(0xffffffff).optional(),
  command: shortText(1024).optional(),
  name: shortText(64).optional(),
  parents: z.array(ProcessClaimSchema).max(MAX_PARENTS).optional(),
  tokenId: shortText(128).optional(),
});

export const KeyEntrySchema = z.strictObject({
  keygrip,
  fingerprint: keyFingerprint,
  primaryFingerprint: keyFingerprint,
  algorithm: z
    .string()
    .min(1)
    .max(64)
    .regex(/^[A-Za-z0-9._-]+$/, 'expected an algorithm name'),
  usage: z.array(z.enum(['certify', 'sign', 'encrypt', 'auth'])).max(4),
  publicKey: base64Bytes(LIMITS.publicKeyBytes),
  cached: z.boolean().optional(),
  protection: z.enum(['P', 'C', '-']).optional(),
  card: z.strictObject({ serialNo: shortText(64), idStr: shortText(64) }).optional(),
  comment: shortText(LIMITS.keyCommentChars).optional(),
});

export const CertificateSchema = z.strictObject({
  fingerprint,
  userIds: z.array(shortText(LIMITS.userIdChars)).max(LIMITS.userIds),
  armored: shortText(LIMITS.armoredChars),
});

export const InventorySchema = z.strictObject({
  type: z.literal('inventory'),
  keys: z.array(KeyEntrySchema).max(LIMITS.inventoryKeys),
  certificates: z.array(CertificateSchema).max(LIMITS.certificates),
  /** The holder's real gpg-agent version (tunnel protocol 3). */
  agentVersion: z
    .string()
    .regex(/^[0-9]{1,9}\.[0-9]{1,9}\.[0-9]{1,9}[\x21-\x7e]{0,40}$/, 'expected a gpg version')
    .optional(),
});

/** What the sign request's preceding `content` frames add up to (tunnel protocol 2). */
export const SignContentSchema = z.strictObject({
  kind: z.enum(['git-commit', 'git-tag', 'git-push', 'file']),
  mode: z.enum(['binary', 'text', 'clearsign']),
  time: z.int().min(0).max(0xffffffff),
  name: shortText(LIMITS.contentNameChars).optional(),
  bytes: z.int().min(0).max(LIMITS.contentBytes),
  /** Length of the `objects` part (tunnel protocol 4). */
  objectBytes: z.int().min(1).max(LIMITS.gitObjectBytes).optional(),
});

export const SignSchema = z.strictObject({
  type: z.literal('sign'),
  id: requestId,
  keygrip,
  hashAlgo: z.int().min(1).max(255),
  description: shortText(LIMITS.descriptionChars).optional(),
  requester: RequesterSchema,
  content: SignContentSchema.optional(),
  /** gpg's --pinentry-mode cancel|error (tunnel protocol 5): never prompt for this request. */
  pinentryMode: z.enum(['cancel', 'error']).optional(),
});

/**
 * A piece of the payload of the sign request with the same id, in order from offset 0. `part`
 * (protocol 4) says which byte string it belongs to; without it, the payload itself.
 */
export const ContentSchema = z.strictObject({
  type: z.literal('content'),
  id: requestId,
  offset: z.int().min(0).max(LIMITS.contentBytes),
  part: z.enum(['data', 'objects']).optional(),
});

export const DecryptSchema = z.strictObject({
  type: z.literal('decrypt'),
  id: requestId,
  keygrip,
  description: shortText(LIMITS.descriptionChars).optional(),
  requester: RequesterSchema,
  pinentryMode: z.enum(['cancel', 'error']).optional(),
});

/**
 * An ssh-agent signature (tunnel protocol 6): the data to sign is the body, unhashed; the
 * holder hashes it itself, so what it shows and audits is what gets signed.
 */
export const SshSignSchema = z.strictObject({
  type: z.literal('ssh-sign'),
  id: requestId,
  keygrip,
  hash: z.enum(['sha1', 'sha256', 'sha384', 'sha512']).optional(),
  purpose: z.enum(['login', 'sshsig', 'unknown']),
  subject: shortText(LIMITS.sshSubjectChars).optional(),
  destination: z
    .string()
    .regex(/^SHA256:[A-Za-z0-9+/]{43}$/, 'expected an OpenSSH SHA256 fingerprint')
    .optional(),
  requester: RequesterSchema,
});

export const SshSignResultSchema = z.strictObject({
  type: z.literal('ssh-sign-result'),
  id: requestId,
});

export const SignResultSchema = z.strictObject({ type: z.literal('sign-result'), id: requestId });

export const DecryptResultSchema = z.strictObject({
  type: z.literal('decrypt-result'),
  id: requestId,
  padding: z.union([z.literal(0), z.literal(1)]).optional(),
});

export const ErrorSchema = z.strictObject({
  type: z.literal('error'),
  id: requestId,
  /** libgpg-error code (low 16 bits) and source, so the remote gpg sees the same ERR value. */
  code: z.int().min(1).max(0xffff),
  source: z.int().min(0).max(127),
  message: shortText(LIMITS.errorMessageChars).optional(),
});

export const CancelSchema = z.strictObject({ type: z.literal('cancel'), id: requestId });
export const PingSchema = z.strictObject({ type: z.literal('ping') });
export const PongSchema = z.strictObject({ type: z.literal('pong') });
export const CloseSchema = z.strictObject({
  type: z.literal('close'),
  reason: shortText(LIMITS.reasonChars),
});

interface BodyRule {
  min: number;
  max: number;
}

const NO_BODY: BodyRule = { min: 0, max: 0 };

const MESSAGES = {
  hello: { schema: HelloSchema, body: NO_BODY },
  inventory: { schema: InventorySchema, body: NO_BODY },
  sign: { schema: SignSchema, body: { min: 1, max: LIMITS.digestBytes } },
  content: { schema: ContentSchema, body: { min: 1, max: LIMITS.contentChunkBytes } },
  decrypt: { schema: DecryptSchema, body: { min: 1, max: LIMITS.ciphertextBytes } },
  'ssh-sign': { schema: SshSignSchema, body: { min: 1, max: LIMITS.sshDataBytes } },
  'ssh-sign-result': { schema: SshSignResultSchema, body: { min: 1, max: LIMITS.sigValBytes } },
  'sign-result': { schema: SignResultSchema, body: { min: 1, max: LIMITS.sigValBytes } },
  'decrypt-result': { schema: DecryptResultSchema, body: { min: 1, max: LIMITS.decryptedBytes } },
  error: { schema: ErrorSchema, body: NO_BODY },
  cancel: { schema: CancelSchema, body: NO_BODY },
  ping: { schema: PingSchema, body: NO_BODY },
  pong: { schema: PongSchema, body: NO_BODY },
  close: { schema: CloseSchema, body: NO_BODY },
} as const;

type Messages = typeof MESSAGES;
export type MessageType = keyof Messages;

/** A decoded message: the header's fields plus `body`, the raw bytes after the header. */
export type Message = {
  [K in MessageType]: z.output<Messages[K]['schema']> & { body: Buffer };
}[MessageType];
export type MessageOf<K extends MessageType> = Extract<Message, { type: K }>;

/** What callers hand to encodeFrame: header fields as JSON-able values (bytes pre-encoded). */
export type OutHeader = {
  [K in MessageType]: z.input<Messages[K]['schema']>;
}[MessageType];

export type DecodeResult =
  | { ok: true; message: Message }
  /**
   * `id` is set when the frame was a well-formed request (sign/decrypt/ssh-sign) whose fields failed
   * validation: that deserves an error reply, not the end of the link.
   */
  | { ok: false; reason: string; type?: string; id?: number };

export function isMessageType(t: unknown): t is MessageType {
  return typeof t === 'string' && Object.prototype.hasOwnProperty.call(MESSAGES, t);
}

/** Frame bytes (length prefix included) for one message. */
export function encodeFrame(header: OutHeader, body?: Uint8Array): Buffer {
  const json = JSON.stringify(header);
  const headerBytes = Buffer.byteLength(json);
  const bodyBytes = body?.length ?? 0;
  const payloadBytes = PAYLOAD_HEAD_BYTES + headerBytes + bodyBytes;
  const frame = Buffer.allocUnsafe(4 + payloadBytes);
  frame.writeUInt32BE(payloadBytes, 0);
  frame[4] = FRAME_FORMAT_JSON;
  frame.writeUInt32BE(headerBytes, 5);
  frame.write(json, 9, 'utf8');
  if (body) frame.set(body, 9 + headerBytes);
  return frame;
}

/** Parses one frame payload; never throws. Error reasons never quote body bytes. */
export function decodePayload(payload: Buffer): DecodeResult {
  if (payload.length < PAYLOAD_HEAD_BYTES) return { ok: false, reason: 'frame too short' };
  if (payload[0] !== FRAME_FORMAT_JSON) {
    return { ok: false, reason: `unknown frame format ${payload[0]}` };
  }
  const headerBytes = payload.readUInt32BE(1);
  if (headerBytes > payload.length - PAYLOAD_HEAD_BYTES) {
    return { ok: false, reason: 'frame header longer than the frame' };
  }
  let raw: unknown;
  try {
    raw = JSON.parse(
      payload.toString('utf8', PAYLOAD_HEAD_BYTES, PAYLOAD_HEAD_BYTES + headerBytes),
    );
  } catch {
    return { ok: false, reason: 'frame header is not valid JSON' };
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    return { ok: false, reason: 'frame header is not a JSON object' };
  }
  const obj = raw as Record<string, unknown>;
  const type = obj['type'];
  if (!isMessageType(type)) {
    return {
      ok: false,
      reason:
        typeof type === 'string'
          ? `unknown message type "${sanitize(type, 40)}"`
          : 'message without a type',
    };
  }
  const spec = MESSAGES[type];
  const body = payload.subarray(PAYLOAD_HEAD_BYTES + headerBytes);
  const isRequest =
    type === 'sign' || type === 'decrypt' || type === 'content' || type === 'ssh-sign';
  const rawId = obj['id'];
  const replyId =
    isRequest &&
    typeof rawId === 'number' &&
    Number.isInteger(rawId) &&
    rawId >= 1 &&
    rawId <= MAX_ID
      ? rawId
      : undefined;
  if (body.length < spec.body.min || body.length > spec.body.max) {
    const what = spec.body.max === 0 ? 'no data' : `${spec.body.min}..${spec.body.max} bytes`;
    return {
      ok: false,
      type,
      id: replyId,
      reason: `invalid ${type} message: body is ${body.length} bytes, expected ${what}`,
    };
  }
  const parsed = spec.schema.safeParse(obj);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const where = issue && issue.path.length > 0 ? issue.path.join('.') + ': ' : '';
    return {
      ok: false,
      type,
      id: replyId,
      reason: `invalid ${type} message: ${sanitize(where + (issue?.message ?? 'invalid'), 200)}`,
    };
  }
  return { ok: true, message: { ...parsed.data, body } as Message };
}

/** Keeps peer-supplied text printable and short before it goes into a log or an error. */
export function sanitize(text: string, max: number): string {
  const clean = text.replace(/[^\x20-\x7e]/g, '?');
  return clean.length > max ? clean.slice(0, max - 1) + '…' : clean;
}
