import t from 'tap';
import fc from 'fast-check';
import { PassThrough } from 'node:stream';
import { ErrorCode, GpgError } from '../protocol/gpg-error.js';
import {
  LineReader,
  LineSource,
  decodeDataLine,
  encodeData,
  escapeData,
  parseCommandLine,
  parseOptionArgs,
  parseResponseLine,
  percentEscapeText,
  plusPercentDecode,
  unescapeData,
  type LineEvent,
} from '../protocol/assuan/index.js';

const LF = 0x0a;

function splitLines(buf: Buffer): Buffer[] {
  const lines: Buffer[] = [];
  let pos = 0;
  while (pos < buf.length) {
    const lf = buf.indexOf(LF, pos);
    if (lf < 0) throw new Error('encoded data does not end in LF');
    lines.push(buf.subarray(pos, lf));
    pos = lf + 1;
  }
  return lines;
}

// Bytes biased towards the ones that need escaping, so every run exercises them.
const nastyBytes = fc.uint8Array({ maxLength: 5000 }).chain((base) =>
  fc
    .array(fc.constantFrom(0x00, 0x0a, 0x0d, 0x25, 0x2b, 0xff), { maxLength: 200 })
    .chain((specials) => fc.shuffledSubarray([...base, ...specials], { minLength: 0 }))
    .map((arr) => Uint8Array.from(arr)),
);

t.test('escapeData escapes exactly %, CR and LF', async (t) => {
  const all = Uint8Array.from({ length: 256 }, (_, i) => i);
  const esc = escapeData(all);
  t.equal(esc.length, 256 + 6);
  t.ok(esc.includes(Buffer.from('%25')) && esc.includes(Buffer.from('%0D')));
  t.ok(esc.includes(Buffer.from('%0A')));
  t.notOk(esc.includes(0x0a) || esc.includes(0x0d), 'no raw CR/LF left');
  t.equal(esc[0], 0x00, 'NUL stays raw');
  t.equal(esc[esc.length - 1], 0xff, 'high bytes stay raw');
  t.equal(escapeData(Buffer.from('a+b')).toString(), 'a+b', '+ has no meaning in D lines');
});

t.test('escape/unescape identity on random bytes', async () => {
  fc.assert(
    fc.property(nastyBytes, (data) => {
      return Buffer.compare(unescapeData(escapeData(data)), Buffer.from(data)) === 0;
    }),
    { numRuns: 300 },
  );
});

t.test('unescapeData decodes every %XX and keeps malformed escapes', async (t) => {
  t.same(unescapeData(Buffer.from('%41%6a%00%ff')), Buffer.from([0x41, 0x6a, 0x00, 0xff]));
  t.equal(unescapeData(Buffer.from('100% sure %4')).toString(), '100% sure %4');
  t.equal(unescapeData(Buffer.from('%zz%')).toString(), '%zz%');
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 2000 }), (data) => {
      unescapeData(data);
    }),
  );
});

t.test('plusPercentDecode and percentEscapeText', async (t) => {
  const desc = 'Please+enter+the+passphrase:%0A%22T+<t@example.org>%22%0A255-bit+EDDSA+key,+100%25';
  t.equal(
    plusPercentDecode(desc).toString(),
    'Please enter the passphrase:\n"T <t@example.org>"\n255-bit EDDSA key, 100%',
  );
  t.same(plusPercentDecode('%2B+%00'), Buffer.from([0x2b, 0x20, 0x00]), 'escaped + stays +');
  t.equal(percentEscapeText('a+b 50%\r\nc'), 'a+b 50%25%0D%0Ac');
  fc.assert(
    fc.property(
      fc.oneof(
        fc.string({ unit: 'grapheme', maxLength: 100 }),
        fc
          .array(fc.constantFrom('%', '\r', '\n', '+', 'a', 'é', '%41', ' '), { maxLength: 50 })
          .map((a) => a.join('')),
      ),
      (s) => {
        const esc = percentEscapeText(s);
        return !/[\r\n]/.test(esc) && percentDecodeText(esc) === s;
      },
    ),
  );
});

function percentDecodeText(s: string): string {
  return unescapeData(Buffer.from(s, 'utf8')).toString('utf8');
}

t.test('encodeData → D lines → decode is the identity; lines stay ≤ 1000 bytes', async () => {
  fc.assert(
    fc.property(nastyBytes, (data) => {
      const lines = splitLines(encodeData(data));
      const parts: Buffer[] = [];
      for (const line of lines) {
        if (line.length > 1000) return false;
        if (line.includes(0x0d)) return false;
        const r = parseResponseLine(line);
        if (r.type !== 'D') return false;
        parts.push(r.data);
        // A line never ends inside an escape.
        const tail = line.subarray(-2);
        if (tail[0] === 0x25 || tail[1] === 0x25) return false;
      }
      return Buffer.compare(Buffer.concat(parts), Buffer.from(data)) === 0;
    }),
    { numRuns: 300 },
  );
});

