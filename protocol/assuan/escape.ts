// Assuan's percent escaping, in the three flavours keytether meets on the wire (reference §1.5):
// D-line data (exactly %, CR, LF escaped), gpg's plus-and-percent command arguments, and the
// percent-only text arguments a pinentry decodes itself.

const PERCENT = 0x25;
const CR = 0x0d;
const LF = 0x0a;
const PLUS = 0x2b;
const SPACE = 0x20;
const HEX_DIGITS = Buffer.from('0123456789ABCDEF');

function hexValue(b: number | undefined): number {
  if (b === undefined) return -1;
  if (b >= 0x30 && b <= 0x39) return b - 0x30;
  if (b >= 0x41 && b <= 0x46) return b - 0x37;
  if (b >= 0x61 && b <= 0x66) return b - 0x57;
  return -1;
}

/** 1 for the bytes a D line must escape (%, CR, LF). */
export const DATA_ESCAPE = new Uint8Array(256);
DATA_ESCAPE[PERCENT] = DATA_ESCAPE[CR] = DATA_ESCAPE[LF] = 1;

export function needsDataEscape(b: number): boolean {
  return DATA_ESCAPE[b] === 1;
}

function asBuffer(data: Uint8Array): Buffer {
  return Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.length);
}

/** Escapes exactly the bytes libassuan's writer escapes; NUL and high bytes stay raw. */
export function escapeData(data: Uint8Array): Buffer {
  let extra = 0;
  for (let i = 0; i < data.length; i++) extra += DATA_ESCAPE[data[i]!]! << 1;
  const out = Buffer.allocUnsafe(data.length + extra);
  let o = 0;
  for (let i = 0; i < data.length; i++) {
    const b = data[i]!;
    if (DATA_ESCAPE[b]) {
      out[o++] = PERCENT;
      out[o++] = HEX_DIGITS[b >> 4]!;
      out[o++] = HEX_DIGITS[b & 15]!;
    } else {
      out[o++] = b;
    }
  }
  return out;
}

/**
 * Turns every %XX into its byte (into a fresh buffer, never a view of the input). A `%` not
 * followed by two hex digits is kept literally: libassuan would decode garbage there, and failing
 * would let one bad byte abort a whole session.
 */
export function unescapeData(data: Uint8Array, plusIsSpace = false): Buffer {
  const buf = asBuffer(data);
  const out = Buffer.allocUnsafe(buf.length);
  let o = 0;
  let pos = 0;
  // Runs without a '%' (the bulk of real data) are copied natively.
  for (let pct = buf.indexOf(PERCENT); pct >= 0; pct = buf.indexOf(PERCENT, pos)) {
    o += buf.copy(out, o, pos, pct);
    const hi = hexValue(buf[pct + 1]);
    const lo = hexValue(buf[pct + 2]);
    if (hi >= 0 && lo >= 0) {
      out[o++] = (hi << 4) | lo;
      pos = pct + 3;
    } else {
      out[o++] = PERCENT;
      pos = pct + 1;
    }
  }
  o += buf.copy(out, o, pos);
  if (plusIsSpace) {
    // Escaped '+' (%2B) has already become a byte we must not touch, so map the raw ones only.
    return plusToSpace(buf, out.subarray(0, o));
  }
  return out.subarray(0, o);
}

function plusToSpace(src: Buffer, decoded: Buffer): Buffer {
  let o = 0;
  for (let i = 0; i < src.length; i++) {
    const b = src[i]!;
    if (b === PERCENT && hexValue(src[i + 1]) >= 0 && hexValue(src[i + 2]) >= 0) {
      i += 2;
    } else if (b === PLUS) {
      decoded[o] = SPACE;
    }
    o++;
  }
  return decoded;
}

/** Decodes gpg's SETKEYDESC/GET_PASSPHRASE-style arguments: '+' is a space, %XX a byte. */
export function plusPercentDecode(text: string): Buffer {
  return unescapeData(Buffer.from(text, 'utf8'), true);
}

/** Decodes a percent-escaped argument ('+' stays '+'). */
export function percentDecode(text: string): Buffer {
  return unescapeData(Buffer.from(text, 'utf8'));
}

/**
 * Escapes a text for a pinentry argument (SETDESC, SETPROMPT, …): only %, CR and LF, since the
 * pinentry decodes %XX and takes everything else, '+' included, literally.
 */
export function percentEscapeText(text: string): string {
  return text.replace(/[%\r\n]/g, (c) => (c === '%' ? '%25' : c === '\r' ? '%0D' : '%0A'));
}
