// A whole gpg-agent session (protocol/agent over protocol/assuan) driven like a client would:
// random command sequences with real keygrips and hashes, INQUIRE replies (D lines, oversize
// lines, END/CAN/another command), OPTIONs, RESET, BYE; or raw bytes written at once.
// Oracle (gpg's rules, reference §1): every line the session writes is OK, ERR, S, D, INQUIRE or a
// comment; the greeting is OK; each command line gets exactly one OK or ERR (after any S/D/INQUIRE),
// an empty or comment line none; every ERR carries source GPG Agent and a code gpg-agent uses, and
// never a bare General error (what an exception escaping a handler becomes); after the client's
// EOF the session ends. A case that does not finish within the time limit is a hang.

import fc from 'fast-check';
import { generateKeyPairSync } from 'node:crypto';
import { escapeData } from '../../../protocol/assuan/escape.js';
import { encodeSexp } from '../../../protocol/sexp.js';
import { serveAgent } from '../../../protocol/agent/index.js';
import { LineReader } from '../../../protocol/assuan/line-reader.js';
import { parseResponseLine } from '../../../protocol/assuan/codec.js';
import { ErrorCode, errCode, errSource, SOURCE_GPG_AGENT } from '../../../protocol/gpg-error.js';
import { FORBIDDEN_COMMANDS } from '../../../protocol/agent/forbidden.js';
import { SimpleHolder } from '../../../test/support/simple-holder.js';
import { violation, type FuzzTarget } from '../harness.js';
import { rawBytes } from '../gen.js';
import { streamPair } from '../stream-pair.js';

export type AgentCase =
  | { kind: 'script'; restricted: boolean; steps: Buffer[]; replies: Buffer[][] }
  | { kind: 'raw'; restricted: boolean; bytes: Buffer };

const holder = new SimpleHolder();
const SIGN_GRIP = holder.signKey.entry.keygrip;
const DECRYPT_GRIP = holder.decryptKey.entry.keygrip;
const KNOWN_CODES = new Set<number>([...Object.values(ErrorCode), 98]);

const hex = (n: number) =>
  fc.uint8Array({ minLength: n, maxLength: n }).map((a) => Buffer.from(a).toString('hex'));
const grip = fc.oneof(
  fc.constantFrom(SIGN_GRIP, DECRYPT_GRIP, SIGN_GRIP.toLowerCase(), 'A'.repeat(40)),
  hex(20),
  fc.string({ maxLength: 44 }),
);
const text = fc.oneof(
  fc.string({ maxLength: 60 }),
  fc.constantFrom('Please+enter%0Athe+passphrase', '%25%2B+', '%', '%ZZ', '%0'),
);
const long = fc.integer({ min: 995, max: 1100 }).map((n) => 'x'.repeat(n));

const command = fc.oneof(
  fc.constantFrom(
    'GETINFO version',
    'GETINFO pid',
    'GETINFO socket_name',
    'GETINFO restricted',
    'GETINFO cmd_has_option PKSIGN x',
    'GETINFO s2k_count',
    'GETINFO std_session_env',
    'GETINFO nosuch',
    'GETINFO',
    'HAVEKEY --list',
    'KEYINFO --list',
    'KEYINFO --list --data',
    'PKSIGN',
    'PKDECRYPT',
    'RESET',
    'NOP',
    'HELP',
    'HELP PKSIGN',
    'HELP nosuch',
    'SCD SERIALNO',
    'SCD LEARN',
    'GETEVENTCOUNTER',
    'LISTTRUSTED',
    'CANCEL',
    'END',
    'D abc',
    'AUTH',
    'INPUT FD=3',
    'OPTION allow-pinentry-notify',
    'OPTION agent-awareness=2.1.0',
    'OPTION ttyname=/dev/pts/3',
    'OPTION display=:0',
    'OPTION putenv=FOO=bar',
    'OPTION pretend-request-origin=remote',
    'OPTION pinentry-mode=loopback',
    'OPTION nosuch',
    'OPTION',
    'OPTION =x',
    'OPTION -x',
    'BYE',
    '',
    '# comment',
    ' NOP',
    '\tNOP',
    'nop',
    'getinfo version',
    'PKSIGN --hash=sha256',
  ),
  fc
    .record({
      v: fc.constantFrom('HAVEKEY', 'KEYINFO', 'READKEY', 'SIGKEY', 'SETKEY', 'KEYINFO --data'),
      g: fc.array(grip, { minLength: 1, maxLength: 3 }),
    })
    .map(({ v, g }) => `${v} ${g.join(' ')}`),
  fc
    .record({
      a: fc.constantFrom(
        '8',
        '10',
        '2',
        '11',
        '99',
        'x',
        '--hash=sha256',
        '--hash=sha512',
        '--hash=nosuch',
        '--inquire',
      ),
      h: fc.oneof(hex(32), hex(64), hex(20), hex(3), fc.string({ maxLength: 10 })),
    })
    .map(({ a, h }) => `SETHASH ${a} ${h}`),
  text.map((t) => `SETKEYDESC ${t}`),
  fc.oneof(hex(20), hex(16), fc.string({ maxLength: 41 })).map((f) => `ISTRUSTED ${f}`),
  fc.constantFrom(...FORBIDDEN_COMMANDS),
  fc
    .record({ w: fc.string({ maxLength: 12 }), a: fc.string({ maxLength: 30 }) })
    .map(({ w, a }) => `${w} ${a}`),
  long,
  long.map((l) => `GETINFO ${l}`),
);

