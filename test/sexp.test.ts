import t from 'tap';
import fc from 'fast-check';
import {
  atom,
  atomText,
  encodeSexp,
  findList,
  isList,
  mpiStd,
  mpiUsg,
  parseSexp,
  type Sexp,
} from '../protocol/sexp.js';

const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex');
const latin1 = (s: string) => Buffer.from(s, 'latin1');

function parseOk(input: Uint8Array): { value: Sexp; end: number } {
  const r = parseSexp(input);
  if (!r.ok) throw new Error(`expected ok, got: ${r.error}`);
  return r;
}

// Random trees with a list at the root, at most 8 levels deep.
const { tree } = fc.letrec<{ tree: Sexp[]; node: Sexp }>((tie) => ({
  tree: fc.array(tie('node'), { maxLength: 5 }),
  node: fc.oneof(
    { depthSize: 'small', withCrossShrink: true },
    fc.uint8Array({ maxLength: 40 }).map((u) => Buffer.from(u)),
    tie('tree'),
  ),
}));
const boundedTree = tree.filter((v) => depthOf(v) <= 16);

function depthOf(v: Sexp): number {
  return isList(v) ? 1 + Math.max(0, ...v.map(depthOf)) : 0;
}

t.test('known vectors from the reference (§4.2, §4.4, §4.6)', async (t) => {
  const eddsaSig = hex(`
    28373a7369672d76616c28353a656464736128313a7233323a
    df847ba638291281aba35810e5d11f5a48b9a67a72995c5fabc74aba80f3b6da
    2928313a7333323a
    a0cbb034eadbd4f1069409a0112d9928747c585f7deb728284e9894e4fa79b04
    292929`);
  t.equal(eddsaSig.length, 100);
  const sig = parseOk(eddsaSig);
  t.equal(sig.end, 100);
  const eddsa = findList(sig.value, 'eddsa');
  t.ok(eddsa);
  t.equal(atomText(findList(sig.value, 'sig-val')?.[0]), 'sig-val');
  t.same(
    findList(sig.value, 'r')?.[1],
    hex('df847ba638291281aba35810e5d11f5a48b9a67a72995c5fabc74aba80f3b6da'),
  );
  t.same(
    findList(sig.value, 's')?.[1],
    hex('a0cbb034eadbd4f1069409a0112d9928747c585f7deb728284e9894e4fa79b04'),
  );
  t.same(encodeSexp(sig.value), eddsaSig, 're-encoding is byte-identical');

  const built = encodeSexp([
    atom('sig-val'),
    [
      atom('eddsa'),
      [atom('r'), hex('df847ba638291281aba35810e5d11f5a48b9a67a72995c5fabc74aba80f3b6da')],
      [atom('s'), hex('a0cbb034eadbd4f1069409a0112d9928747c585f7deb728284e9894e4fa79b04')],
    ],
  ]);
  t.same(built, eddsaSig, 'building the sig-val gives the reference bytes');

  const readkey = hex(
    '2831303a7075626c69632d6b657928333a65636328353a6375727665373a456432353531392928353a666c616773353a' +
      '65646473612928313a7133333a406922fad946cc6de0ec85977cceaa12ebf7077331d39ae26aec77be804498952c292929',
  );
  const pk = parseOk(readkey);
  t.equal(pk.end, 97);
  t.equal(atomText(findList(pk.value, 'curve')?.[1]), 'Ed25519');
  t.equal(atomText(findList(pk.value, 'flags')?.[1]), 'eddsa');
  t.equal((findList(pk.value, 'q')?.[1] as Buffer).length, 33);

  // cv25519 PKDECRYPT reply.
  const value = hex(
    '28353a76616c756533333a40920d4cd773e62dd856d395390125713f37565784bca1e7043ff19c73afba4f3729',
  );
  const v = parseOk(value);
  t.same(v.value, [
    atom('value'),
    hex('40920d4cd773e62dd856d395390125713f37565784bca1e7043ff19c73afba4f37'),
  ]);

  // The real agent's RSA reply has a stray NUL after ')': parse stops before it.
  const rsaReply = Buffer.concat([latin1('(5:value3:'), hex('02ffee'), latin1(')'), Buffer.of(0)]);
  const rr = parseOk(rsaReply);
  t.equal(rr.end, rsaReply.length - 1, 'end points at the trailing NUL');
});

