// What the relay says on its WebSockets to holders and facades: the close codes of the relay
// spec, close reasons that fit a close frame, and the small JSON control messages peers send.

import { WebSocket, type RawData } from 'ws';
import { z } from 'zod';
import { relayAuthMessage, verifyEd25519 } from '../../protocol/relay/identity.js';
import { truncateUtf8 } from '../../protocol/relay/mux.js';

export const CloseCode = {
  AuthFailed: 4001,
  AuthTimeout: 4002,
  TokenInvalid: 4003,
  TokenExpired: 4004,
  HolderNotConnected: 4005,
  RateLimited: 4008,
  Replaced: 4009,
  FrameTooLarge: 4010,
  ShuttingDown: 1001,
} as const;

// A WebSocket close reason is at most 123 bytes.
const MAX_WS_REASON_BYTES = 123;
// Control messages are small JSON; a token's public part is at most 4096 characters.
const MAX_CONTROL_BYTES = 8192;

// ws closes a message longer than maxPayload with 1009 by itself, before any of our code sees
// it; the spec's code for that is 4010, so the one place that picks the code is overridden.
export class RelaySocket extends WebSocket {
  override close(code?: number, data?: string | Buffer): void {
    if (code === 1009) super.close(CloseCode.FrameTooLarge, 'frame too large');
    else super.close(code, data);
  }
}

export const HolderAuthSchema = z.strictObject({
  type: z.literal('auth'),
  hpk: z.string().max(64),
  sig: z.string().max(128),
});

export const FacadeTokenSchema = z.strictObject({
  type: z.literal('token'),
  token: z.string().max(4096),
});

export function parseControl<T>(data: RawData, schema: z.ZodType<T>): T | undefined {
  const buf = data as Buffer;
  if (buf.length > MAX_CONTROL_BYTES) return undefined;
  try {
    const r = schema.safeParse(JSON.parse(buf.toString('utf8')));
    return r.success ? r.data : undefined;
  } catch {
    return undefined;
  }
}

/** The holder's public key when `data` is a valid `auth` answer to the challenge `nonce`. */
export function holderAuthKey(data: RawData, nonce: string): Buffer | undefined {
  const m = parseControl(data, HolderAuthSchema);
  if (!m) return undefined;
  const hpk = Buffer.from(m.hpk, 'base64url');
  const sig = Buffer.from(m.sig, 'base64url');
  return verifyEd25519(hpk, relayAuthMessage(nonce), sig) ? hpk : undefined;
}

export function wsReason(text: string): Buffer {
  return truncateUtf8(text, MAX_WS_REASON_BYTES);
}

export function isOpen(ws: WebSocket): boolean {
  return ws.readyState === WebSocket.OPEN;
}