const cleanLine = (s: string) => Buffer.from(s.replace(/\n/g, ' '), 'utf8');

// What gpg itself sends: a whole signing or decryption, so that the holder is reached and the
// answers carry real signatures and session keys (a random sequence rarely gets that far).
const ephemeral = Buffer.from(
  generateKeyPairSync('x25519').publicKey.export({ format: 'jwk' }).x ?? '',
  'base64url',
);
const ECDH_CIPHERTEXT = encodeSexp([
  Buffer.from('enc-val'),
  [
    Buffer.from('ecdh'),
    [Buffer.from('s'), Buffer.alloc(40, 0x0a)],
    [Buffer.from('e'), Buffer.concat([Buffer.of(0x40), ephemeral])],
  ],
]);
const signFlow = fc
  .record({
    grip: fc.constantFrom(SIGN_GRIP, SIGN_GRIP, DECRYPT_GRIP),
    hash: fc.oneof(
      hex(32).map((h) => `8 ${h}`),
      hex(64).map((h) => `10 ${h}`),
      hex(32).map((h) => `--hash=sha256 ${h}`),
    ),
    desc: fc.option(text, { nil: undefined }),
  })
  .map(({ grip, hash, desc }) => [
    'RESET',
    'OPTION ttyname=/dev/pts/1',
    `SIGKEY ${grip}`,
    ...(desc !== undefined ? [`SETKEYDESC ${desc}`] : []),
    `SETHASH ${hash}`,
    'PKSIGN',
  ]);
const decryptFlow = fc
  .record({ grip: fc.constantFrom(DECRYPT_GRIP, DECRYPT_GRIP, SIGN_GRIP), kem: fc.boolean() })
  .map(({ grip, kem }) => [
    'RESET',
    `SETKEY ${grip}`,
    'SETKEYDESC Decrypt%0Ait',
    kem ? 'PKDECRYPT --kem=PGP' : 'PKDECRYPT',
  ]);

