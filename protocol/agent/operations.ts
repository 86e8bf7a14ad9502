// The private-key operations: SIGKEY/SETKEY, SETKEYDESC and SETHASH collect the request,
// PKSIGN and PKDECRYPT turn it into exactly one holder call.

import { plusPercentDecode } from '../assuan/index.js';
import type { AssuanCommandContext } from '../assuan/index.js';
import { ErrorCode, GpgError } from '../gpg-error.js';
import type { KeyHolder, Requester } from '../keyholder.js';
import { parseSexp, type Sexp } from '../sexp.js';
import { paramError, parseArgs, parseKeygrip, parseSetHash } from './args.js';
import type { TaggedContent } from './content.js';
import type { AgentSession } from './session.js';

/** gpg-agent's MAXLEN_CIPHERTEXT: the largest enc-val accepted in answer to INQUIRE CIPHERTEXT. */
export const MAX_CIPHERTEXT = 4096;

/** Larger than any sig-val of a supported key (RSA-16384 is ~2 KiB). */
const MAX_SIGNATURE = 8192;

export interface OperationContext {
  holder: KeyHolder;
  session: AgentSession;
  requester: Requester | Promise<Requester>;
  content?: TaggedContent;
}

export function setKey(ctx: AssuanCommandContext, session: AgentSession): void {
  // gpg-agent 2.4 takes no options here: gpg 2.5's `SETKEY --another <grip>` (the second half of
  // a Kyber key, #19) gets the hexstring error that agent gives, so gpg 2.5 fails the same way.
  const { options, words } = parseArgs(ctx.args);
  if (options.size > 0) throw paramError('invalid hexstring');
  session.keygrip = parseKeygrip(words[0]);
}

export function setKeyDescription(ctx: AssuanCommandContext, session: AgentSession): void {
  // Only the first word counts; gpg escapes blanks as '+'.
  const word = ctx.args.split(/[ \t]+/).find((w) => w.length > 0);
  if (word === undefined) throw paramError('no description given');
  session.keyDescription = plusPercentDecode(word).toString('utf8');
}

export function setHash(ctx: AssuanCommandContext, session: AgentSession): void {
  // A failed SETHASH must not leave an older digest behind for the next PKSIGN to sign.
  session.clearHash();
  session.hash = parseSetHash(ctx.args);
}

function isNamedList(v: Sexp | undefined, name: string): v is Sexp[] {
  if (!Array.isArray(v)) return false;
  const head = v[0];
  return Buffer.isBuffer(head) && head.toString('latin1') === name;
}

/** A canonical `(name(algo…))` S-expression filling exactly `bytes`. */
function isCanonical(bytes: Uint8Array, name: string, maxBytes: number): boolean {
  const parsed = parseSexp(bytes, { maxBytes, maxDepth: 8 });
  if (!parsed.ok || parsed.end !== bytes.length) return false;
  const top = parsed.value;
  if (!isNamedList(top, name)) return false;
  const algo = top[1];
  return Array.isArray(algo) && Buffer.isBuffer(algo[0]) && algo[0].length > 0;
}

export async function pkSign(ctx: AssuanCommandContext, c: OperationContext): Promise<void> {
  const { session } = c;
  const description = session.takeDescription();
  // The real agent fails a PKSIGN without SIGKEY this way (checked with gpg-agent 2.2.40).
  if (session.keygrip === undefined) throw new GpgError(ErrorCode.NO_SECKEY);
  if (session.hash === undefined) throw new GpgError(ErrorCode.MISSING_VALUE, 'no hash set');
  const content = await c.content?.take(session.env.get('PINENTRY_USER_DATA'));
  const requester = await c.requester;
  const sig = await c.holder.sign(
    {
      keygrip: session.keygrip,
      hashAlgo: session.hash.algo,
      digest: Buffer.from(session.hash.digest),
      description,
      requester: { ...requester },
      ...(session.noPrompt ? { pinentryMode: session.noPrompt } : {}),
      ...(content ? { content } : {}),
    },
    ctx.signal,
  );
  if (!isCanonical(sig, 'sig-val', MAX_SIGNATURE)) {
    throw new GpgError(ErrorCode.GENERAL, 'holder returned an invalid signature');
  }
  ctx.sendData(Buffer.from(sig));
}

export async function pkDecrypt(ctx: AssuanCommandContext, c: OperationContext): Promise<void> {
  const { session } = c;
  // gpg 2.5 sends `--kem=PGP` for every ECDH key and `--kem=PQC-PGP` for Kyber, and then expects
  // the unwrapped session key, not the shared point. keytether does not do that yet (#19), so it
  // answers as gpg-agent 2.4 does, which ignores the option: it reads the ciphertext, then fails
  // on the KEM-form enc-val with Invalid data (measured against 2.4.7). A shared point here would
  // be taken for the session key and fail later with a worse message.
  const kem = parseArgs(ctx.args).options.has('kem');
  const description = session.takeDescription();
  // The agent asks for the ciphertext before it looks at the key (same order as gpg-agent).
  ctx.sendStatus('INQUIRE_MAXLEN', String(MAX_CIPHERTEXT));
  const ciphertext = await ctx.inquire('CIPHERTEXT', { maxLength: MAX_CIPHERTEXT });
  if (kem) throw new GpgError(ErrorCode.INV_DATA);
  if (session.keygrip === undefined) throw new GpgError(ErrorCode.NO_SECKEY);
  if (!isCanonical(ciphertext, 'enc-val', MAX_CIPHERTEXT)) {
    throw new GpgError(ErrorCode.INV_SEXP, 'ciphertext is not a canonical enc-val');
  }
  const requester = await c.requester;
  const result = await c.holder.decrypt(
    {
      keygrip: session.keygrip,
      ciphertext,
      description,
      requester: { ...requester },
      ...(session.noPrompt ? { pinentryMode: session.noPrompt } : {}),
    },
    ctx.signal,
  );
  // The value is the session key (or the shared point it derives from): send and wipe.
  const value = result.value;
  const reply = Buffer.concat([
    Buffer.from(`(5:value${value.length}:`, 'latin1'),
    value,
    Buffer.from(')', 'latin1'),
  ]);
  try {
    if (result.padding !== undefined) ctx.sendStatus('PADDING', String(result.padding));
    ctx.sendData(reply);
  } finally {
    reply.fill(0);
    value.fill(0);
  }
}