t.test('build → parse identity on random trees', async (t) => {
  fc.assert(
    fc.property(boundedTree, (v) => {
      const enc = encodeSexp(v);
      const r = parseSexp(enc);
      return r.ok && r.end === enc.length && deepEq(r.value, v) && encodeSexp(r.value).equals(enc);
    }),
    { numRuns: 500 },
  );
  t.pass('identity held');
});

function deepEq(a: Sexp, b: Sexp): boolean {
  if (Buffer.isBuffer(a) || Buffer.isBuffer(b)) {
    return Buffer.isBuffer(a) && Buffer.isBuffer(b) && a.equals(b);
  }
  return a.length === b.length && a.every((x, i) => deepEq(x, b[i]!));
}

t.test('random and truncated byte streams never throw', async (t) => {
  const check = (u: Uint8Array) => {
    const r = parseSexp(u);
    if (r.ok) return r.end > 0 && r.end <= u.length;
    return typeof r.error === 'string' && r.error.length > 0;
  };
  fc.assert(fc.property(fc.uint8Array({ maxLength: 200 }), check), { numRuns: 2000 });
  // Byte streams made of the S-expression alphabet hit the interesting paths far more often.
  const alphabet = fc.constantFrom(...Buffer.from('()0123456789:a['));
  fc.assert(
    fc.property(fc.array(alphabet, { maxLength: 60 }), (a) => check(Uint8Array.from(a))),
    { numRuns: 3000 },
  );
  fc.assert(
    fc.property(boundedTree, fc.nat(), (v, cut) => {
      const enc = encodeSexp(v);
      const n = cut % enc.length; // strict prefix
      const r = parseSexp(enc.subarray(0, n));
      return !r.ok;
    }),
    { numRuns: 500 },
  );
  t.pass('no throws; every strict prefix is an error');
});

t.test('parses Uint8Array views at an offset', async (t) => {
  const backing = new Uint8Array([0xff, ...latin1('(1:a2:bc)'), 0xee]);
  const view = backing.subarray(1, 10);
  const r = parseOk(view);
  t.same(r.value, [atom('a'), atom('bc')]);
  t.equal(r.end, 9);
});

t.test('rejects non-canonical forms', async (t) => {
  const bad: [string, string | Buffer][] = [
    ['display hint', '([10:text/plain]3:abc)'],
    ['whitespace', '(3:abc 3:def)'],
    ['token', '(sig-val)'],
    ['hex string', '(1:a#0102#)'],
    ['quoted string', '(1:a"xy")'],
    ['base64', '(1:a|AQI=|)'],
    ['leading zero length', '(03:abc)'],
    ['top-level atom', '3:abc'],
    ['leading space', ' (3:abc)'],
    ['unbalanced close', ')'],
    ['missing colon', '(3abc)'],
    ['empty', ''],
    ['unterminated list', '(3:abc'],
    ['atom runs past end', '(5:abc)'],
  ];
  for (const [name, input] of bad) {
    const r = parseSexp(typeof input === 'string' ? latin1(input) : input);
    t.equal(r.ok, false, name);
    if (!r.ok) t.notMatch(r.error, /abc/, `${name}: error does not echo input bytes`);
  }
  t.same(parseOk(latin1('(0:)')).value, [Buffer.alloc(0)], 'empty atom is fine');
  t.same(parseOk(latin1('(()())')).value, [[], []], 'empty lists are fine');
  t.equal(parseOk(latin1('(1:a)(1:b)')).end, 5, 'trailing data is left to the caller');
});

