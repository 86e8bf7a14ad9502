// What clear signing costs a git user on a server: `git commit -S` through `keytether ssh` over
// a link with a 20 ms round trip (a TCP proxy delaying each direction by 10 ms in front of a real
// sshd), blind (gpg.program = gpg, the anchor: today's signing) against verified (gpg.program =
// the shim the session wrote: payload and proving git objects to the facade, digest recomputed
// and file list proven at the holder). Same key, session and repository; alternating blocks;
// per-commit medians and their ratio (goal ≤ 1.3). Then the holder's digest search alone, p99
// over many requests (goal ≤ 2 ms).
//   KEYTETHER_BENCH_COMMITS (default 20)  KEYTETHER_BENCH_SEARCH_N (default 2000)

import { createHash } from 'node:crypto';
import { appendFile, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { v4Digest } from '../protocol/openpgp/v4-digest.js';
import type { KeyEntry, SignRequest } from '../protocol/keyholder.js';
import { classifySign } from '../workstation/holder/clear-sign.js';
import { startDelayProxy } from './support/delay-proxy.js';
import {
  exportAllSecretKeys,
  generateUnprotectedKey,
  makeBenchGnupg,
} from './support/gnupg-home.js';
import { runTool, startDaemon } from './support/processes.js';
import { startBenchSshd } from './support/sshd.js';
import { cliPath, envNumber, median } from './support/settings.js';

const shq = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

function percentile(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] ?? NaN;
}

/** classifySign on a commit-sized payload: a match at the far end of the window, and none. */
function digestSearch(n: number): { match: number[]; none: number[] } {
  const fpr = 'A'.repeat(40);
  const entry = {
    keygrip: 'B'.repeat(40),
    fingerprint: fpr,
    primaryFingerprint: fpr,
    algorithm: 'ed25519',
    usage: ['sign'],
    publicKey: new Uint8Array(),
  } as KeyEntry;
  const data = Buffer.from(
    `tree ${'1'.repeat(40)}\nparent ${'2'.repeat(40)}\n` +
      `author A <a@example.org> 1765000000 +0000\ncommitter A <a@example.org> 1765000000 +0000\n\n` +
      `${'A commit message line.\n'.repeat(40)}`,
  );
  const now = Math.floor(Date.now() / 1000);
  const late = v4Digest(data, 'binary', {
    sigType: 0x00,
    pubkeyAlgo: 22,
    hashAlgo: 10,
    issuerFingerprint: Buffer.from(fpr, 'hex'),
    created: now + 59,
  });
  const req = (digest: Buffer): SignRequest => ({
    keygrip: entry.keygrip,
    hashAlgo: 10,
    digest,
    requester: { front: 'ssh', host: 'bench' },
    content: { kind: 'git-commit', mode: 'binary', time: now, data },
  });
  const time = (r: SignRequest, expect: string) => {
    const t0 = performance.now();
    const got = classifySign(entry, r, [], now).verification;
    const ms = performance.now() - t0;
    if (got !== expect) throw new Error(`digest search: ${got}, expected ${expect}`);
    return ms;
  };
  const match: number[] = [];
  const none: number[] = [];
  const other = createHash('sha512').update('not this payload').digest();
  // Warmed up first: the holder is a long-running process, its code long compiled.
  for (let i = 0; i < 200; i++) {
    time(req(late), 'verified');
    time(req(other), 'blind');
  }
  for (let i = 0; i < n; i++) {
    match.push(time(req(late), 'verified'));
    none.push(time(req(other), 'blind'));
  }
  return { match, none };
}

