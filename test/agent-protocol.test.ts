// The gpg-agent command set, driven over a real unix socket by the real gpg-connect-agent
// (GnuPG 2.2.40) through the flows of reference/gpg-agent-protocol.md §2–§3 and the captured
// transcripts. Expected lines are the exact ones a real gpg-agent sends.

import t, { type Test } from 'tap';
import { execFile } from 'node:child_process';
import {
  createHash,
  createPublicKey,
  diffieHellman,
  generateKeyPairSync,
  randomBytes,
  verify,
} from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { once } from 'node:events';
import {
  AGENT_VERSION,
  FORBIDDEN_COMMANDS,
  compareVersions,
  serveAgent,
  type AgentEvent,
  type AgentSessionOptions,
} from '../protocol/agent/index.js';
import { AssuanClient, unescapeData } from '../protocol/assuan/index.js';
import { ErrorCode, GpgError } from '../protocol/gpg-error.js';
import type { KeyEntry, Requester } from '../protocol/keyholder.js';
import { ContentStore } from '../protocol/agent/index.js';
import { findList, parseSexp } from '../protocol/sexp.js';
import { SimpleHolder } from './support/simple-holder.js';
import { gpgClients } from './support/gpg-versions.js';

const REQUESTER: Requester = { front: 'local', pid: 4242, uid: 1000, command: 'gpg --sign' };
const MISSING_GRIP = '0123456789ABCDEF0123456789ABCDEF01234567';
const CARD_GRIP = 'C0FFEEC0FFEEC0FFEEC0FFEEC0FFEEC0FFEEC0FF';

const FORBIDDEN = 'ERR 67109115 Forbidden <GPG Agent>';
const NO_SECKEY = 'ERR 67108881 No secret key <GPG Agent>';

interface Agent {
  path: string;
  dir: string;
  holder: SimpleHolder;
  events: AgentEvent[];
  /** gpg-connect-agent's stdout lines for these commands (then /bye). */
  gca(commands: string[], flags?: string[]): Promise<string[]>;
}

const cardEntry: KeyEntry = {
  keygrip: CARD_GRIP,
  fingerprint: 'C'.repeat(40),
  primaryFingerprint: 'C'.repeat(40),
  algorithm: 'rsa2048',
  usage: ['sign'],
  publicKey: Buffer.from('(10:public-key(3:rsa(1:n1:\x05)(1:e1:\x03)))', 'latin1'),
  cached: true,
  card: { serialNo: 'D2760001240102010006123456780000', idStr: 'OPENPGP.1' },
};

async function startAgent(t: Test, opts: Partial<AgentSessionOptions> = {}): Promise<Agent> {
  const dir = await mkdtemp(join(tmpdir(), 'kt-agent-'));
  const path = join(dir, 'S.agent');
  const holder = new SimpleHolder({ extraEntries: [cardEntry] });
  const events: AgentEvent[] = [];
  const sockets = new Set<Socket>();
  const server: Server = createServer((sock) => {
    sockets.add(sock);
    sock.on('close', () => sockets.delete(sock));
    sock.on('error', () => undefined);
    void serveAgent(sock, {
      holder,
      requester: REQUESTER,
      onEvent: (e) => events.push(e),
      ...opts,
    });
  });
  server.listen(path);
  await once(server, 'listening');
  t.teardown(async () => {
    for (const s of sockets) s.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
    await rm(dir, { recursive: true, force: true });
  });
  const gca = (commands: string[], flags: string[] = []) =>
    new Promise<string[]>((resolve, reject) => {
      execFile(
        'gpg-connect-agent',
        ['-S', path, '--no-autostart', ...flags, ...commands, '/bye'],
        { env: { ...process.env, GNUPGHOME: dir, LC_ALL: 'C' }, encoding: 'latin1' },
        (err, stdout, stderr) => {
          if (err) reject(new Error(`gpg-connect-agent failed: ${err.message}\n${stderr}`));
          else resolve(stdout.split('\n').filter((l) => l.length > 0));
        },
      );
    });
  return { path, dir, holder, events, gca };
}

/**
 * Joins the data of `--hex` output: each D line is dumped raw (still percent-escaped) in rows
 * `D[0000]  xx xx … xx  xx … xx   ascii`; rows of one reply are concatenated, then unescaped.
 * Returns one Buffer per run of D rows, so replies of several commands stay apart.
 */
