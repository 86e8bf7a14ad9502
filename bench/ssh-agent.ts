// An SSH login from a server with the workstation's key, over a link with a 20 ms round trip (a
// TCP proxy delaying each direction by 10 ms in front of a real sshd): the anchor is OpenSSH's
// own agent forwarding (`ssh -A`, the workstation's ssh-agent holding an Ed25519 key), against
// keytether's forwarded ssh-agent socket (`keytether ssh`, the holder's Ed25519 auth subkey,
// a policy rule allowing the login). On the server the same `ssh … true` to a second login on
// that sshd, n times each in alternating blocks; per-login medians and their ratio (goal ≤ 1.0).
//   KEYTETHER_BENCH_LOGINS (default 20)

import { spawn } from 'node:child_process';
import { appendFile, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
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

export async function run(): Promise<void> {
  const logins = envNumber('KEYTETHER_BENCH_LOGINS', 20, 2);
  const block = 5;
  const cli = cliPath();
  const root = await mkdtemp('/tmp/ktbsa-');
  const stops: (() => Promise<void>)[] = [];
  try {
    // The holder's key: an OpenPGP key with an Ed25519 authentication subkey.
    const ws = await makeBenchGnupg(path.join(root, 'w'));
    const key = await generateUnprotectedKey(ws, 'Bench SSH <ssh@bench.example>', 'ed25519');
    const add = await ws.gpg([
      '--batch',
      '--pinentry-mode',
      'loopback',
      '--passphrase',
      '',
      '--quick-add-key',
      key.fingerprint,
      'ed25519',
      'auth',
      'never',
    ]);
    if (add.code !== 0) throw new Error(`gpg --quick-add-key auth: ${add.stderr}`);
    const holderPub = (await ws.gpg(['--batch', '--export-ssh-key', key.fingerprint])).stdout
      .toString()
      .trim();
    const ktHome = path.join(root, 'kt');
    const userHome = path.join(root, 'u');
    await mkdir(ktHome, { mode: 0o700 });
    await mkdir(userHome, { mode: 0o700 });
    await writeFile(
      path.join(ktHome, 'config.toml'),
      '[[policy]]\nop = "ssh-sign"\naction = "allow"\n',
    );
    const ktEnv: NodeJS.ProcessEnv = { ...process.env, KEYTETHER_HOME: ktHome, HOME: userHome };
    delete ktEnv.SSH_AUTH_SOCK;
    const imp = await runTool(process.execPath, [cli, 'keys', 'import'], ktEnv, {
      input: await exportAllSecretKeys(ws),
    });
    if (imp.code !== 0) throw new Error(`keys import: ${imp.stderr}`);
    await ws.cleanup();

    // The anchor's key, in the workstation's own OpenSSH ssh-agent.
    const agentSock = path.join(root, 'agent.sock');
    const agent = spawn('ssh-agent', ['-D', '-a', agentSock], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    stops.push(async () => {
      agent.kill();
    });
    await new Promise<void>((resolve, reject) => {
      agent.stdout.once('data', () => resolve());
      agent.once('exit', (c) => reject(new Error(`ssh-agent exited ${c}`)));
    });
    const anchorKey = path.join(root, 'anchor_ed25519');
    const kg = await runTool('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', anchorKey], {});
    if (kg.code !== 0) throw new Error(`ssh-keygen: ${kg.stderr}`);
    const agentEnv = { ...process.env, SSH_AUTH_SOCK: agentSock };
    const sa = await runTool('ssh-add', ['-q', anchorKey], agentEnv);
    if (sa.code !== 0) throw new Error(`ssh-add: ${sa.stderr}`);

    const sshdDir = path.join(root, 'sshd');
    const sshd = await startBenchSshd(sshdDir, {
      PATH: `${path.dirname(process.execPath)}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin`,
      LANG: 'C',
    });
    stops.push(() => sshd.stop());
    await appendFile(
      path.join(sshdDir, 'authorized_keys'),
      `${holderPub}\n${(await readFile(`${anchorKey}.pub`, 'utf8')).trim()}\n`,
    );
    const proxy = await startDelayProxy(sshd.port, 10);
    stops.push(() => proxy.close());
    const knownHosts = path.join(root, 'known_hosts');
    await sshd.knownHosts(knownHosts, [proxy.port, sshd.port]);
    const common = [
      '-F',
      '/dev/null',
      '-o',
      `UserKnownHostsFile=${knownHosts}`,
      '-o',
      'GlobalKnownHostsFile=/dev/null',
      '-o',
      'BatchMode=yes',
    ];
    // The server's login to its "next hop", timed on the server.
    const loop = (label: string, agentRef: string, n: number) =>
      `for i in $(seq ${n}); do s=$(date +%s%N); ` +
      `ssh ${common.map(shq).join(' ')} -o IdentitiesOnly=no -o IdentityAgent=${agentRef} ` +
      `-p ${sshd.port} ${sshd.user}@127.0.0.1 true || exit 1; e=$(date +%s%N); ` +
      `echo "${label} $(( (e - s) / 1000 ))"; done`;

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
      'ssh-agent: ',
      60_000,
    );
    stops.push(() => session.stop());
    const ktSocket = session.readyText.trim();

    const times = new Map<string, number[]>();
    const collect = (out: string) => {
      for (const line of out.split('\n')) {
        const [label, us] = line.split(' ');
        if (!label || !us) continue;
        times.set(label, [...(times.get(label) ?? []), Number(us) / 1000]);
      }
    };
    // keytether's loop runs over a direct login: its agent requests cross the keytether link.
    const direct = ['-p', String(sshd.port), '-i', sshd.clientKey, `${sshd.user}@127.0.0.1`];
    // The anchor's runs inside `ssh -A` over the delayed link, as a user forwarding would.
    const forwarded = ['-A', '-p', String(proxy.port), `${sshd.user}@127.0.0.1`];
    const runOn = async (args: string[], command: string, env: NodeJS.ProcessEnv) => {
      const r = await runTool('ssh', [...common, ...args, command], env);
      if (r.code !== 0) throw new Error(`ssh ${args.join(' ')}: ${r.stderr}`);
      collect(r.stdout.toString());
    };
    const noAgent = { ...process.env, SSH_AUTH_SOCK: '' };
    await runOn(forwarded, loop('warm-anchor', '"$SSH_AUTH_SOCK"', 1), agentEnv);
    await runOn(direct, loop('warm-kt', shq(ktSocket), 1), noAgent);
    for (let done = 0; done < logins; done += block) {
      const n = Math.min(block, logins - done);
      await runOn(forwarded, loop('anchor', '"$SSH_AUTH_SOCK"', n), agentEnv);
      await runOn(direct, loop('kt', shq(ktSocket), n), noAgent);
    }
    const audit = (await readFile(path.join(ktHome, 'audit.jsonl'), 'utf8'))
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as { op: string; decision: string });
    const signed = audit.filter((a) => a.op === 'ssh-sign' && a.decision === 'allowed').length;
    if (signed !== logins + 1) throw new Error(`${signed} of ${logins + 1} logins audited`);
    const anchor = median(times.get('anchor') ?? []);
    const kt = median(times.get('kt') ?? []);
    process.stdout.write(
      `ssh login through a forwarded agent (20 ms RTT), n=${logins} each: ssh -A ${anchor.toFixed(1)} ms, ` +
        `keytether ssh-agent socket ${kt.toFixed(1)} ms, ratio ${(kt / anchor).toFixed(2)} (goal ≤ 1.00)\n`,
    );
  } finally {
    for (const stop of stops.reverse()) await stop().catch(() => undefined);
    await rm(root, { recursive: true, force: true });
  }
}
