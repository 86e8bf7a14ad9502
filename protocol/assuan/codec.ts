// Line-level encoding and parsing shared by the Assuan server and client.

import { GpgError, ErrorCode } from '../gpg-error.js';
import { DATA_ESCAPE, unescapeData } from './escape.js';

/** Most bytes any emitted line carries before its LF (libassuan: 1000 + [CR,]LF). */
export const MAX_OUT_LINE_BYTES = 1000;

const LF = 0x0a;
const PREFIX_D = Buffer.from('D ');
const HEX_DIGITS = Buffer.from('0123456789ABCDEF');

/**
 * Encodes data as `D ` lines (each ending in LF), escaping %, CR, LF and starting a new line
 * before an escape would cross `maxLineBytes`, so a %XX is never split. Empty data → no lines.
 */
export function encodeData(data: Uint8Array, maxLineBytes = MAX_OUT_LINE_BYTES): Buffer {
  if (maxLineBytes < PREFIX_D.length + 3) throw new RangeError('maxLineBytes too small');
  const n = data.length;
  if (n === 0) return Buffer.alloc(0);
  const src = Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, n);
  const room = maxLineBytes - PREFIX_D.length;
  let escapes = 0;
  for (let i = 0; i < n; i++) escapes += DATA_ESCAPE[src[i]!]!;
  const escapedLength = n + 2 * escapes;
  // Worst case each line wastes 2 bytes of room to keep an escape whole.
  const maxLines = Math.ceil(escapedLength / (room - 2)) + 1;
  const out = Buffer.allocUnsafe(escapedLength + maxLines * (PREFIX_D.length + 1));
  let o = 0;
  let i = 0;
  // One plain byte loop: data has escapes every ~85 bytes on average (random bytes), where
  // native copies of the short runs in between cost more than they save.
  while (i < n) {
    out[o++] = 0x44; // D
    out[o++] = 0x20;
    let used = 0;
    while (i < n) {
      const b = src[i]!;
      if (DATA_ESCAPE[b] === 0) {
        if (used === room) break;
        out[o++] = b;
        used++;
      } else {
        if (used + 3 > room) break;
        out[o++] = 0x25;
        out[o++] = HEX_DIGITS[b >> 4]!;
        out[o++] = HEX_DIGITS[b & 15]!;
        used += 3;
      }
      i++;
    }
    out[o++] = LF;
  }
  return out.subarray(0, o);
}

/** The unescaped payload of one D line's content (the bytes after `D `). */
export function decodeDataLine(content: Uint8Array): Buffer {
  return unescapeData(content);
}

export type ResponseLine =
  | { readonly type: 'OK'; readonly text: string }
  | { readonly type: 'ERR'; readonly value: number; readonly text: string }
  | { readonly type: 'S'; readonly keyword: string; readonly args: string }
  | { readonly type: 'D'; readonly data: Buffer }
  | { readonly type: 'INQUIRE'; readonly keyword: string; readonly args: string }
  | { readonly type: 'END' }
  | { readonly type: 'COMMENT'; readonly text: string }
  /** Anything a libassuan client would reject as an invalid response. */
  | { readonly type: 'INVALID'; readonly text: string };

function isWordEnd(line: Buffer, at: number): boolean {
  return at === line.length || line[at] === 0x20;
}

function startsWith(line: Buffer, word: string): boolean {
  if (line.length < word.length) return false;
  for (let i = 0; i < word.length; i++) if (line[i] !== word.charCodeAt(i)) return false;
  return true;
}

/** Splits `WORD rest` at the first run of blanks. */
function splitWord(text: string): [string, string] {
  const m = /^([^ \t]*)[ \t]*(.*)$/s.exec(text);
  return m ? [m[1]!, m[2]!] : [text, ''];
}

/**
 * Parses one server→client line (without LF/CR) the way libassuan's client does: line types are
 * case-sensitive and must be followed by a space or the end of the line. Never throws.
 */