t.test('depth limit', async (t) => {
  const nest = (d: number) => latin1('('.repeat(d) + '1:x' + ')'.repeat(d));
  t.ok(parseSexp(nest(16)).ok, '16 levels accepted by default');
  const r = parseSexp(nest(17));
  t.equal(r.ok, false, '17 levels rejected by default');
  if (!r.ok) t.match(r.error, /deeper/);
  t.ok(parseSexp(nest(4), { maxDepth: 4 }).ok);
  t.equal(parseSexp(nest(5), { maxDepth: 4 }).ok, false);
  // Deep input far beyond the limit is rejected without recursion blowing the stack.
  t.equal(parseSexp(nest(100_000)).ok, false);
});

t.test('size limits', async (t) => {
  const atomOf = (n: number) =>
    Buffer.concat([latin1(`(${n}:`), Buffer.alloc(n, 0x41), latin1(')')]);
  t.ok(parseSexp(atomOf(16 * 1024)).ok, '16 KiB atom accepted');
  const big = parseSexp(atomOf(16 * 1024 + 1));
  t.equal(big.ok, false, 'atom over 16 KiB rejected');
  if (!big.ok) t.match(big.error, /exceeds limit/);
  t.equal(parseSexp(atomOf(100), { maxAtomBytes: 99 }).ok, false);

  // A huge declared length is refused up front, not allocated or waited for.
  const huge = parseSexp(latin1('(999999999:'));
  t.equal(huge.ok, false);
  t.equal(parseSexp(latin1('(99999999999999999999:')).ok, false);

  // Many small atoms adding up to more than maxBytes.
  const many = latin1('(' + '3:abc'.repeat(20_000) + ')');
  const r = parseSexp(many);
  t.equal(r.ok, false, `${many.length} bytes rejected under the 64 KiB default`);
  if (!r.ok) t.match(r.error, /longer than/);
  t.ok(parseSexp(many, { maxBytes: many.length }).ok, 'accepted when maxBytes allows it');
  t.equal(parseSexp(latin1('(3:abc)'), { maxBytes: 6 }).ok, false);
  t.ok(parseSexp(latin1('(3:abc)xxxxxxxx'), { maxBytes: 7 }).ok, 'trailing bytes do not count');
});

t.test('encodeSexp, helpers', async (t) => {
  t.equal(
    encodeSexp([atom('a'), [atom('bc'), Buffer.alloc(0)], []]).toString('latin1'),
    '(1:a(2:bc0:)())',
  );
  t.equal(encodeSexp(atom('x')).toString('latin1'), '1:x');
  t.same(atom(new Uint8Array([1, 2])), Buffer.from([1, 2]));
  t.equal(atom('Ed25519').toString('latin1'), 'Ed25519');

  const tree = parseOk(latin1('(7:enc-val(4:ecdh(1:s2:ss)(1:e3:eee)))')).value;
  t.equal(atomText(findList(tree, 'enc-val')?.[0]), 'enc-val', 'the list itself matches');
  t.same(findList(tree, 'e'), [atom('e'), atom('eee')], 'found two levels down');
  t.equal(findList(tree, 'nope'), undefined);
  t.equal(findList(atom('e'), 'e'), undefined, 'an atom has no sub-lists');
  // Breadth first: the shallower match wins over an earlier deeper one.
  const bf = parseOk(latin1('(1:x(1:y(1:k4:deep))(1:k3:top))')).value;
  t.equal(atomText(findList(bf, 'k')?.[1]), 'top');

  t.equal(atomText(atom('héllo')), 'héllo');
  t.equal(atomText(Buffer.from([0xff, 0x41])), '\u00ffA', 'non-UTF-8 falls back to latin1');
  t.equal(atomText([atom('a')]), undefined);
  t.equal(atomText(undefined), undefined);

  t.same(mpiUsg(hex('000080ff')), hex('80ff'));
  t.same(mpiStd(hex('000080ff')), hex('0080ff'));
  t.same(mpiStd(hex('7f')), hex('7f'));
  t.same(mpiStd(hex('0000')), Buffer.alloc(0));
  t.same(mpiUsg(hex('0000')), Buffer.alloc(0));
  t.same(mpiStd(hex('010001')), hex('010001'));
});
