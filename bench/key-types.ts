// One line per key type gpg-agent serves (issue 19): signatures or decryptions per second made
// three ways in the same run, measured alternately (A B C A B C …), each reporting its median:
//   gpg-agent — the real gpg-agent on its extra socket, the commands gpg sends (SIGKEY, SETHASH,
//               PKSIGN; SETKEY, PKDECRYPT with the ciphertext inquired), one round trip each
//   back end  — Holder.sign/decrypt in-process over keytether's gpg-agent back end (that agent)
//   builtin   — Holder.sign/decrypt in-process over the builtin keystore, where it takes the type
// Keys are made by real gpg, unprotected, so the figures are protocol + key handling + math.
// Ciphertexts are real: gpg encrypts to each encryption subkey, and the session-key packet's
// values are what gpg would send in answer to INQUIRE CIPHERTEXT. Ed448/X448 need gpg 2.4
// (scripts/fetch-gpg24.sh); they are measured with its agent, or skipped without it.
// BENCH_SECONDS (default 1) per measurement, BENCH_ROUNDS (default 3) measurements per path.

import path from 'node:path';
import { existsSync } from 'node:fs';
import { appendFile, mkdir, mkdtemp, rm } from 'node:fs/promises';
import { homedir } from 'node:os';
import { randomBytes } from 'node:crypto';
import { pathToFileURL } from 'node:url';
import * as openpgp from 'openpgp';
import { atom, encodeSexp, type Sexp } from '../protocol/sexp.js';
import type { AssuanClient } from '../protocol/assuan/index.js';
import type { DecryptResult, KeyHolder } from '../protocol/keyholder.js';
import { DEFAULT_CONFIG, type Config } from '../workstation/home/config.js';
import { openHolderRuntime, type HolderRuntime } from '../workstation/holder/runtime.js';
import { Keystore } from '../workstation/keystore/index.js';
import { makeBenchGnupg, type BenchGnupg } from './support/gnupg-home.js';
import { connectAgent } from './support/sign-loop.js';
import { envNumber, median } from './support/settings.js';

/** libgcrypt's SHA-512 id: every type takes a 64-byte digest (DSA and ECDSA truncate it). */
const SHA512 = 10;

interface TypeSpec {
  primary: string;
  subkey: string;
  /** gpg 2.4 only (v5 keys, `compliance gnupg`). */
  gpg24?: boolean;
}

const TYPES: TypeSpec[] = [
  { primary: 'ed25519', subkey: 'cv25519' },
  { primary: 'rsa3072', subkey: 'rsa3072' },
  { primary: 'nistp256', subkey: 'nistp256' },
  { primary: 'brainpoolP256r1', subkey: 'brainpoolP256r1' },
  { primary: 'dsa2048', subkey: 'elg2048' },
  { primary: 'ed448', subkey: 'cv448', gpg24: true },
];

interface Part {
  label: string;
  op: 'sign' | 'decrypt';
  keygrip: string;
  /** The canonical enc-val, for decryption. */
  ciphertext?: Buffer;
}

interface Made {
  fingerprint: string;
  parts: Part[];
  secret: Buffer;
}

function gpg24Path(): string | undefined {
  const cache = process.env.XDG_CACHE_HOME || path.join(process.env.HOME || homedir(), '.cache');
  const p = process.env.KEYTETHER_GPG24 ?? path.join(cache, 'keytether', 'gpg24', 'bin', 'gpg');
  return existsSync(p) ? p : undefined;
}