// An INQUIRE answer: data (sometimes oversize, sometimes a valid ciphertext), then a terminator
// that the session must act on.
const ciphertext = fc.constantFrom(
  '(7:enc-val(4:ecdh(1:s1:x)(1:e33:' + '@'.repeat(33) + ')))',
  '(7:enc-val(4:ecdh(1:e2:ab)))',
  '(3:foo)',
  '(((((((((((((((((((((',
);
const dataLine = fc.oneof(
  ciphertext.map((c) => `D ${c}`),
  fc.constant(`D ${escapeData(ECDH_CIPHERTEXT).toString('latin1')}`),
  fc.string({ maxLength: 80 }).map((s) => `D ${s}`),
  long.map((l) => `D ${l}`),
  fc.constantFrom('D', 'D %0A%25', '# inside', '', 'D %%%'),
);
const terminator = fc.oneof(
  {
    weight: 6,
    arbitrary: fc
      .constantFrom('END', 'end', 'END now', 'CAN', 'can', 'NOP', 'PKSIGN', 'BYE', 'D')
      .filter((s) => s !== 'D'),
  },
  {
    weight: 1,
    arbitrary: fc
      .string({ minLength: 1, maxLength: 10 })
      .filter((s) => !/^(#|D( |$)|\s*$)/.test(s) && !s.includes('\n')),
  },
);
const reply = fc.oneof(
  fc
    .record({ data: fc.array(dataLine, { maxLength: 5 }), end: terminator })
    .map(({ data, end }) => [...data, end].map(cleanLine)),
  // gpg's own answer: the ciphertext, then END.
  fc.constant<Buffer[]>([
    Buffer.concat([Buffer.from('D '), escapeData(ECDH_CIPHERTEXT)]),
    Buffer.from('END'),
  ]),
);

export const agentTarget: FuzzTarget<AgentCase> = {
  name: 'agent',
  oracle:
    'every reply line is OK/ERR/S/D/INQUIRE/#; one OK or ERR per command line; ERR codes are ' +
    "gpg-agent's (source GPG Agent, never a bare General error); the session ends after EOF",
  caseMs: 2000,
  generators: [
    {
      name: 'format',
      arb: fc.record({
        kind: fc.constant('script' as const),
        restricted: fc.boolean(),
        steps: fc
          .array(
            fc.oneof(
              { weight: 3, arbitrary: command.map((c) => [c]) },
              { weight: 1, arbitrary: signFlow },
              { weight: 1, arbitrary: decryptFlow },
            ),
            { maxLength: 6 },
          )
          .map((groups) => groups.flat().map(cleanLine)),
        replies: fc.array(reply, { minLength: 1, maxLength: 3 }),
      }),
    },
    {
      name: 'bytes',
      arb: fc.record({
        kind: fc.constant('raw' as const),
        restricted: fc.boolean(),
        bytes: rawBytes(3000),
      }),
    },
  ],
  check: runSession,
};

function checkLine(line: Buffer): ReturnType<typeof parseResponseLine> {
  const r = parseResponseLine(line);
  if (r.type === 'INVALID' || r.type === 'END')
    violation(
      `session wrote an invalid line ${JSON.stringify(line.toString('latin1').slice(0, 80))}`,
    );
  if (r.type === 'COMMENT' && line.length === 0) violation('session wrote an empty line');
  if (r.type === 'ERR') {
    if (errSource(r.value) !== SOURCE_GPG_AGENT) violation(`ERR ${r.value} is not from GPG Agent`);
    const code = errCode(r.value);
    if (!KNOWN_CODES.has(code)) violation(`ERR code ${code} is not one gpg-agent uses`);
    if (code === ErrorCode.GENERAL && !r.text.includes(' - '))
      violation('bare General error: an exception escaped a handler');
  }
  if (line.length > 1000) violation('reply line longer than 1000 bytes');
  return r;
}

async function runSession(c: AgentCase): Promise<void> {
  const [server, client] = streamPair();
  const served = serveAgent(server, {
    holder,
    requester: { front: 'local' },
    restricted: c.restricted,
  });
  // Room for any line a session may write (1000 bytes) and then some, to see longer ones.
  const reader = new LineReader(4096);
  const lines: Buffer[] = [];
  let waiter: (() => void) | null = null;
  let ended = false;
  // Seen in a stream callback, reported on the case's own path (a throw there would escape).
  let problem: string | undefined;
  client.on('data', (chunk: Buffer) => {
    for (const ev of reader.push(chunk)) {
      if (ev.type !== 'line') problem ??= 'session wrote an over-long line';
      else lines.push(Buffer.from(ev.line));
    }
    waiter?.();
  });
  client.on('end', () => {
    ended = true;
    if (reader.end()) problem ??= 'session output ends inside a line';
    waiter?.();
  });
  let head = 0;
  const next = async (): Promise<Buffer | null> => {
    for (;;) {
      if (problem) violation(problem);
      if (head < lines.length) break;
      if (ended) return null;
      await new Promise<void>((r) => (waiter = r));
      waiter = null;
    }
    return lines[head++]!;
  };
  const send = (b: Buffer) => client.write(Buffer.concat([b, Buffer.of(0x0a)]));

  try {
    const greeting = await next();
    if (!greeting || checkLine(greeting).type !== 'OK') violation('no OK greeting');
    if (c.kind === 'raw') {
      client.end(c.bytes);
      while (!ended || head < lines.length) {
        const l = await next();
        if (l) checkLine(l);
      }
      await served;
      return;
    }
    let replyNo = 0;
    for (const step of c.steps) {
      send(step);
      const silent = step.length <= 1001 && (step.length === 0 || step[0] === 0x23);
      if (silent) continue;
      const bye = /^bye( |$)/i.test(step.toString('latin1')) && step.length <= 1001;
      for (;;) {
        const l = await next();
        if (!l)
          violation(
            `session ended without answering ${JSON.stringify(step.toString('latin1').slice(0, 40))}`,
          );
        const r = checkLine(l);
        if (r.type === 'OK' || r.type === 'ERR') break;
        if (r.type === 'INQUIRE') {
          for (const line of c.replies[replyNo++ % c.replies.length]!) send(line);
        }
      }
      if (bye) break;
    }
    client.end();
    for (let l = await next(); l; l = await next()) {
      violation(
        `session wrote ${JSON.stringify(l.toString('latin1').slice(0, 60))} after the last answer`,
      );
    }
    await served;
    if (problem) violation(problem);
  } finally {
    client.destroy();
    server.destroy();
    // The test holder records every request for its tests' assertions; a fuzz run makes millions.
    holder.signRequests.length = 0;
    holder.decryptRequests.length = 0;
  }
}
