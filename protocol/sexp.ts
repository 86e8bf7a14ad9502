// Canonical S-expressions as gpg-agent puts them on the wire (reference §4.1):
// `(` list `)`, atoms `<decimal length>:<raw bytes>`, nothing else. Input comes from the
// network, so the parser never throws, bounds depth/size, and rejects the advanced/transport
// syntaxes (display hints, tokens, quoted/hex/base64 strings, whitespace) instead of guessing.

export type Sexp = Buffer | Sexp[];

export interface SexpLimits {
  maxDepth?: number;
  maxBytes?: number;
  maxAtomBytes?: number;
}

export type ParseResult = { ok: true; value: Sexp; end: number } | { ok: false; error: string };

export const DEFAULT_SEXP_LIMITS: Required<SexpLimits> = {
  maxDepth: 16,
  maxBytes: 64 * 1024,
  maxAtomBytes: 16 * 1024,
};

const OPEN = 0x28;
const CLOSE = 0x29;
const COLON = 0x3a;
const DIGIT0 = 0x30;
const DIGIT9 = 0x39;
const HINT = 0x5b;

// More than this many length digits cannot describe an atom within any sane limit, and stopping
// early keeps the arithmetic inside exact double range.
const MAX_LENGTH_DIGITS = 9;

/**
 * Parses one canonical S-expression starting at input[0]. The top level must be a list (as
 * libgcrypt's gcry_sexp_canon_len requires). Bytes after the closing paren are not looked at;
 * `end` says how many were consumed so callers can decide whether trailing data is acceptable.
 * Error messages carry offsets and reasons only, never input bytes (they may be secret).
 */
export function parseSexp(input: Uint8Array, limits?: SexpLimits): ParseResult {
  const maxDepth = limits?.maxDepth ?? DEFAULT_SEXP_LIMITS.maxDepth;
  const maxBytes = limits?.maxBytes ?? DEFAULT_SEXP_LIMITS.maxBytes;
  const maxAtomBytes = limits?.maxAtomBytes ?? DEFAULT_SEXP_LIMITS.maxAtomBytes;
  const fail = (error: string): ParseResult => ({ ok: false, error });

  let buf: Buffer;
  try {
    buf = Buffer.isBuffer(input)
      ? input
      : Buffer.from(input.buffer, input.byteOffset, input.length);
  } catch {
    return fail('input is not a byte array');
  }
  // Only the bytes the expression may occupy are ever examined.
  const limit = Math.min(buf.length, maxBytes);

  if (buf.length === 0) return fail('empty input');
  if (buf[0] !== OPEN) return fail('S-expression must start with "(" at offset 0');

  const stack: Sexp[][] = [];
  let pos = 0;
  while (pos < limit) {
    const c = buf[pos]!;
    if (c === OPEN) {
      if (stack.length >= maxDepth) return fail(`nesting deeper than ${maxDepth} at offset ${pos}`);
      stack.push([]);
      pos++;
    } else if (c === CLOSE) {
      const done = stack.pop();
      if (done === undefined) return fail(`unbalanced ")" at offset ${pos}`);
      pos++;
      const parent = stack[stack.length - 1];
      if (parent === undefined) return { ok: true, value: done, end: pos };
      parent.push(done);
    } else if (c >= DIGIT0 && c <= DIGIT9) {
      if (stack.length === 0) return fail(`atom outside a list at offset ${pos}`);
      const start = pos;
      if (c === DIGIT0 && pos + 1 < limit && buf[pos + 1] !== COLON) {
        return fail(`length with leading zero at offset ${pos}`);
      }
      let len = 0;
      while (pos < limit && buf[pos]! >= DIGIT0 && buf[pos]! <= DIGIT9) {
        if (pos - start >= MAX_LENGTH_DIGITS)
          return fail(`atom length too long at offset ${start}`);
        len = len * 10 + (buf[pos]! - DIGIT0);
        pos++;
      }
      if (pos >= limit) return fail(truncatedOrTooBig(buf.length, maxBytes));
      if (buf[pos] !== COLON) return fail(`expected ":" after length at offset ${pos}`);
      if (len > maxAtomBytes) {
        return fail(`atom of ${len} bytes exceeds limit of ${maxAtomBytes} at offset ${start}`);
      }
      pos++;
      if (pos + len > limit) return fail(truncatedOrTooBig(buf.length, maxBytes));
      // Copy so that the tree does not pin (or alias) the caller's possibly larger buffer.
      stack[stack.length - 1]!.push(Buffer.from(buf.subarray(pos, pos + len)));
      pos += len;
    } else if (c === HINT) {
      return fail(`display hints are not supported (offset ${pos})`);
    } else {
      return fail(`unexpected byte 0x${c.toString(16).padStart(2, '0')} at offset ${pos}`);
    }
  }
  return fail(truncatedOrTooBig(buf.length, maxBytes));
}

function truncatedOrTooBig(inputLength: number, maxBytes: number): string {
  return inputLength > maxBytes
    ? `S-expression longer than ${maxBytes} bytes`
    : 'truncated S-expression';
}

export function encodeSexp(value: Sexp): Buffer {
  const parts: Buffer[] = [];
  const walk = (v: Sexp): void => {
    if (Buffer.isBuffer(v)) {
      parts.push(Buffer.from(`${v.length}:`, 'latin1'), v);
      return;
    }
    parts.push(Buffer.from('('));
    for (const item of v) walk(item);
    parts.push(Buffer.from(')'));
  };
  walk(value);
  return Buffer.concat(parts);
}

/** Atom from text (UTF-8) or bytes (copied). */
export function atom(v: string | Uint8Array): Buffer {
  return typeof v === 'string' ? Buffer.from(v, 'utf8') : Buffer.from(v);
}

export function isList(v: Sexp): v is Sexp[] {
  return Array.isArray(v);
}

/**
 * First list whose first element is the atom `name`: the list itself, then its direct
 * sub-lists, then deeper ones (breadth first), like gcry_sexp_find_token.
 */
export function findList(list: Sexp, name: string): Sexp[] | undefined {
  if (!isList(list)) return undefined;
  const want = Buffer.from(name, 'utf8');
  let level: Sexp[][] = [list];
  while (level.length > 0) {
    const next: Sexp[][] = [];
    for (const l of level) {
      const head = l[0];
      if (head !== undefined && Buffer.isBuffer(head) && head.equals(want)) return l;
      for (const item of l) if (isList(item)) next.push(item);
    }
    level = next;
  }
  return undefined;
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** Text of an atom: UTF-8 when valid, else latin1; undefined for lists and missing values. */
export function atomText(v: Sexp | undefined): string | undefined {
  if (v === undefined || !Buffer.isBuffer(v)) return undefined;
  try {
    return utf8.decode(v);
  } catch {
    return v.toString('latin1');
  }
}

/** Unsigned MPI bytes without leading zeros (libgcrypt `%M`). Zero becomes the empty string. */
export function mpiUsg(v: Uint8Array): Buffer {
  let i = 0;
  while (i < v.length && v[i] === 0) i++;
  return Buffer.from(v.subarray(i));
}

/** Two's-complement form (libgcrypt `%m`): minimal, plus a 0x00 when the top bit is set. */
export function mpiStd(v: Uint8Array): Buffer {
  const usg = mpiUsg(v);
  if (usg.length > 0 && (usg[0]! & 0x80) !== 0) return Buffer.concat([Buffer.alloc(1), usg]);
  return usg;
}