export async function run(): Promise<void> {
  const commits = envNumber('KEYTETHER_BENCH_COMMITS', 20, 2);
  const searches = envNumber('KEYTETHER_BENCH_SEARCH_N', 2000, 10);
  const block = 5;
  const cli = cliPath();
  const root = await mkdtemp('/tmp/ktbcs-');
  try {
    const ws = await makeBenchGnupg(path.join(root, 'w'));
    const key = await generateUnprotectedKey(ws, 'Bench Git <git@bench.example>', 'ed25519');
    const ktHome = path.join(root, 'kt');
    const userHome = path.join(root, 'u');
    await mkdir(ktHome, { mode: 0o700 });
    await mkdir(userHome, { mode: 0o700 });
    // The anchor signs blind with gpg's sign+certify primary, which needs saying so.
    await writeFile(path.join(ktHome, 'config.toml'), '[[policy]]\nclear-sign = "preferred"\n');
    const ktEnv: NodeJS.ProcessEnv = { ...process.env, KEYTETHER_HOME: ktHome, HOME: userHome };
    delete ktEnv.SSH_AUTH_SOCK;
    const imp = await runTool(process.execPath, [cli, 'keys', 'import'], ktEnv, {
      input: await exportAllSecretKeys(ws),
    });
    if (imp.code !== 0) throw new Error(`keys import: ${imp.stderr}`);

    const server = await makeBenchGnupg(path.join(root, 's'));
    await appendFile(path.join(server.home, 'gpg.conf'), 'no-autostart\n');
    const pub = await ws.gpg(['--batch', '--export', key.fingerprint]);
    await ws.cleanup();
    const pubImp = await runTool('/usr/bin/gpg', ['--batch', '--import'], server.env, {
      input: pub.stdout,
    });
    if (pubImp.code !== 0) throw new Error(`server key import: ${pubImp.stderr}`);
    await server.tool('gpgconf', ['--create-socketdir']);

    const sshd = await startBenchSshd(path.join(root, 'sshd'), {
      PATH: `${path.dirname(process.execPath)}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin`,
      LANG: 'C',
      GNUPGHOME: server.home,
    });
    const proxy = await startDelayProxy(sshd.port, 10);
    const knownHosts = path.join(root, 'known_hosts');
    await sshd.knownHosts(knownHosts, [proxy.port, sshd.port]);
    const session = await startDaemon(
      process.execPath,
      [
        cli,
        'ssh',
        '-p',
        String(proxy.port),
        '-i',
        sshd.clientKey,
        '-o',
        `UserKnownHostsFile=${knownHosts}`,
        '-o',
        'GlobalKnownHostsFile=/dev/null',
        '--remote-command',
        `${shq(process.execPath)} ${shq(cli)}`,
        `${sshd.user}@127.0.0.1`,
      ],
      ktEnv,
      'ready: ',
      60_000,
    );
    try {
      const shim = path.join(server.home, 'keytether-git-sign');
      const repo = path.join(root, 'repo');
      const git = (program: string) =>
        `git -C ${shq(repo)} -c gpg.program=${shq(program)} -c user.signingkey=${key.fingerprint} ` +
        `-c user.name='Bench Git' -c user.email=git@bench.example`;
      const loop = (label: string, program: string, n: number) =>
        `for i in $(seq ${n}); do echo "$i ${label}" > ${shq(repo)}/src/f-${label}.txt; ` +
        `${git(program)} add src; s=$(date +%s%N); ` +
        `${git(program)} commit -q -S -m "${label} $i" || exit 1; e=$(date +%s%N); ` +
        `echo "${label} $(( (e - s) / 1000 ))"; done`;
      const blocks: string[] = [
        `git init -q ${shq(repo)} && mkdir -p ${shq(repo)}/src`,
        // One unmeasured commit each, so that neither path pays a first-use cost in the figures.
        loop('warm-blind', 'gpg', 1),
        loop('warm-shim', shim, 1),
      ];
      for (let done = 0; done < commits; done += block) {
        const n = Math.min(block, commits - done);
        blocks.push(loop('blind', 'gpg', n), loop('shim', shim, n));
      }
      const r = await runTool('sh', ['-c', blocks.join(' && ')], {
        ...server.env,
        HOME: userHome,
        GIT_CONFIG_NOSYSTEM: '1',
      });
      if (r.code !== 0) throw new Error(`git on the server: ${r.stderr}`);
      const times = new Map<string, number[]>();
      for (const line of r.stdout.toString().split('\n')) {
        const [label, us] = line.split(' ');
        if (!label || !us) continue;
        times.set(label, [...(times.get(label) ?? []), Number(us) / 1000]);
      }
      const audit = (await readFile(path.join(ktHome, 'audit.jsonl'), 'utf8'))
        .split('\n')
        .filter(Boolean)
        .map(
          (l) =>
            JSON.parse(l) as { verification?: string; content?: { files?: { proven?: boolean } } },
        );
      const proven = audit.filter(
        (a) => a.verification === 'verified' && a.content?.files?.proven === true,
      ).length;
      // Every shim commit (and its warm-up) must have been verified with a proven file list.
      if (proven !== commits + 1)
        throw new Error(`${proven} of ${commits + 1} shim commits proven`);
      const blind = median(times.get('blind') ?? []);
      const verified = median(times.get('shim') ?? []);
      process.stdout.write(
        `clear-sign over ssh (20 ms RTT), git commit -S, n=${commits} each: blind ${blind.toFixed(1)} ms, ` +
          `verified with proven file list ${verified.toFixed(1)} ms, ratio ${(verified / blind).toFixed(2)} (goal ≤ 1.30)\n`,
      );
    } finally {
      await session.stop();
      await proxy.close();
      await sshd.stop();
      await server.cleanup();
    }

    const s = digestSearch(searches);
    process.stdout.write(
      `holder digest search (classifySign, 1 KiB commit, SHA-512, n=${searches}): ` +
        `match at the window's far end p50 ${median(s.match).toFixed(3)} ms p99 ${percentile(s.match, 99).toFixed(3)} ms; ` +
        `no match (whole window) p50 ${median(s.none).toFixed(3)} ms p99 ${percentile(s.none, 99).toFixed(3)} ms (goal p99 ≤ 2 ms)\n`,
    );
  } finally {
    await rm(root, { recursive: true, force: true });
  }
}