t.test('encodeData packs lines: all-escape data fills lines to 998+ bytes', async (t) => {
  const lines = splitLines(encodeData(Buffer.alloc(1000, 0x25)));
  t.equal(lines.length, 4);
  t.equal(lines[0]!.length, 2 + 996, 'first line: 332 escapes (996 bytes) fit, a 333rd would not');
  const plain = splitLines(encodeData(Buffer.alloc(2000, 0x61)));
  t.same(
    plain.map((l) => l.length),
    [1000, 1000, 6],
  );
  t.equal(encodeData(Buffer.alloc(0)).length, 0, 'no data, no lines');
  t.same(decodeDataLine(Buffer.from('a%0Ab')), Buffer.from('a\nb'));
});

t.test('parseResponseLine', async (t) => {
  const p = (s: string | Buffer) => parseResponseLine(Buffer.isBuffer(s) ? s : Buffer.from(s));
  t.same(p('OK'), { type: 'OK', text: '' });
  t.same(p('OK Pleased to meet you'), { type: 'OK', text: 'Pleased to meet you' });
  t.same(p('ERR 67108881 No secret key <GPG Agent>'), {
    type: 'ERR',
    value: 67108881,
    text: 'No secret key <GPG Agent>',
  });
  t.same(p('ERR 100'), { type: 'ERR', value: 100, text: '' });
  t.same(p('S KEYINFO ABCD D - - - C - - -'), {
    type: 'S',
    keyword: 'KEYINFO',
    args: 'ABCD D - - - C - - -',
  });
  t.same(p('S PROGRESS'), { type: 'S', keyword: 'PROGRESS', args: '' });
  t.same(p('INQUIRE CIPHERTEXT'), { type: 'INQUIRE', keyword: 'CIPHERTEXT', args: '' });
  t.same(p('INQUIRE PINENTRY_LAUNCHED 42 curses'), {
    type: 'INQUIRE',
    keyword: 'PINENTRY_LAUNCHED',
    args: '42 curses',
  });
  t.same(p('END'), { type: 'END' });
  t.same(p('# hi'), { type: 'COMMENT', text: 'hi' });
  t.same(p(''), { type: 'COMMENT', text: '' });
  const d = p(Buffer.from([0x44, 0x20, 0x00, 0x25, 0x30, 0x44, 0xff]));
  t.same(d, { type: 'D', data: Buffer.from([0x00, 0x0d, 0xff]) });
  for (const bad of ['OKAY', 'ok', 'ERR', 'ERR x', 'ERR 99999999999', 'Dx', 'ENDX', 'FOO']) {
    t.equal(p(bad).type, 'INVALID', bad);
  }
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 1100 }), (bytes) => {
      p(Buffer.from(bytes));
    }),
  );
});

t.test('parseCommandLine', async (t) => {
  const p = (s: string) => parseCommandLine(Buffer.from(s));
  t.same(p('getinfo  version'), {
    kind: 'command',
    word: 'getinfo',
    command: 'GETINFO',
    args: 'version',
  });
  t.same(p('NOP\tx y '), { kind: 'command', word: 'NOP', command: 'NOP', args: 'x y ' });
  t.same(p(''), { kind: 'ignore' });
  t.same(p('# comment'), { kind: 'ignore' });
  const ws = p(' NOP');
  t.equal(ws.kind, 'error');
  if (ws.kind === 'error') t.equal(ws.error.code, ErrorCode.ASS_SYNTAX);
});

t.test('parseOptionArgs follows libassuan std_handler_option', async (t) => {
  const ok = (args: string, name: string, value: string | undefined) =>
    t.same(parseOptionArgs(args), { name, value }, JSON.stringify(args));
  ok('ttyname=/dev/pts/1', 'ttyname', '/dev/pts/1');
  ok('--ttytype=xterm', 'ttytype', 'xterm');
  ok('  lc-ctype  =  C.UTF-8  ', 'lc-ctype', 'C.UTF-8');
  ok('display :0', 'display', ':0');
  ok('a b c', 'a', 'b c');
  ok('allow-pinentry-notify', 'allow-pinentry-notify', undefined);
  ok('putenv=FOO=bar', 'putenv', 'FOO=bar');
  // The details are the texts real gpg-agent 2.2.40 sends for these lines.
  const bad = (args: string, detail: string) => {
    const r = parseOptionArgs(args);
    t.ok(r instanceof GpgError && r.code === ErrorCode.ASS_SYNTAX, JSON.stringify(args));
    if (r instanceof GpgError) t.equal(r.detail, detail);
  };
  bad('', 'argument required');
  bad('foo=', 'option argument expected');
  bad('foo =  ', 'option argument expected');
  bad('=x', 'no option name given');
  bad('-x', 'option should not begin with one dash');
  bad('  --  ', 'option should not begin with one dash');
});

