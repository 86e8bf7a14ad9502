// Generator pieces the targets share: raw bytes, byte mutations of well-formed input, and ways to
// cut a stream into chunks (every stream parser must give the same answer however it is cut).

import fc from 'fast-check';

/** Bytes with a bias towards the ones parsers care about (delimiters, digits, CR/LF, %, NUL). */
export function rawBytes(maxLength = 2048): fc.Arbitrary<Buffer> {
  const special = fc.constantFrom(
    0x00,
    0x0a,
    0x0d,
    0x20,
    0x09,
    0x25,
    0x28,
    0x29,
    0x3a,
    0x2b,
    0x22,
    0x7b,
    0x7d,
    0x5b,
    0x5d,
    0x3d,
    0x23,
    0x2c,
    0x2e,
    0x30,
    0x31,
    0x39,
    0xff,
    0x80,
    0xc3,
  );
  const byte = fc.oneof(
    { weight: 3, arbitrary: fc.integer({ min: 0, max: 255 }) },
    { weight: 1, arbitrary: special },
  );
  return fc
    .oneof(
      { weight: 3, arbitrary: fc.array(byte, { maxLength: 64 }) },
      { weight: 1, arbitrary: fc.array(byte, { maxLength }) },
    )
    .map((a) => Buffer.from(a));
}

/** Printable-ish text, with controls and non-ASCII now and then. */
export function rawText(maxLength = 512): fc.Arbitrary<string> {
  return fc.oneof(
    fc.string({ maxLength }),
    fc.string({ unit: 'binary', maxLength }),
    rawBytes(maxLength).map((b) => b.toString('latin1')),
  );
}

export type Mutation =
  | { op: 'flip'; at: number; bit: number }
  | { op: 'set'; at: number; byte: number }
  | { op: 'delete'; at: number; count: number }
  | { op: 'insert'; at: number; bytes: number[] }
  | { op: 'truncate'; at: number }
  | { op: 'duplicate'; at: number; count: number };

export const mutationArb: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ op: fc.constant('flip' as const), at: fc.nat(), bit: fc.nat({ max: 7 }) }),
  fc.record({ op: fc.constant('set' as const), at: fc.nat(), byte: fc.nat({ max: 255 }) }),
  fc.record({
    op: fc.constant('delete' as const),
    at: fc.nat(),
    count: fc.integer({ min: 1, max: 8 }),
  }),
  fc.record({
    op: fc.constant('insert' as const),
    at: fc.nat(),
    bytes: fc.array(fc.nat({ max: 255 }), { minLength: 1, maxLength: 8 }),
  }),
  fc.record({ op: fc.constant('truncate' as const), at: fc.nat() }),
  fc.record({
    op: fc.constant('duplicate' as const),
    at: fc.nat(),
    count: fc.integer({ min: 1, max: 64 }),
  }),
);

/** Applies mutations in order (positions are taken modulo the current length). */
export function mutate(input: Uint8Array, mutations: readonly Mutation[]): Buffer {
  let b = Buffer.from(input);
  for (const m of mutations) {
    const at = b.length === 0 ? 0 : m.at % (b.length + 1);
    switch (m.op) {
      case 'flip':
        if (at < b.length) b[at] = b[at]! ^ (1 << m.bit);
        break;
      case 'set':
        if (at < b.length) b[at] = m.byte;
        break;
      case 'delete':
        b = Buffer.concat([b.subarray(0, at), b.subarray(at + m.count)]);
        break;
      case 'insert':
        b = Buffer.concat([b.subarray(0, at), Buffer.from(m.bytes), b.subarray(at)]);
        break;
      case 'truncate':
        b = b.subarray(0, at);
        break;
      case 'duplicate':
        b = Buffer.concat([b.subarray(0, at + m.count), b.subarray(at)]);
        break;
    }
  }
  return b;
}

export function mutateText(text: string, mutations: readonly Mutation[]): string {
  return mutate(Buffer.from(text, 'utf8'), mutations).toString('utf8');
}

/** Up to `max` mutations, none half the time: well-formed input stays common. */
export function mutations(max = 3): fc.Arbitrary<Mutation[]> {
  return fc.oneof(
    fc.constant<Mutation[]>([]),
    fc.array(mutationArb, { minLength: 1, maxLength: max }),
  );
}

/** Cut points for splitting a stream: chunk sizes, cycled. */
export const chunkSizes: fc.Arbitrary<number[]> = fc.oneof(
  fc.constant<number[]>([1 << 30]),
  fc.array(fc.integer({ min: 1, max: 64 }), { minLength: 1, maxLength: 8 }),
  fc.constant<number[]>([1]),
);

export function chunk(data: Buffer, sizes: readonly number[]): Buffer[] {
  const out: Buffer[] = [];
  let pos = 0;
  for (let i = 0; pos < data.length; i++) {
    const n = sizes[i % sizes.length] ?? data.length;
    out.push(data.subarray(pos, pos + n));
    pos += n;
  }
  return out;
}
