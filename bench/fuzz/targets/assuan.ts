// protocol/assuan codec: the line reader, response/command/OPTION parsers, D-line encoding and
// the three percent escapings.
// Oracle: nothing throws (parseOptionArgs answers a GpgError ASS_SYNTAX to refuse); the line
// reader's events equal a one-line reference model of libassuan's rules however the stream is
// cut, and it never holds more than its limit; encodeData∘parseResponseLine and
// unescapeData∘escapeData are identities, encoded lines fit 1000 bytes and carry no CR/LF;
// oneLine output has no CR/LF and fits its byte budget; decoders never grow their input.

import fc from 'fast-check';
import {
  encodeData,
  oneLine,
  parseCommandLine,
  parseOptionArgs,
  parseResponseLine,
  MAX_OUT_LINE_BYTES,
} from '../../../protocol/assuan/codec.js';
import {
  escapeData,
  percentDecode,
  percentEscapeText,
  plusPercentDecode,
  unescapeData,
} from '../../../protocol/assuan/escape.js';
import {
  LineReader,
  MAX_LINE_BYTES,
  type LineEvent,
} from '../../../protocol/assuan/line-reader.js';
import { ErrorCode, GpgError } from '../../../protocol/gpg-error.js';
import { violation, type FuzzTarget } from '../harness.js';
import { chunk, chunkSizes, mutate, mutations, rawBytes, rawText } from '../gen.js';

export interface AssuanCase {
  stream: Buffer;
  chunks: number[];
  maxLine: number;
  data: Buffer;
  text: string;
  budget: number;
}

const VERBS = [
  'OK',
  'ERR',
  'S',
  'D',
  'INQUIRE',
  'END',
  'CAN',
  '#',
  'OPTION',
  'BYE',
  'RESET',
  'NOP',
  'HELP',
  'GETINFO',
  'PKSIGN',
  'SETHASH',
  'ok',
  'd',
  'Err',
];

const lineArb = fc
  .record({
    verb: fc.constantFrom(...VERBS),
    sep: fc.constantFrom(' ', '', '  ', '\t', '='),
    rest: fc.oneof(
      fc.constantFrom(
        '',
        '1',
        '67108881 Not found <GPG Agent>',
        'ttyname=/dev/pts/1',
        '--foo = bar',
        '-x',
        '=v',
        '%0A%25%',
      ),
      fc.string({ maxLength: 40 }),
      fc.integer().map(String),
    ),
    cr: fc.boolean(),
    long: fc.oneof(
      { weight: 9, arbitrary: fc.constant(0) },
      { weight: 1, arbitrary: fc.integer({ min: 990, max: 1010 }) },
    ),
  })
  .map(({ verb, sep, rest, cr, long }) => {
    const body = Buffer.from(`${verb}${sep}${rest}${long ? 'x'.repeat(long) : ''}`, 'utf8');
    return cr ? Buffer.concat([body, Buffer.of(0x0d)]) : body;
  });

const streamArb = fc
  .record({ lines: fc.array(lineArb, { maxLength: 12 }), m: mutations(2), tail: fc.boolean() })
  .map(({ lines, m, tail }) => {
    const joined = Buffer.concat(lines.flatMap((l) => [l, Buffer.of(0x0a)]));
    return mutate(tail ? joined.subarray(0, Math.max(0, joined.length - 1)) : joined, m);
  });

const maxLineArb = fc.oneof(fc.constant(MAX_LINE_BYTES), fc.integer({ min: 1, max: 80 }));
const budgetArb = fc.integer({ min: 0, max: 1200 });

/** libassuan's reader in a few lines: the events a whole stream should give. */
function model(stream: Buffer, max: number): string[] {
  const out: string[] = [];
  let pos = 0;
  for (;;) {
    const lf = stream.indexOf(0x0a, pos);
    if (lf < 0) {
      const rest = stream.length - pos;
      if (rest > max) out.push('too-long');
      else if (rest > 0) out.push(`incomplete ${rest}`);
      return out;
    }
    const seg = stream.subarray(pos, lf);
    if (seg.length > max) out.push('too-long');
    else {
      const line = seg.length > 0 && seg[seg.length - 1] === 0x0d ? seg.subarray(0, -1) : seg;
      out.push(`line ${line.toString('hex')}`);
    }
    pos = lf + 1;
  }
}

function show(ev: LineEvent): string {
  if (ev.type === 'line') return `line ${ev.line.toString('hex')}`;
  if (ev.type === 'incomplete') return `incomplete ${ev.length}`;
  return 'too-long';
}