t.test('LineReader splits on LF, strips one CR, enforces the limit', async (t) => {
  const r = new LineReader();
  const ev = r.push(Buffer.from('NOP\r\nA\r\r\n\nB'));
  t.same(
    ev.map((e) => (e.type === 'line' ? e.line.toString('latin1') : e.type)),
    ['NOP', 'A\r', ''],
  );
  t.same(
    r.push(Buffer.from('C\n')).map((e) => (e.type === 'line' ? e.line.toString() : e.type)),
    ['BC'],
  );
  t.equal(r.end(), null);

  // 1001 bytes before LF are accepted (a CR counts), 1002 are not: same as gpg-agent 2.2.40.
  const ok = r.push(Buffer.concat([Buffer.alloc(1001, 0x61), Buffer.from('\n')]));
  t.equal(ok[0]?.type, 'line');
  const okCr = r.push(Buffer.from('x'.repeat(1000) + '\r\n'));
  t.equal(okCr[0]?.type === 'line' && okCr[0].line.length, 1000);
  t.same(r.push(Buffer.from('x'.repeat(1001) + '\r\n')), [{ type: 'too-long' }]);

  // A long line split over chunks is reported once and skipped through its LF.
  const events: LineEvent[] = [];
  for (let i = 0; i < 50; i++) events.push(...r.push(Buffer.alloc(100, 0x62)));
  t.ok(r.bufferedBytes <= 1001);
  events.push(...r.push(Buffer.from('tail\nNEXT\n')));
  t.same(
    events.map((e) => (e.type === 'line' ? e.line.toString() : e.type)),
    ['too-long', 'NEXT'],
  );
  r.push(Buffer.from('partial'));
  t.same(r.end(), { type: 'incomplete', length: 7 });
});

t.test('LineReader never throws on random and truncated streams', async () => {
  fc.assert(
    fc.property(
      fc.array(
        fc.oneof(
          fc.uint8Array({ maxLength: 3000 }),
          fc.constantFrom(Buffer.from('\n'), Buffer.from('\r\n'), Buffer.alloc(1001, 0x41)),
        ),
        { maxLength: 30 },
      ),
      fc.integer({ min: 1, max: 2000 }),
      (chunks, limit) => {
        const r = new LineReader(limit);
        const all = Buffer.concat(chunks);
        let lfs = 0;
        for (const b of all) if (b === LF) lfs++;
        let lineEvents = 0;
        let tooLong = 0;
        for (const c of chunks) {
          for (const e of r.push(c)) {
            if (e.type === 'line') {
              lineEvents++;
              if (e.line.length > limit || e.line.includes(LF)) return false;
            } else if (e.type === 'too-long') tooLong++;
            else return false;
          }
          if (r.bufferedBytes > limit) return false;
        }
        const tail = r.end();
        // Every LF ends exactly one line or one too-long report (a report may also come
        // before its LF is seen, at most once per line).
        const tailOpen = all.length > 0 && all[all.length - 1] !== LF;
        if (lineEvents + tooLong < lfs || lineEvents + tooLong > lfs + 1) return false;
        if (tail && (tail.type !== 'incomplete' || !tailOpen)) return false;
        return r.bufferedBytes === 0;
      },
    ),
    { numRuns: 300 },
  );
});

t.test('LineSource pauses a flooding stream and resumes when drained', async (t) => {
  const stream = new PassThrough();
  const source = new LineSource(stream, { maxQueuedBytes: 4096 });
  const line = Buffer.from('NOP ' + 'x'.repeat(95) + '\n');
  for (let i = 0; i < 100; i++) stream.write(line);
  await new Promise((resolve) => setImmediate(resolve));
  t.ok(source.isPaused, 'paused after the cap');
  t.ok(source.queuedBytes <= 4096 + line.length * 100, 'queue bounded by what was delivered');
  t.ok(source.queuedBytes > 4096);
  let got = 0;
  while (got < 100) {
    const ev = await source.next();
    t.equal(ev?.type, 'line');
    got++;
  }
  t.notOk(source.isPaused, 'resumed once drained');
  stream.end();
  t.equal(await source.next(), null, 'EOF → null');
});

t.test('LineSource: empty-line flood is bounded too', async (t) => {
  const stream = new PassThrough();
  const source = new LineSource(stream, { maxQueuedBytes: 1000 });
  stream.write(Buffer.alloc(600, 0x0a));
  stream.write(Buffer.alloc(600, 0x0a));
  await new Promise((resolve) => setImmediate(resolve));
  t.ok(source.isPaused);
  stream.destroy();
});