export function parseResponseLine(line: Buffer): ResponseLine {
  if (line.length === 0) return { type: 'COMMENT', text: '' };
  if (line[0] === 0x23) return { type: 'COMMENT', text: line.toString('utf8', 1).trimStart() };
  if (startsWith(line, 'D') && isWordEnd(line, 1)) {
    return { type: 'D', data: decodeDataLine(line.subarray(2)) };
  }
  if (startsWith(line, 'OK') && isWordEnd(line, 2)) {
    return { type: 'OK', text: line.toString('utf8', 3) };
  }
  if (startsWith(line, 'S') && isWordEnd(line, 1)) {
    const [keyword, args] = splitWord(line.toString('utf8', 2));
    return { type: 'S', keyword, args };
  }
  if (startsWith(line, 'ERR') && isWordEnd(line, 3)) {
    const rest = line.toString('utf8', 4);
    const m = /^(\d{1,10})(?:[ \t]+(.*))?$/s.exec(rest);
    const value = m ? Number(m[1]) : NaN;
    if (!m || value > 0xffffffff) return { type: 'INVALID', text: line.toString('utf8') };
    return { type: 'ERR', value, text: m[2] ?? '' };
  }
  if (startsWith(line, 'INQUIRE') && isWordEnd(line, 7)) {
    const [keyword, args] = splitWord(line.toString('utf8', 8));
    return { type: 'INQUIRE', keyword, args };
  }
  if (line.length === 3 && startsWith(line, 'END')) return { type: 'END' };
  return { type: 'INVALID', text: line.toString('utf8', 0, Math.min(line.length, 80)) };
}

/**
 * Makes free text safe for one outgoing line: CR/LF become the two characters `\r`/`\n` (as
 * gpg-agent does for status strings), and the result is cut to `maxBytes` on a character boundary.
 */
export function oneLine(text: string, maxBytes: number): string {
  const flat = text.replace(/\r/g, '\\r').replace(/\n/g, '\\n');
  if (Buffer.byteLength(flat, 'utf8') <= maxBytes) return flat;
  let bytes = 0;
  let out = '';
  for (const ch of flat) {
    const n = Buffer.byteLength(ch, 'utf8');
    if (bytes + n > maxBytes) break;
    bytes += n;
    out += ch;
  }
  return out;
}

export type CommandLine =
  | { readonly kind: 'ignore' }
  | {
      readonly kind: 'command';
      readonly word: string;
      readonly command: string;
      readonly args: string;
    }
  | { readonly kind: 'error'; readonly error: GpgError };

/** Splits a client→server line into command word and raw arguments (libassuan dispatch rules). */
export function parseCommandLine(line: Buffer): CommandLine {
  if (line.length === 0 || line[0] === 0x23) return { kind: 'ignore' };
  if (line[0] === 0x20 || line[0] === 0x09) {
    return { kind: 'error', error: new GpgError(ErrorCode.ASS_SYNTAX, 'leading white-space') };
  }
  const [word, args] = splitWord(line.toString('utf8'));
  return { kind: 'command', word, command: word.toUpperCase(), args };
}

export interface ParsedOption {
  readonly name: string;
  readonly value: string | undefined;
}

/**
 * `OPTION` arguments as libassuan's std_handler_option reads them: `name[=value]` or
 * `name value`, blanks around both ignored, one leading `--` dropped, `=` without a value and a
 * name with a single leading dash are syntax errors.
 */
export function parseOptionArgs(args: string): ParsedOption | GpgError {
  const syntax = (detail: string) => new GpgError(ErrorCode.ASS_SYNTAX, detail);
  const text = args.replace(/^[ \t]+/, '');
  if (text === '') return syntax('argument required');
  if (text.startsWith('=')) return syntax('no option name given');
  const m = /^([^ \t=]+)(.*)$/s.exec(text);
  if (!m) return syntax('no option name given');
  let name = m[1]!;
  let rest = m[2]!.replace(/^[ \t]+/, '');
  let value: string | undefined;
  if (rest.startsWith('=')) {
    rest = rest.slice(1).replace(/^[ \t]+/, '');
    if (rest === '') return syntax('option argument expected');
  }
  rest = rest.replace(/[ \t]+$/, '');
  if (rest !== '') value = rest;
  if (name.startsWith('--') && name.length > 2) name = name.slice(2);
  if (name.startsWith('-')) return syntax('option should not begin with one dash');
  return { name, value };
}