const RESPONSE_TYPES = new Set(['OK', 'ERR', 'S', 'D', 'INQUIRE', 'END', 'COMMENT', 'INVALID']);

export const assuanTarget: FuzzTarget<AssuanCase> = {
  name: 'assuan',
  oracle:
    'no codec function throws; the line reader matches a reference model under any chunking and stays ' +
    'within its limit; D-line and percent encodings round-trip; oneLine fits its budget without CR/LF',
  generators: [
    {
      name: 'format',
      arb: fc.record({
        stream: streamArb,
        chunks: chunkSizes,
        maxLine: maxLineArb,
        data: fc.oneof(
          fc.uint8Array({ maxLength: 3000 }).map((a) => Buffer.from(a)),
          rawBytes(3000),
        ),
        text: fc.oneof(
          fc.string({ maxLength: 300 }),
          fc.constantFrom('a\r\nb', '%%0A', '€'.repeat(400)),
        ),
        budget: budgetArb,
      }),
    },
    {
      name: 'bytes',
      arb: fc.record({
        stream: rawBytes(4096),
        chunks: chunkSizes,
        maxLine: maxLineArb,
        data: rawBytes(2048),
        text: rawText(600),
        budget: budgetArb,
      }),
    },
  ],
  check({ stream, chunks, maxLine, data, text, budget }) {
    // Line reader against the model, under the generated cut.
    const reader = new LineReader(maxLine);
    const got: string[] = [];
    const lines: Buffer[] = [];
    for (const c of chunk(stream, chunks)) {
      for (const ev of reader.push(c)) {
        got.push(show(ev));
        if (ev.type === 'line') lines.push(ev.line);
      }
      if (reader.bufferedBytes > maxLine) violation('line reader holds more than its limit');
    }
    const tail = reader.end();
    if (tail) got.push(show(tail));
    const want = model(stream, maxLine);
    if (got.join('\n') !== want.join('\n')) violation('line reader events differ from the model');

    // Every line through both parsers.
    for (const line of lines) {
      const r = parseResponseLine(line);
      if (!RESPONSE_TYPES.has(r.type)) violation(`response type ${r.type}`);
      if (r.type === 'ERR' && !(r.value >= 0 && r.value <= 0xffffffff))
        violation('ERR value out of range');
      const c = parseCommandLine(line);
      if (c.kind === 'error' && !(c.error instanceof GpgError))
        violation('command refusal is not a GpgError');
      if (c.kind === 'command') {
        const o = parseOptionArgs(c.args);
        if (o instanceof GpgError) {
          if (o.code !== ErrorCode.ASS_SYNTAX) violation(`OPTION refusal code ${o.code}`);
        } else if (o.name === '' || /[ \t=]/.test(o.name)) {
          violation(`OPTION name ${JSON.stringify(o.name)}`);
        }
        if (plusPercentDecode(c.args).length > Buffer.byteLength(c.args)) violation('decode grew');
        if (percentDecode(c.args).length > Buffer.byteLength(c.args)) violation('decode grew');
      }
    }

    // D lines: encode, split, parse back.
    const encoded = encodeData(data);
    const back: Buffer[] = [];
    let pos = 0;
    while (pos < encoded.length) {
      const lf = encoded.indexOf(0x0a, pos);
      if (lf < 0) violation('encoded data does not end in LF');
      if (lf - pos > MAX_OUT_LINE_BYTES) violation('encoded D line longer than 1000 bytes');
      const line = encoded.subarray(pos, lf);
      if (line.includes(0x0d)) violation('encoded D line carries CR');
      const r = parseResponseLine(line);
      if (r.type !== 'D') violation('encoded line is not a D line');
      back.push(r.data);
      pos = lf + 1;
    }
    if (!Buffer.concat(back).equals(data)) violation('D lines do not decode to the data');
    const esc = escapeData(data);
    if (esc.includes(0x0a) || esc.includes(0x0d)) violation('escaped data carries CR/LF');
    if (!unescapeData(esc).equals(data)) violation('unescape(escape(x)) != x');
    if (unescapeData(data).length > data.length) violation('unescape grew');
    if (
      plusPercentDecode(percentEscapeText(text)).length > Buffer.byteLength(percentEscapeText(text))
    ) {
      violation('decode grew');
    }
    if (!percentDecode(percentEscapeText(text)).equals(Buffer.from(text, 'utf8'))) {
      violation('percentDecode(percentEscapeText(x)) != x');
    }

    const flat = oneLine(text, budget);
    if (/[\r\n]/.test(flat)) violation('oneLine left CR/LF');
    if (Buffer.byteLength(flat, 'utf8') > budget) violation('oneLine over budget');
  },
};
