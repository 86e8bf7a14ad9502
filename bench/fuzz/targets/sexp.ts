// protocol/sexp.ts: the canonical S-expression parser gpg-agent's data goes through.
// Oracle: parseSexp never throws and answers {ok:false, error} for what it refuses; when it
// accepts, the tree re-encodes to exactly the bytes it consumed (canonical form is unique), lies
// within the depth and size limits, and a well-formed tree within the limits parses back to
// itself. findList/atomText never throw on what it returns.

import fc from 'fast-check';
import {
  atomText,
  DEFAULT_SEXP_LIMITS,
  encodeSexp,
  findList,
  parseSexp,
  type Sexp,
  type SexpLimits,
} from '../../../protocol/sexp.js';
import { violation, type FuzzTarget } from '../harness.js';
import { mutate, mutations, rawBytes } from '../gen.js';

export interface SexpCase {
  bytes: Buffer;
  limits: SexpLimits | null;
  /** Set when `bytes` is the unmutated encoding of a tree. */
  wellFormed: boolean;
}

const atomArb = fc
  .oneof(
    fc.constantFrom(
      'sig-val',
      'eddsa',
      'r',
      's',
      'enc-val',
      'ecdh',
      'e',
      'public-key',
      'q',
      'curve',
    ),
    fc.string({ maxLength: 12 }),
  )
  .map((s) => Buffer.from(s, 'utf8'));
const binAtom = fc.uint8Array({ maxLength: 80 }).map((a) => Buffer.from(a));

const { tree } = fc.letrec<{ tree: Sexp[]; node: Sexp }>((tie) => ({
  tree: fc.array(tie('node'), { maxLength: 5 }),
  node: fc.oneof({ depthSize: 'small', withCrossShrink: true }, atomArb, binAtom, tie('tree')),
}));

const limitsArb: fc.Arbitrary<SexpLimits | null> = fc.oneof(
  fc.constant(null),
  fc.record({
    maxDepth: fc.integer({ min: 1, max: 20 }),
    maxBytes: fc.integer({ min: 1, max: 4096 }),
    maxAtomBytes: fc.integer({ min: 0, max: 512 }),
  }),
);

function depthOf(v: Sexp): number {
  if (Buffer.isBuffer(v)) return 0;
  let d = 0;
  for (const c of v) d = Math.max(d, depthOf(c));
  return d + 1;
}

function maxAtom(v: Sexp): number {
  if (Buffer.isBuffer(v)) return v.length;
  let m = 0;
  for (const c of v) m = Math.max(m, maxAtom(c));
  return m;
}

export const sexpTarget: FuzzTarget<SexpCase> = {
  name: 'sexp',
  oracle:
    'parseSexp never throws; accepted trees re-encode to the consumed bytes and respect the limits; ' +
    'well-formed trees within the limits round-trip',
  generators: [
    {
      name: 'format',
      arb: fc
        .record({
          t: tree,
          m: mutations(3),
          limits: limitsArb,
          trailer: fc.uint8Array({ maxLength: 4 }),
        })
        .map(({ t, m, limits, trailer }) => {
          const enc = Buffer.concat([encodeSexp(t), Buffer.from(trailer)]);
          return { bytes: mutate(enc, m), limits, wellFormed: m.length === 0 };
        }),
    },
    {
      name: 'bytes',
      arb: fc.record({ b: rawBytes(4096), limits: limitsArb }).map(({ b, limits }) => ({
        bytes: b,
        limits,
        wellFormed: false,
      })),
    },
  ],
  check({ bytes, limits, wellFormed }) {
    const r = parseSexp(bytes, limits ?? undefined);
    const lim = { ...DEFAULT_SEXP_LIMITS, ...(limits ?? {}) };
    if (!r.ok) {
      if (typeof r.error !== 'string' || r.error.length === 0)
        violation('refusal without a reason');
      if (wellFormed) {
        const wanted = parseSexpExpectation(bytes, lim);
        if (wanted) violation(`well-formed input within limits refused: ${r.error}`);
      }
      return;
    }
    if (r.end < 1 || r.end > bytes.length || r.end > lim.maxBytes)
      violation(`end ${r.end} out of range`);
    const again = encodeSexp(r.value);
    if (!again.equals(bytes.subarray(0, r.end)))
      violation('accepted tree does not re-encode to its bytes');
    if (depthOf(r.value) > lim.maxDepth) violation('tree deeper than maxDepth');
    if (maxAtom(r.value) > lim.maxAtomBytes) violation('atom longer than maxAtomBytes');
    findList(r.value, 'sig-val');
    findList(r.value, '');
    if (Array.isArray(r.value)) for (const v of r.value) atomText(v);
  },
};

/** Whether a well-formed encoding should be accepted under LIMITS (the tree's own measures). */
function parseSexpExpectation(bytes: Buffer, lim: Required<SexpLimits>): boolean {
  // Re-derive the tree from its encoding with no limits, then compare it with the limits.
  const free = parseSexp(bytes, { maxDepth: 1 << 20, maxBytes: 1 << 30, maxAtomBytes: 1 << 30 });
  if (!free.ok) violation(`well-formed input refused without limits: ${free.error}`);
  return (
    depthOf(free.value) <= lim.maxDepth &&
    maxAtom(free.value) <= lim.maxAtomBytes &&
    free.end <= lim.maxBytes
  );
}