function hexData(lines: string[]): Buffer[] {
  const out: Buffer[] = [];
  let cur: number[] | undefined;
  for (const line of lines) {
    if (/^D\[[0-9a-f]{4}\]/i.test(line)) {
      cur ??= [];
      const hex = line.slice(9, 9 + 49).match(/[0-9A-Fa-f]{2}/g) ?? [];
      for (const h of hex) cur.push(parseInt(h, 16));
    } else if (cur) {
      out.push(unescapeData(Buffer.from(cur)));
      cur = undefined;
    }
  }
  if (cur) out.push(unescapeData(Buffer.from(cur)));
  return out;
}

const withoutData = (lines: string[]) => lines.filter((l) => !/^D\[/.test(l));

t.test('connection set-up as gpg 2.2/2.4 sends it (§2.1)', async (t) => {
  const a = await startAgent(t);
  const out = await a.gca([
    'RESET',
    'OPTION ttyname=/dev/pts/0',
    'OPTION ttytype=xterm-256color',
    'OPTION display=:0',
    'OPTION xauthority=/x/xa',
    'OPTION putenv=WAYLAND_DISPLAY=wayland-0',
    'OPTION pinentry-user-data=foo',
    'OPTION lc-ctype=C.UTF-8',
    'OPTION lc-messages=C.UTF-8',
    'GETINFO version',
    'OPTION allow-pinentry-notify',
    'OPTION agent-awareness=2.1.0',
    'OPTION pinentry-mode=loopback',
    'GETINFO restricted',
  ]);
  t.same(out, [
    ...Array(9).fill('OK'),
    `D ${AGENT_VERSION}`,
    'OK',
    'OK',
    'OK',
    'OK',
    'ERR 67109120 False <GPG Agent>',
  ]);
  // Not older than any gpg that meets it here, so none prints "server is older than us".
  for (const c of gpgClients()) t.ok(compareVersions(AGENT_VERSION, c.version) >= 0, c.label);
  t.ok(compareVersions(AGENT_VERSION, '2.6.0') >= 0, 'not older than gpg 2.6');
});

t.test('OPTION and GETINFO refusals match the real agent', async (t) => {
  const a = await startAgent(t);
  const out = await a.gca([
    'OPTION pinentry-mode=bogus',
    'OPTION pinentry-mode',
    'OPTION no-such-option',
    'OPTION putenv',
    'OPTION --ttyname=/dev/pts/3',
    'GETINFO no-such-thing',
    'GETINFO',
    'GETINFO cmd_has_option',
    'GETINFO cmd_has_option PKSIGN foo',
    'GETINFO s2k_count',
    'GETINFO pid',
    'GETINFO socket_name',
  ]);
  t.same(out, [
    'ERR 67108919 Invalid value <GPG Agent>',
    'ERR 67108919 Invalid value <GPG Agent>',
    'ERR 67109038 Unknown option <GPG Agent>',
    'ERR 67108919 Invalid value <GPG Agent>',
    'OK',
    'ERR 67109144 IPC parameter error <GPG Agent> - unknown value for WHAT',
    'ERR 67109144 IPC parameter error <GPG Agent> - unknown value for WHAT',
    'ERR 67108992 Missing value <GPG Agent>',
    'ERR 67109120 False <GPG Agent>',
    'D 65011712',
    'OK',
    `D ${process.pid}`,
    'OK',
    'ERR 67108924 Not supported <GPG Agent>',
  ]);
});

t.test('HAVEKEY: any hit is OK, misses and malformed grips are the right ERR', async (t) => {
  const a = await startAgent(t);
  const sign = a.holder.signKey.entry.keygrip;
  const enc = a.holder.decryptKey.entry.keygrip;
  const out = await a.gca([
    `HAVEKEY ${sign} ${enc}`,
    `HAVEKEY ${MISSING_GRIP} ${enc.toLowerCase()}`,
    `HAVEKEY ${MISSING_GRIP}`,
    'HAVEKEY',
    'HAVEKEY zz',
    'HAVEKEY 1234',
    'HAVEKEY 123',
    `HAVEKEY ${MISSING_GRIP} zz`,
    `HAVEKEY --info ${sign}`,
    `HAVEKEY --info ${MISSING_GRIP}`,
  ]);
  t.same(out, [
    'OK',
    'OK',
    NO_SECKEY,
    'ERR 67109144 IPC parameter error <GPG Agent> - invalid length of keygrip',
    'ERR 67109144 IPC parameter error <GPG Agent> - invalid hexstring',
    'ERR 67109144 IPC parameter error <GPG Agent> - invalid length of keygrip',
    'ERR 67109144 IPC parameter error <GPG Agent> - odd number of digits',
    'ERR 67109144 IPC parameter error <GPG Agent> - invalid hexstring',
    'S KEYFILEINFO clear',
    'OK',
    NO_SECKEY,
  ]);
});

t.test('HAVEKEY --list returns binary grips (gpg 2.4 fast path)', async (t) => {
  const a = await startAgent(t);
  const grips = [a.holder.signKey.entry.keygrip, a.holder.decryptKey.entry.keygrip, CARD_GRIP];
  const out = await a.gca(['HAVEKEY --list=1000', 'HAVEKEY --list=1', 'HAVEKEY --list'], ['--hex']);
  const [all, one, unlimited] = hexData(out);
  t.equal(all?.toString('hex').toUpperCase(), grips.join(''));
  t.equal(one?.toString('hex').toUpperCase(), grips[0]);
  t.equal(unlimited?.toString('hex').toUpperCase(), grips.join(''));
  t.same(withoutData(out), ['OK', 'ERR 67108938 Result truncated <GPG Agent>', 'OK']);

  const b = await startAgent(t, { allowKeyList: false });
  t.same(await b.gca(['HAVEKEY --list=1000', 'KEYINFO --list']), [FORBIDDEN, FORBIDDEN]);
});

t.test('KEYINFO: 9 fields, card keys, --list, --data, misses', async (t) => {
  const a = await startAgent(t);
  const sign = a.holder.signKey.entry.keygrip;
  const enc = a.holder.decryptKey.entry.keygrip;
  const out = await a.gca([
    `KEYINFO ${sign}`,
    `KEYINFO --with-ssh --ssh-fpr ${CARD_GRIP.toLowerCase()}`,
    `KEYINFO ${MISSING_GRIP}`,
    'KEYINFO',
    'KEYINFO zz',
    'KEYINFO --list',
    'KEYINFO --ssh-list',
    `KEYINFO --data ${enc}`,
  ]);
  t.same(out, [
    `S KEYINFO ${sign} D - - - C - - -`,
    'OK',
    `S KEYINFO ${CARD_GRIP} T D2760001240102010006123456780000 OPENPGP.1 1 - - - -`,
    'OK',
    'ERR 67108891 Not found <GPG Agent>',
    'ERR 67109144 IPC parameter error <GPG Agent> - invalid length of keygrip',
    'ERR 67109144 IPC parameter error <GPG Agent> - invalid hexstring',
    `S KEYINFO ${sign} D - - - C - - -`,
    `S KEYINFO ${enc} D - - - C - - -`,
    `S KEYINFO ${CARD_GRIP} T D2760001240102010006123456780000 OPENPGP.1 1 - - - -`,
    'OK',
    'OK',
    `D ${enc} D - - - C - - -%0A`,
    'OK',
  ]);
  // gpg requires exactly 9 fields after the keyword (g10/call-agent.c split_fields).
  t.equal(out[0]!.split(' ').length - 2, 9);
});

t.test('READKEY returns the canonical public key', async (t) => {
  const a = await startAgent(t);
  const sign = a.holder.signKey.entry.keygrip;
  const out = await a.gca(
    [
      `READKEY ${sign}`,
      `READKEY --format=ssh ${sign}`,
      `READKEY ${MISSING_GRIP}`,
      'READKEY',
      `READKEY --no-data ${sign}`,
    ],
    ['--hex'],
  );
  const [key] = hexData(out);
  t.same(key, Buffer.from(a.holder.signKey.entry.publicKey));
  t.match(key?.toString('latin1'), /^\(10:public-key\(3:ecc\(5:curve7:Ed25519\)\(5:flags5:eddsa\)/);
  t.same(withoutData(out), [
    'OK',
    'ERR 67108924 Not supported <GPG Agent>',
    'ERR 67141713 No such file or directory <GPG Agent>',
    'ERR 67109144 IPC parameter error <GPG Agent> - invalid length of keygrip',
    'OK',
  ]);
});

t.test('detach-sign flow produces a signature that verifies', async (t) => {
  const a = await startAgent(t);
  const sign = a.holder.signKey.entry.keygrip;
  const d256 = createHash('sha256').update('hello keytether').digest();
  const d512 = createHash('sha512').update('hello keytether').digest();
  const out = await a.gca(
    [
      `HAVEKEY ${sign} ${a.holder.decryptKey.entry.keygrip}`,
      'RESET',
      `SIGKEY ${sign}`,
      'SETKEYDESC Please+enter+the+passphrase:%0A%22T+<t@example.org>%22%0A255-bit+EDDSA+key,+100%25+sure.%0A',
      `SETHASH 8 ${d256.toString('hex').toUpperCase()}`,
      'PKSIGN',
      // gpg 2.4 picks SHA-512 for Ed25519; also the --hash= form and a nonce argument.
      `SETHASH --hash=sha512 ${d512.toString('hex')}`,
      'PKSIGN -- 1A2B3C',
    ],
    ['--hex'],
  );
  t.same(withoutData(out), ['OK', 'OK', 'OK', 'OK', 'OK', 'OK', 'OK', 'OK']);
  const sigs = hexData(out);
  t.equal(sigs.length, 2);
  for (const [i, digest] of [d256, d512].entries()) {
    const parsed = parseSexp(sigs[i]!);
    if (!parsed.ok) throw new Error(parsed.error);
    t.equal(parsed.end, sigs[i]!.length, 'canonical, nothing after it');
    const r = findList(parsed.value, 'r')?.[1] as Buffer;
    const s = findList(parsed.value, 's')?.[1] as Buffer;
    t.ok(findList(parsed.value, 'eddsa'), 'eddsa sig-val');
    const ok = verify(null, digest, a.holder.signKey.publicKey, Buffer.concat([r, s]));
    t.ok(ok, `signature ${i} verifies over the digest`);
  }
  const [first, second] = a.holder.signRequests;
  t.equal(first?.hashAlgo, 8);
  t.equal(
    first?.description,
    'Please enter the passphrase:\n"T <t@example.org>"\n255-bit EDDSA key, 100% sure.\n',
  );
  t.same(first?.requester, REQUESTER);
  t.equal(second?.hashAlgo, 10);
  t.equal(second?.description, undefined, 'SETKEYDESC is consumed by PKSIGN');
  t.ok(a.events.some((e) => e.command === 'PKSIGN' && !e.error));
});

t.test('SETHASH/PKSIGN errors', async (t) => {
  const a = await startAgent(t);
  const sign = a.holder.signKey.entry.keygrip;
  const d = 'DAB104DB089C25FBB9A780E8687083FF18C9FA6D1AECB97192B40C1ABDFEBA41';
  const out = await a.gca([
    'PKSIGN',
    `SIGKEY ${sign}`,
    'PKSIGN',
    'SETHASH 4 00',
    'SETHASH x 00',
    'SETHASH 8 0011',
    'SETHASH 8 0g',
    'SETHASH 8 001',
    'SETHASH 8',
    'SETHASH --hash=foo 00',
    'SETHASH --inquire',
    `SETHASH 8 ${d}`,
    'SETHASH 8 0011',
    'PKSIGN',
    `SETHASH 8 ${d}`,
    'RESET',
    'PKSIGN',
    'SIGKEY 12',
    'SIGKEY',
    'SETKEYDESC',
  ]);
  t.same(out, [
    NO_SECKEY,
    'OK',
    'ERR 67108992 Missing value <GPG Agent> - no hash set',
    'ERR 67108948 Unsupported algorithm <GPG Agent>',
    'ERR 67108948 Unsupported algorithm <GPG Agent>',
    'ERR 67109144 IPC parameter error <GPG Agent> - unsupported length of hash',
    'ERR 67109144 IPC parameter error <GPG Agent> - invalid hexstring',
    'ERR 67109144 IPC parameter error <GPG Agent> - odd number of digits',
    'ERR 67109144 IPC parameter error <GPG Agent> - unsupported length of hash',
    'ERR 67109144 IPC parameter error <GPG Agent> - invalid hash algorithm',
    'ERR 67108924 Not supported <GPG Agent> - SETHASH --inquire is not supported',
    'OK',
    'ERR 67109144 IPC parameter error <GPG Agent> - unsupported length of hash',
    // A failed SETHASH leaves no older digest behind to be signed.
    'ERR 67108992 Missing value <GPG Agent> - no hash set',
    'OK',
    'OK',
    NO_SECKEY,
    'ERR 67109144 IPC parameter error <GPG Agent> - invalid length of keygrip',
    'ERR 67109144 IPC parameter error <GPG Agent> - invalid length of keygrip',
    'ERR 67109144 IPC parameter error <GPG Agent> - no description given',
  ]);
  t.equal(a.holder.signRequests.length, 0, 'the holder was never asked');
});

t.test('holder errors: GpgError codes pass through, anything else is GENERAL', async (t) => {
  const a = await startAgent(t);
  const sign = a.holder.signKey.entry.keygrip;
  const set = [`SIGKEY ${sign}`, `SETHASH 8 ${'AB'.repeat(32)}`];
  a.holder.nextError = new GpgError(ErrorCode.CANCELED);
  t.same(await a.gca([...set, 'PKSIGN']), [
    'OK',
    'OK',
    'ERR 67108963 Operation cancelled <GPG Agent>',
  ]);
  a.holder.nextError = new Error('secret detail 1234');
  const out = await a.gca([...set, 'PKSIGN']);
  t.same(out, ['OK', 'OK', 'ERR 67108865 General error <GPG Agent>']);
  t.notMatch(out.join('\n'), /secret detail/);
  const signEvents = a.events.filter((e) => e.command === 'PKSIGN');
  t.same(
    signEvents.map((e) => e.error?.value),
    [67108963, 67108865],
  );
  t.notMatch(JSON.stringify(signEvents), /secret detail/);
});

t.test('PKDECRYPT: INQUIRE CIPHERTEXT, value is the X25519 shared point', async (t) => {
  const a = await startAgent(t);
  const enc = a.holder.decryptKey.entry.keygrip;
  const eph = generateKeyPairSync('x25519');
  const ephPub = Buffer.from(eph.publicKey.export({ format: 'jwk' }).x!, 'base64url');
  // Bytes that must be escaped on the wire are forced into the wrapped key.
  const s = Buffer.concat([Buffer.of(48, 0x25, 0x0a, 0x0d, 0x00), randomBytes(44)]);
  const ciphertext = Buffer.concat([
    Buffer.from('(7:enc-val(4:ecdh(1:s49:', 'latin1'),
    s,
    Buffer.from(')(1:e33:', 'latin1'),
    Buffer.of(0x40),
    ephPub,
    Buffer.from(')))', 'latin1'),
  ]);
  const ctFile = join(a.dir, 'ct');
  const garbage = join(a.dir, 'garbage');
  const huge = join(a.dir, 'huge');
  await writeFile(ctFile, ciphertext);
  await writeFile(garbage, '(3:foo');
  await writeFile(huge, Buffer.alloc(5000, 0x41));
  // gpg-connect-agent keeps the first /definqfile per keyword, so one connection per file.
  const run = (file: string) =>
    a.gca(
      [
        `/definqfile CIPHERTEXT ${file}`,
        'RESET',
        `SETKEY ${enc}`,
        'SETKEYDESC Please+enter+the+passphrase',
        'PKDECRYPT',
      ],
      ['--hex'],
    );
  const inquiry = ['OK', 'OK', 'OK', 'S INQUIRE_MAXLEN 4096', 'INQUIRE CIPHERTEXT'];
  const out = await run(ctFile);
  t.same(withoutData(out), [...inquiry, 'OK']);
  t.same(await run(garbage), [
    ...inquiry,
    'ERR 67108947 Invalid S-expression <GPG Agent> - ciphertext is not a canonical enc-val',
  ]);
  t.same(await run(huge), [...inquiry, 'ERR 67109137 Too much data for IPC layer <GPG Agent>']);
  const [reply] = hexData(out);
  const x = diffieHellman({
    privateKey: eph.privateKey,
    publicKey: createPublicKey({
      key: { kty: 'OKP', crv: 'X25519', x: a.holder.decryptKey.publicRaw.toString('base64url') },
      format: 'jwk',
    }),
  });
  t.same(
    reply,
    Buffer.concat([Buffer.from('(5:value33:', 'latin1'), Buffer.of(0x40), x, Buffer.from(')')]),
  );
  t.equal(a.holder.decryptRequests.length, 1);
  t.same(a.holder.decryptRequests[0]?.ciphertext, ciphertext, 'ciphertext arrives byte-exact');
  t.equal(a.holder.decryptRequests[0]?.description, 'Please enter the passphrase');
});

t.test('PKDECRYPT sends S PADDING when the holder reports it', async (t) => {
  const a = await startAgent(t);
  const enc = a.holder.decryptKey.entry.keygrip;
  // An RSA-style result: the holder already removed the PKCS#1 padding.
  a.holder.decrypt = async () => ({ value: Buffer.from('0910', 'hex'), padding: 0 });
  const ct = join(a.dir, 'ct');
  await writeFile(ct, '(7:enc-val(3:rsa(1:a1:\x01)))');
  const out = await a.gca([`/definqfile CIPHERTEXT ${ct}`, `SETKEY ${enc}`, 'PKDECRYPT']);
  t.same(out, [
    'OK',
    'S INQUIRE_MAXLEN 4096',
    'INQUIRE CIPHERTEXT',
    'S PADDING 0',
    'D (5:value2:\t\x10)',
    'OK',
  ]);
});

t.test('forbidden, unsupported and unknown commands', async (t) => {
  const a = await startAgent(t);
  t.ok(FORBIDDEN_COMMANDS.length >= 22);
  for (const must of [
    'EXPORT_KEY',
    'IMPORT_KEY',
    'PRESET_PASSPHRASE',
    'GET_PASSPHRASE',
    'KEYTOCARD',
  ]) {
    t.ok(FORBIDDEN_COMMANDS.includes(must), must);
  }
  const out = await a.gca([
    ...FORBIDDEN_COMMANDS.map((c) => `${c} ${MISSING_GRIP}`),
    'export_key',
    'SCD SERIALNO',
    'SCD GETATTR KEY-FPR',
    'FOOBAR',
    'GETEVENTCOUNTER',
    `ISTRUSTED ${'A'.repeat(40)}`,
    'ISTRUSTED xyz',
    'LISTTRUSTED',
    'NOP',
  ]);
  t.same(out, [
    ...FORBIDDEN_COMMANDS.map(() => FORBIDDEN),
    FORBIDDEN,
    'ERR 67108983 No SmartCard daemon <GPG Agent>',
    'ERR 67108983 No SmartCard daemon <GPG Agent>',
    'ERR 67109139 Unknown IPC command <GPG Agent>',
    'S EVENTCOUNTER 0 0 0',
    'OK',
    'ERR 67108962 Not trusted <GPG Agent>',
    'ERR 67109144 IPC parameter error <GPG Agent> - invalid fingerprint',
    'OK',
    'OK',
  ]);
});

t.test('restricted mode behaves like the extra socket (§3, transcripts)', async (t) => {
  const a = await startAgent(t, { restricted: true });
  const sign = a.holder.signKey.entry.keygrip;
  const out = await a.gca([
    'RESET',
    'OPTION ttytype=xterm',
    'GETINFO restricted',
    'GETINFO version',
    'OPTION allow-pinentry-notify',
    'OPTION agent-awareness=2.1.0',
    'OPTION pinentry-mode=loopback',
    'OPTION putenv=A=B',
    'OPTION no-such-option',
    'GETINFO pid',
    'GETINFO no-such-thing',
    `HAVEKEY ${sign}`,
    `KEYINFO ${sign}`,
    `READKEY ${sign}`,
    'GETEVENTCOUNTER',
    'LISTTRUSTED',
    'SCD SERIALNO',
    'SCD LEARN --force',
    'EXPORT_KEY',
    `SIGKEY ${sign}`,
    'SETKEYDESC Remote+please',
    `SETHASH 8 ${'CD'.repeat(32)}`,
    'PKSIGN',
  ]);
  t.same(out.slice(0, -2), [
    'OK',
    FORBIDDEN,
    'OK',
    `D ${AGENT_VERSION}`,
    'OK',
    FORBIDDEN,
    'OK',
    'OK',
    FORBIDDEN,
    FORBIDDEN,
    FORBIDDEN,
    FORBIDDEN,
    'OK',
    `S KEYINFO ${sign} D - - - C - - -`,
    'OK',
    FORBIDDEN,
    FORBIDDEN,
    FORBIDDEN,
    'ERR 67108983 No SmartCard daemon <GPG Agent>',
    FORBIDDEN,
    FORBIDDEN,
    'OK',
    'OK',
    'OK',
  ]);
  t.match(out.at(-2), /^D \(7:sig-val\(5:eddsa/);
  t.equal(out.at(-1), 'OK');
  t.equal(a.holder.signRequests[0]?.description, 'Remote please');
});

t.test('pretend-request-origin=remote switches a normal socket to restricted', async (t) => {
  const a = await startAgent(t);
  const out = await a.gca([
    'OPTION pretend-request-origin=remote',
    'OPTION ttyname=/dev/pts/1',
    'GETINFO restricted',
    'OPTION pretend-request-origin=local',
  ]);
  t.same(out, ['OK', FORBIDDEN, 'OK', FORBIDDEN]);
});

t.test('a client that disconnects mid-PKSIGN aborts the holder request', async (t) => {
  const a = await startAgent(t);
  let sawAbort!: () => void;
  const aborted = new Promise<void>((resolve) => (sawAbort = resolve));
  let started!: () => void;
  const inHolder = new Promise<void>((resolve) => (started = resolve));
  a.holder.beforeOperation = (signal) =>
    new Promise<void>((_resolve, reject) => {
      started();
      signal?.addEventListener('abort', () => {
        sawAbort();
        reject(new GpgError(ErrorCode.CANCELED));
      });
    });
  const sock = connect(a.path);
  const client = await AssuanClient.connect(sock, { timeoutMs: 10_000 });
  await client.transact(`SIGKEY ${a.holder.signKey.entry.keygrip}`);
  await client.transact(`SETHASH 8 ${'EF'.repeat(32)}`);
  const pending = client.transact('PKSIGN').catch((e: unknown) => e);
  await inHolder;
  client.close();
  await aborted;
  t.type(await pending, Error, 'client side fails');
  t.pass('holder saw the abort');
});

t.test(
  "KEYTETHER_CONTENT --repo: the facade reads a commit's objects where the shim runs git",
  async (t) => {
    const seen: { payload: string; repo: unknown }[] = [];
    const store = new ContentStore({
      collectObjects: async (payload, repo) => {
        seen.push({ payload: Buffer.from(payload).toString(), repo });
        return Buffer.from('KTGO1');
      },
    });
    const agent = await startAgent(t, { content: store });
    const sock = connect(agent.path);
    await once(sock, 'connect');
    const client = await AssuanClient.connect(sock, { timeoutMs: 10_000 });
    t.teardown(() => client.close());
    const payload = Buffer.from('tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n\nmsg\n');
    const register = async (args: string, repo: string) => {
      const asked: string[] = [];
      const r = await client.transact(`KEYTETHER_CONTENT --mode=binary --time=1 ${args}`, {
        onInquire: (kw) => {
          asked.push(kw);
          return kw === 'CONTENT' ? payload : kw === 'REPO' ? Buffer.from(repo) : null;
        },
      });
      return { asked, content: await store.take(r.data.toString('latin1')) };
    };
    const withRepo = await register(
      '--kind=git-commit --repo',
      'cwd=/srv/repo\nGIT_DIR=.git\nGIT_OBJECT_DIRECTORY=\nHOME=/ignored\n',
    );
    t.same(withRepo.asked, ['CONTENT', 'REPO']);
    t.same(seen.at(-1)?.repo, { cwd: '/srv/repo', env: { GIT_DIR: '.git' } }, 'git variables only');
    t.equal(Buffer.from(withRepo.content!.objects!).toString(), 'KTGO1');
    const without = await register('--kind=git-commit', 'unused');
    t.same(without.asked, ['CONTENT'], 'a shim without --repo is asked for the payload only');
    t.equal(without.content?.objects, undefined);
    t.equal(seen.length, 1, 'and nothing is read for it');
    await t.rejects(register('--kind=file --repo', 'cwd=/x'), /for a git-commit/);
    await t.rejects(register('--kind=git-commit --repo=/x', 'cwd=/x'), /is a flag/);
    await t.rejects(register('--kind=git-commit --repo', 'GIT_DIR=/x\n'), /without cwd/);
    await t.rejects(register('--kind=git-commit --repo', 'cwd=relative\n'), /bad cwd/);
    await t.rejects(register('--kind=git-commit --repo', 'no equals sign\n'), /bad REPO line/);
    await t.rejects(
      register('--kind=git-commit --repo', `cwd=/${'x'.repeat(20_000)}`),
      'a REPO answer over 16 KiB is refused',
    );
    const after = await register('--kind=git-commit', '');
    t.ok(after.content, 'the connection still works');
  },
);
