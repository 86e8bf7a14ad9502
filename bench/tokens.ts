// What the token registry costs per relayed request as tokens.json grows (issue #18.6): one
// authorize of a `--max-uses` token (counted durably before the holder runs, then committed) and
// the secret check of a stream open, each at 10 and 10,000 records. The anchor, measured in the
// same run and directory, is one 24-byte append + fdatasync: the least a durable use count can
// cost, so "× anchor" says how far the registry is from that floor.
// BENCH_TOKEN_OPS (default 200) operations per measurement.

import { mkdtemp, open, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseToken, tokenSecretHash, type ParsedToken } from '../protocol/token.js';
import { loadOrCreateIdentity } from '../workstation/home/identity.js';
import { TokenRegistry } from '../workstation/tokens/tokens.js';
import { envNumber, median } from './support/settings.js';

const FPR = 'A'.repeat(40);
const SIZES = [10, 10_000];

interface Use {
  commit?(): unknown;
}

async function timeEach(n: number, fn: () => Promise<void>): Promise<number> {
  for (let i = 0; i < 5; i++) await fn();
  const samples: number[] = [];
  for (let i = 0; i < n; i++) {
    const start = process.hrtime.bigint();
    await fn();
    samples.push(Number(process.hrtime.bigint() - start) / 1e6);
  }
  return median(samples);
}

/** A home whose tokens.json holds COUNT records, one of them TOKEN (max-uses, never used up). */
async function homeWith(
  count: number,
): Promise<{ home: string; token: ParsedToken; hash: string }> {
  const home = await mkdtemp(path.join(tmpdir(), 'kt-bench-tokens-'));
  const identity = await loadOrCreateIdentity(home);
  const reg = await TokenRegistry.open(home, { identity });
  const text = await reg.issue(
    { keys: [FPR], ops: ['sign'], ttlMs: 86_400_000, maxUses: 1_000_000, relay: 'https://r.x' },
    identity,
  );
  await reg.close();
  const parsed = parseToken(text);
  if (!parsed.ok) throw new Error(parsed.error);
  // Fillers written directly: issuing 10,000 tokens one by one is what the fix makes cheap, not
  // what this measures.
  const file = path.join(home, 'tokens.json');
  const doc = JSON.parse(await readFile(file, 'utf8')) as { tokens: { id: string }[] };
  const [mine] = doc.tokens as [{ id: string; claims: { tid: string } }];
  for (let i = 1; i < count; i++) {
    const id = `ktt_${i.toString(16).padStart(16, '0')}`;
    doc.tokens.push({ ...mine, id, claims: { ...mine.claims, tid: id } } as { id: string });
  }
  await writeFile(file, JSON.stringify(doc, null, 1) + '\n', { mode: 0o600 });
  const secret = Buffer.from(text.split('.')[3]!, 'base64url');
  return { home, token: parsed.token, hash: tokenSecretHash(secret) };
}

export async function run(): Promise<void> {
  const ops = envNumber('BENCH_TOKEN_OPS', 200, 10);
  const scratch = await mkdtemp(path.join(tmpdir(), 'kt-bench-anchor-'));
  const anchorFile = await open(path.join(scratch, 'append'), 'a', 0o600);
  const line = Buffer.from('ktt_0123456789abcdef +1\n');
  const anchor = await timeEach(ops, async () => {
    await anchorFile.write(line);
    await anchorFile.datasync();
  });
  await anchorFile.close();
  await rm(scratch, { recursive: true, force: true });
  console.log(`anchor: append + fdatasync ${anchor.toFixed(3)} ms`);
  console.log(
    ['records', 'authorize ms', '× anchor', 'open ms', '× anchor']
      .map((c) => c.padStart(13))
      .join(''),
  );
  for (const count of SIZES) {
    const { home, token, hash } = await homeWith(count);
    const identity = await loadOrCreateIdentity(home);
    const reg = await TokenRegistry.open(home, { identity });
    const req = { token, fingerprint: FPR, primaryFingerprint: FPR, op: 'sign' as const };
    const auth = await timeEach(ops, async () => {
      const d = await reg.authorize(req);
      if (!d.ok) throw new Error(d.message);
      await (d as { use?: Use }).use?.commit?.();
    });
    const knows = (reg as unknown as { knowsSecret?(tid: string, h: string): Promise<boolean> })
      .knowsSecret;
    const openCost = knows
      ? await timeEach(ops, async () => {
          if (!(await knows.call(reg, token.payload.tid, hash))) throw new Error('unknown secret');
        })
      : NaN;
    await reg.close();
    await rm(home, { recursive: true, force: true });
    console.log(
      [
        count,
        auth.toFixed(3),
        (auth / anchor).toFixed(1),
        openCost.toFixed(3),
        (openCost / anchor).toFixed(1),
      ]
        .map((c) => String(c).padStart(13))
        .join(''),
    );
  }
}
