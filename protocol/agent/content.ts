// Payloads handed over by `keytether git-sign` before it runs the real gpg, so the holder can see
// (and check) what the next signature covers. gpg itself never sends the data to an agent; the
// shim does, on its own connection, and tags gpg's connection with the nonce it got back through
// PINENTRY_USER_DATA, which gpg passes on as `OPTION pinentry-user-data=…` (gpg-agent ignores it
// unless a pinentry uses it). The payload stays a claim: the holder shows it as verified only
// after recomputing SETHASH's digest from it.
//
//   KEYTETHER_CONTENT --kind=git-commit --mode=binary --time=1733500000 [--name=<%-escaped>]
//                     [--objects=<bytes>]
//   S INQUIRE_MAXLEN 67108864
//   INQUIRE CONTENT          → D …  END
//   INQUIRE OBJECTS          → D …  END      (only with --objects: a commit's git objects)
//   D <nonce>                  OK
//
// A stock gpg-agent answers "Unknown IPC command", and the shim then runs gpg as it is. A facade
// from before --objects ignores the option and never asks for OBJECTS: the shim's payload still
// counts, its file list is just not proven.

import { randomBytes } from 'node:crypto';
import type { AssuanCommandContext } from '../assuan/index.js';
import { percentDecode } from '../assuan/index.js';
import { displayField } from '../display-text.js';
import { GIT_OBJECT_LIMITS } from '../git/object-bundle.js';
import { ErrorCode, GpgError } from '../gpg-error.js';
import { MAX_CONTENT_BYTES, type ContentKind, type SignContent } from '../keyholder.js';
import { parseArgs, paramError } from './args.js';

export const CONTENT_COMMAND = 'KEYTETHER_CONTENT';
/** The PINENTRY_USER_DATA prefix that names a payload; anything else in it is left alone. */
export const CONTENT_TAG = 'keytether-req=';
const NONCE_RE = /^[A-Za-z0-9_-]{22}$/;
const KINDS: ReadonlySet<string> = new Set(['git-commit', 'git-tag', 'git-push', 'file']);
const MODES: ReadonlySet<string> = new Set(['binary', 'text', 'clearsign']);
const MAX_NAME_CHARS = 1024;

/** Payloads waiting for the gpg that will sign them; shared by a facade's connections. */
export class ContentStore {
  readonly #entries = new Map<string, { content: SignContent; expires: number }>();
  readonly #maxEntries: number;
  readonly #ttlMs: number;
  readonly #now: () => number;

  constructor(opts: { maxEntries?: number; ttlMs?: number; now?: () => number } = {}) {
    this.#maxEntries = opts.maxEntries ?? 8;
    this.#ttlMs = opts.ttlMs ?? 120_000;
    this.#now = opts.now ?? Date.now;
  }

  /** Keeps CONTENT for one signature; the oldest entry goes when the store is full. */
  put(content: SignContent): string {
    this.#expire();
    while (this.#entries.size >= this.#maxEntries) {
      const oldest = this.#entries.keys().next().value as string;
      this.#entries.delete(oldest);
    }
    const nonce = randomBytes(16).toString('base64url');
    this.#entries.set(nonce, { content, expires: this.#now() + this.#ttlMs });
    return nonce;
  }

  /** The payload for NONCE, once: a second signature never reuses it. */
  take(nonce: string): SignContent | undefined {
    this.#expire();
    const e = this.#entries.get(nonce);
    this.#entries.delete(nonce);
    return e?.content;
  }

  #expire(): void {
    const now = this.#now();
    for (const [k, v] of this.#entries) if (v.expires <= now) this.#entries.delete(k);
  }
}

/** The nonce in a PINENTRY_USER_DATA value such as `keytether-req=<nonce>`, if there is one. */
export function contentNonce(pinentryUserData: string | undefined): string | undefined {
  if (!pinentryUserData) return undefined;
  for (const part of pinentryUserData.split(/[ ,;]/)) {
    if (!part.startsWith(CONTENT_TAG)) continue;
    const nonce = part.slice(CONTENT_TAG.length);
    if (NONCE_RE.test(nonce)) return nonce;
  }
  return undefined;
}

export async function registerContent(
  ctx: AssuanCommandContext,
  store: ContentStore | undefined,
): Promise<void> {
  // Not a keytether front that can carry payloads: the shim falls back to plain gpg.
  if (!store) throw new GpgError(ErrorCode.ASS_UNKNOWN_CMD);
  const { options, words } = parseArgs(ctx.args);
  if (words.length > 0) throw paramError('unexpected argument');
  const kind = options.get('kind');
  const mode = options.get('mode');
  const time = Number(options.get('time'));
  if (kind === undefined || !KINDS.has(kind)) throw paramError('bad --kind');
  if (mode === undefined || !MODES.has(mode)) throw paramError('bad --mode');
  if (!Number.isSafeInteger(time) || time < 0 || time > 0xffffffff) throw paramError('bad --time');
  const rawName = options.get('name');
  let name: string | undefined;
  if (rawName !== undefined) {
    const decoded = percentDecode(rawName).toString('utf8');
    if (decoded.length > MAX_NAME_CHARS) throw paramError('--name too long');
    name = displayField(decoded, MAX_NAME_CHARS);
  }
  const rawObjects = options.get('objects');
  let objectBytes: number | undefined;
  if (rawObjects !== undefined) {
    objectBytes = Number(rawObjects);
    if (kind !== 'git-commit') throw paramError('--objects is only for a git-commit');
    if (!Number.isSafeInteger(objectBytes) || objectBytes < 1) throw paramError('bad --objects');
    if (objectBytes > GIT_OBJECT_LIMITS.bundleBytes) throw paramError('--objects too large');
  }
  ctx.sendStatus('INQUIRE_MAXLEN', String(MAX_CONTENT_BYTES));
  const data = await ctx.inquire('CONTENT', { maxLength: MAX_CONTENT_BYTES });
  let objects: Buffer | undefined;
  if (objectBytes !== undefined) {
    ctx.sendStatus('INQUIRE_MAXLEN', String(objectBytes));
    objects = await ctx.inquire('OBJECTS', { maxLength: objectBytes });
  }
  const nonce = store.put({
    kind: kind as ContentKind,
    mode: mode as SignContent['mode'],
    time,
    data,
    ...(name !== undefined ? { name } : {}),
    ...(objects !== undefined && objects.length > 0 ? { objects } : {}),
  });
  ctx.sendData(Buffer.from(nonce, 'latin1'));
}