async function must(g: BenchGnupg, args: string[]): Promise<Buffer> {
  const r = await g.gpg(['--batch', '--pinentry-mode', 'loopback', '--passphrase', '', ...args]);
  if (r.code !== 0) throw new Error(`gpg ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

/** The enc-val gpg sends for the session-key packet of MESSAGE. */
async function encVal(message: Buffer): Promise<Buffer> {
  const msg = await openpgp.readMessage({ binaryMessage: message });
  const pkesk = msg.packets.filterByTag(openpgp.enums.packet.publicKeyEncryptedSessionKey)[0] as
    { publicKeyAlgorithm: number; encrypted: Record<string, unknown> } | undefined;
  if (!pkesk) throw new Error('gpg wrote no session-key packet');
  const enc = pkesk.encrypted;
  const bytes = (v: unknown): Buffer => {
    if (v instanceof Uint8Array) return Buffer.from(v);
    const data = (v as { data?: unknown } | undefined)?.data;
    if (data instanceof Uint8Array) return Buffer.from(data);
    throw new Error('unexpected session-key packet field');
  };
  const algo = pkesk.publicKeyAlgorithm;
  let body: Sexp;
  if (algo === 1) body = [atom('rsa'), [atom('a'), bytes(enc.c)]];
  else if (algo === 16)
    body = [atom('elg'), [atom('a'), bytes(enc.c1)], [atom('b'), bytes(enc.c2)]];
  else if (algo === 18) body = [atom('ecdh'), [atom('s'), bytes(enc.C)], [atom('e'), bytes(enc.V)]];
  else throw new Error(`session key for algorithm ${algo}`);
  return encodeSexp([atom('enc-val'), body]);
}

async function makeType(g: BenchGnupg, spec: TypeSpec, n: number): Promise<Made> {
  const uid = `Bench ${spec.primary} <bench${n}@example.org>`;
  const gen = await must(g, [
    '--status-fd',
    '1',
    '--quick-gen-key',
    uid,
    spec.primary,
    'sign,cert',
    'never',
  ]);
  const fingerprint = /KEY_CREATED [BP] ([0-9A-F]{40,64})/.exec(gen.toString())?.[1];
  if (!fingerprint) throw new Error(`gpg made no ${spec.primary} key`);
  await must(g, ['--quick-add-key', fingerprint, spec.subkey, 'encr', 'never']);
  const list = (await must(g, ['--with-colons', '--with-keygrip', '-K', fingerprint])).toString();
  const grips = list
    .split('\n')
    .filter((l) => l.startsWith('grp:'))
    .map((l) => l.split(':')[9]!);
  if (grips.length !== 2) throw new Error(`gpg -K lists ${grips.length} keygrips`);
  const message = await must(g, ['--trust-model', 'always', '-r', fingerprint, '-e']);
  return {
    fingerprint,
    parts: [
      { label: `sign ${spec.primary}`, op: 'sign', keygrip: grips[0]! },
      {
        label: `decrypt ${spec.subkey}`,
        op: 'decrypt',
        keygrip: grips[1]!,
        ciphertext: await encVal(message),
      },
    ],
    secret: await must(g, ['--export-secret-keys', fingerprint]),
  };
}

async function direct(client: AssuanClient, part: Part): Promise<void> {
  if (part.op === 'sign') {
    await client.transact(`SIGKEY ${part.keygrip}`);
    await client.transact(`SETHASH ${SHA512} ${randomBytes(64).toString('hex').toUpperCase()}`);
    const r = await client.transact('PKSIGN', { timeoutMs: 30_000 });
    if (!r.data.subarray(0, 12).toString('latin1').startsWith('(7:sig-val(')) {
      throw new Error('PKSIGN answered something other than a sig-val');
    }
    return;
  }
  await client.transact(`SETKEY ${part.keygrip}`);
  const r = await client.transact('PKDECRYPT', {
    timeoutMs: 30_000,
    onInquire: () => part.ciphertext!,
  });
  if (r.data.length === 0) throw new Error('PKDECRYPT answered no value');
}

function viaHolder(holder: KeyHolder, part: Part): () => Promise<unknown> {
  const requester = { front: 'local' as const };
  if (part.op === 'sign') {
    return () =>
      holder.sign({ keygrip: part.keygrip, hashAlgo: SHA512, digest: randomBytes(64), requester });
  }
  return () => holder.decrypt({ keygrip: part.keygrip, ciphertext: part.ciphertext!, requester });
}

async function timed(seconds: number, op: () => Promise<unknown>): Promise<number> {
  const start = process.hrtime.bigint();
  const end = start + BigInt(Math.round(seconds * 1e9));
  let ops = 0;
  while (process.hrtime.bigint() < end) {
    await op();
    ops++;
  }
  return ops / (Number(process.hrtime.bigint() - start) / 1e9);
}

/** Measures every part of SPECS with one gpg (and its agent); returns the printed lines. */
async function measure(
  dir: string,
  specs: TypeSpec[],
  gpgBin: string,
  seconds: number,
  rounds: number,
): Promise<string[]> {
  await mkdir(dir, { mode: 0o700 });
  const g = await makeBenchGnupg(path.join(dir, 'g'), gpgBin);
  const runtimes: HolderRuntime[] = [];
  // The back end runs gpg and gpgconf from PATH: this gpg's, for as long as it is measured.
  const oldPath = process.env.PATH;
  process.env.PATH = `${path.dirname(gpgBin)}:${oldPath ?? ''}`;
  try {
    if (specs.some((s) => s.gpg24)) {
      // gpg 2.4 makes Ed448/cv448 only under `compliance gnupg`, and needs its own agent.
      const agent = path.join(path.dirname(gpgBin), 'gpg-agent');
      await appendFile(path.join(g.home, 'gpg.conf'), `compliance gnupg\nagent-program ${agent}\n`);
    }
    const made: Made[] = [];
    for (const [i, s] of specs.entries()) {
      // Once in three runs gpg 2.4's Ed448 generation failed "No secret key" (an agent that could
      // not hold the key answered); a fresh agent made it every time.
      made.push(
        await makeType(g, s, i).catch(async () => {
          await g.tool('gpgconf', ['--kill', 'all']);
          return makeType(g, s, i);
        }),
      );
    }
    await g.agentSocket();
    const base: Config = { ...DEFAULT_CONFIG, relay: [], policy: [] };
    const agentRt = await openHolderRuntime(
      path.join(dir, 'home-agent'),
      { ...base, backend: 'gpg-agent' },
      { gnupgHome: g.home },
    );
    runtimes.push(agentRt);
    const builtinHome = path.join(dir, 'home-builtin');
    const ks = await Keystore.open(builtinHome);
    const inBuiltin = new Set<string>();
    for (const m of made) {
      // The builtin store refuses DSA/ElGamal; those lines say "n/a".
      const ok = await ks.importKeys(m.secret).then(
        () => true,
        () => false,
      );
      if (ok) for (const p of m.parts) inBuiltin.add(p.keygrip);
    }
    const builtinRt = await openHolderRuntime(builtinHome, { ...base, backend: 'builtin' });
    runtimes.push(builtinRt);
    await agentRt.holder.inventory();
    await builtinRt.holder.inventory();
    const client = await connectAgent(agentRt.gpgAgent!.dirs.extraSocket);
    const lines: string[] = [];
    try {
      for (const part of made.flatMap((m) => m.parts)) {
        const paths: [string, () => Promise<unknown>][] = [
          ['gpg-agent', () => direct(client, part)],
          ['back end', viaHolder(agentRt.holder, part)],
        ];
        if (inBuiltin.has(part.keygrip)) paths.push(['builtin', viaHolder(builtinRt.holder, part)]);
        // One untimed call each first (connections, caches), and the two holders must agree.
        const first = await Promise.all(paths.map(([, op]) => op()));
        if (part.op === 'decrypt' && first.length === 3) {
          const [, viaAgent, viaBuiltin] = first as [unknown, DecryptResult, DecryptResult];
          if (!Buffer.from(viaAgent.value).equals(Buffer.from(viaBuiltin.value))) {
            throw new Error(`${part.label}: the builtin store and gpg-agent decrypt differently`);
          }
        }
        const results = new Map<string, number[]>(paths.map(([n]) => [n, []]));
        for (let r = 0; r < rounds; r++) {
          for (const [name, op] of paths) results.get(name)!.push(await timed(seconds, op));
        }
        const ref = median(results.get('gpg-agent')!);
        const cells = ['gpg-agent', 'back end', 'builtin'].map((name) => {
          const xs = results.get(name);
          if (!xs) return `${name} n/a`;
          const m = median(xs);
          const ratio = name === 'gpg-agent' ? '' : ` (x${(m / ref).toFixed(2)})`;
          return `${name} ${m.toFixed(0)}/s${ratio}`;
        });
        lines.push(`  ${part.label.padEnd(24)} ${cells.join('  ')}`);
      }
    } finally {
      client.close();
    }
    return lines;
  } finally {
    for (const rt of runtimes) await rt.close();
    process.env.PATH = oldPath;
    await g.cleanup();
  }
}

export async function run(): Promise<void> {
  const seconds = envNumber('BENCH_SECONDS', 1, 0.1);
  const rounds = envNumber('BENCH_ROUNDS', 3, 1);
  const dir = await mkdtemp('/tmp/ktbkt-');
  try {
    const gpg24 = gpg24Path();
    const system = await measure(
      path.join(dir, 'a'),
      TYPES.filter((s) => !s.gpg24),
      '/usr/bin/gpg',
      seconds,
      rounds,
    );
    const newer = gpg24
      ? await measure(
          path.join(dir, 'b'),
          TYPES.filter((s) => s.gpg24),
          gpg24,
          seconds,
          rounds,
        )
      : ['  ed448, cv448: skipped (no gpg 2.4; run scripts/fetch-gpg24.sh)'];
    process.stdout.write(
      `key types: ops/s (median of ${rounds} x ${seconds} s), x = ratio to gpg-agent; ` +
        `gpg-agent on its socket, keytether's holder in-process; ed448/cv448 with gpg-agent 2.4\n` +
        [...system, ...newer].join('\n') +
        '\n',
    );
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  run().catch((e: unknown) => {
    process.stderr.write(`${(e as Error).stack ?? String(e)}\n`);
    process.exit(1);
  });
}
