// What clear signing costs a user: one `keytether connect -- sh -c LOOP` through a real relay and
// holder, in which stock gpg signs a file N times blind (`gpg --detach-sign`, the anchor) and N
// times through the shim (`"$KEYTETHER_GIT_SIGN" --detach-sign`: payload handed to the facade,
// carried to the holder in content frames, digest recomputed there). Same key, same session,
// same run; per-signature medians and their ratio, for a small file and a large one.
//   KEYTETHER_BENCH_CLEAR_N (default 15)  KEYTETHER_BENCH_CLEAR_MIB (large file, default 8)

import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import {
  exportAllSecretKeys,
  generateUnprotectedKey,
  makeBenchGnupg,
} from './support/gnupg-home.js';
import { runTool, startDaemon } from './support/processes.js';
import { cliPath, envNumber, median } from './support/settings.js';

function loop(label: string, signer: string, file: string, n: number, fpr: string): string {
  // date +%s%N around each signature: the shell's own startup is not measured.
  return (
    `for i in $(seq ${n}); do s=$(date +%s%N); ` +
    `${signer} --batch --yes -u ${fpr} -o '${file}.sig' --detach-sign '${file}' || exit 1; ` +
    `e=$(date +%s%N); echo "${label} $(( (e - s) / 1000 ))"; done`
  );
}

export async function run(): Promise<void> {
  const n = envNumber('KEYTETHER_BENCH_CLEAR_N', 15, 1);
  const mib = envNumber('KEYTETHER_BENCH_CLEAR_MIB', 8, 1);
  const cli = cliPath();
  const dir = await mkdtemp(path.join(tmpdir(), 'kt-bcs-'));
  try {
    const ws = await makeBenchGnupg(path.join(dir, 'g'));
    const key = await generateUnprotectedKey(ws, 'Bench <bench@example.org>', 'ed25519');
    const env = { ...process.env, KEYTETHER_HOME: path.join(dir, 'home') };
    const imp = await runTool(process.execPath, [cli, 'keys', 'import'], env, {
      input: await exportAllSecretKeys(ws),
    });
    if (imp.code !== 0) throw new Error(`keys import: ${imp.stderr}`);
    await ws.cleanup();
    const relay = await startDaemon(
      process.execPath,
      [cli, 'relay', '--listen', '127.0.0.1:0'],
      env,
      'listening: ',
    );
    const holder = await startDaemon(
      process.execPath,
      // gpg's primary always certifies, so blind signing (the anchor) needs saying so.
      [
        cli,
        'agent',
        '--policy',
        'clear-sign=preferred',
        '--socket',
        path.join(dir, 'S.l'),
        '--relay',
        relay.readyText.trim(),
      ],
      env,
      'ready: ',
    );
    try {
      const made = await runTool(
        process.execPath,
        [cli, 'token', 'create', '--key', key.fingerprint, '--relay', relay.readyText.trim()],
        env,
      );
      if (made.code !== 0) throw new Error(`token create: ${made.stderr}`);
      const small = path.join(dir, 'small.txt');
      const large = path.join(dir, 'large.bin');
      await writeFile(small, 'release notes\n'.repeat(64));
      await writeFile(large, randomBytes(mib * 1024 * 1024));
      const script = [
        loop('blind-small', 'gpg', small, n, key.fingerprint),
        loop('shim-small', '"$KEYTETHER_GIT_SIGN"', small, n, key.fingerprint),
        loop('blind-large', 'gpg', large, n, key.fingerprint),
        loop('shim-large', '"$KEYTETHER_GIT_SIGN"', large, n, key.fingerprint),
      ].join('\n');
      // The relay may need a moment to see the holder; connect retries the first stream itself.
      const r = await runTool(process.execPath, [cli, 'connect', '--', 'sh', '-c', script], {
        ...env,
        KEYTETHER_TOKEN: made.stdout.toString().trim(),
      });
      if (r.code !== 0) throw new Error(`connect: ${r.stderr}`);
      const times = new Map<string, number[]>();
      for (const line of r.stdout.toString().split('\n')) {
        const [label, us] = line.split(' ');
        if (!label || !us) continue;
        times.set(label, [...(times.get(label) ?? []), Number(us) / 1000]);
      }
      // The shim's signatures must really have been verified, or the ratio measures nothing.
      const verified = (await readFile(path.join(env.KEYTETHER_HOME, 'audit.jsonl'), 'utf8'))
        .split('\n')
        .filter((l) => l.includes('"verification":"verified"')).length;
      if (verified !== 2 * n) throw new Error(`${verified} of ${2 * n} shim signatures verified`);
      for (const size of ['small', 'large'] as const) {
        const blind = median(times.get(`blind-${size}`) ?? []);
        const shim = median(times.get(`shim-${size}`) ?? []);
        const bytes = size === 'small' ? 896 : mib * 1024 * 1024;
        process.stdout.write(
          `clear-sign ${size} (${bytes} bytes, n=${n}): blind gpg ${blind.toFixed(1)} ms, ` +
            `through the shim (verified) ${shim.toFixed(1)} ms, ratio ${(shim / blind).toFixed(2)}\n`,
        );
      }
    } finally {
      await holder.stop();
      await relay.stop();
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
