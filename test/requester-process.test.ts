// The requester process end to end: stock gpg and git on a facade's socket, a real holder behind
// a tunnel that rewrites the claim as `keytether ssh` does. A policy rule with `process = "git"`
// lets git's signatures through without asking; any other gpg falls to the confirm rule, whose
// prompt shows the chain as the server's claim. The audit log records it.

import t from 'tap';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { claimedRequester } from '../protocol/keyholder.js';
import { serveTunnel, tunnelClient } from '../protocol/tunnel/index.js';
import { startFacade } from '../server/facade.js';
import { DEFAULT_CONFIG, parsePolicyFlag, type Config } from '../workstation/home/config.js';
import { openHolderRuntime } from '../workstation/holder/runtime.js';
import { ALLOW_BLIND_RULE } from './support/blind-signing.js';
import { clientHome, exportSecretKey, generateKey, makeGnupgHome } from './support/gnupg.js';
import { makePinentryScript } from './support/pinentry-script.js';
import { socketPair } from './support/socket-pair.js';

const execFileP = promisify(execFile);
const SOFTWARE = 'keytether/test';

interface AuditLine {
  decision: string;
  rule?: string;
  reason?: string;
  requester?: { pid?: number; name?: string; parents?: { pid: number; name: string }[] };
}

t.test('policy on the requesting process, through a real facade', async (t) => {
  const ws = await makeGnupgHome();
  t.teardown(() => ws.cleanup());
  const key = await generateKey(ws, { uid: 'K <k@example.org>', algo: 'ed25519', usage: 'sign' });
  const tmp = await mkdtemp('/tmp/ktproc-');
  t.teardown(() => rm(tmp, { recursive: true, force: true }));
  const pin = await makePinentryScript({ confirm: ['notok', 'notok'] });
  t.teardown(() => pin.cleanup());

  const home = path.join(tmp, 'home');
  const config: Config = {
    ...DEFAULT_CONFIG,
    relay: [],
    backend: 'builtin',
    pinentryProgram: await pin.standaloneProgram(),
    policy: [
      ALLOW_BLIND_RULE,
      parsePolicyFlag('front=ssh,op=sign,process=git,action=allow'),
      parsePolicyFlag('front=ssh,op=sign,action=confirm'),
    ],
  };
  const rt = await openHolderRuntime(home, config);
  t.teardown(() => rt.close());
  await rt.keystore.importKeys(await exportSecretKey(ws, key.fingerprint));

  // What `keytether ssh` does with a server's claim: only user and process survive, cleaned.
  const [holderEnd, facadeEnd] = await socketPair(t, tmp);
  serveTunnel(rt.holder, holderEnd, {
    software: SOFTWARE,
    requester: (claimed) => ({ ...claimedRequester(claimed), front: 'ssh', host: 'srv' }),
  });
  const tunnel = tunnelClient(facadeEnd, { software: SOFTWARE });
  t.teardown(() => tunnel.close());
  await tunnel.ready;
  const facade = await startFacade({ socketPath: path.join(tmp, 'S.facade'), holder: tunnel });
  t.teardown(() => facade.close());

  const pub = await ws.gpg(['--batch', '--armor', '--export', key.fingerprint]);
  const g = await clientHome(facade.socketPath, pub.stdout);
  t.teardown(() => g.cleanup());
  const audit = async (): Promise<AuditLine[]> =>
    (await readFile(path.join(home, 'audit.jsonl'), 'utf8'))
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as AuditLine);

  await t.test('a commit signed by git is allowed without a prompt', async (t) => {
    const repo = path.join(tmp, 'repo');
    const env = {
      ...process.env,
      ...g.env,
      GIT_CONFIG_NOSYSTEM: '1',
      GIT_CONFIG_GLOBAL: '/dev/null',
      GIT_AUTHOR_NAME: 'K',
      GIT_AUTHOR_EMAIL: 'k@example.org',
      GIT_COMMITTER_NAME: 'K',
      GIT_COMMITTER_EMAIL: 'k@example.org',
    };
    await execFileP('git', ['init', '-q', repo], { env });
    await writeFile(path.join(repo, 'a.txt'), 'a\n');
    await execFileP('git', ['-C', repo, 'add', 'a.txt'], { env });
    const r = await execFileP(
      'git',
      [
        '-C',
        repo,
        '-c',
        `user.signingkey=${key.fingerprint}`,
        'commit',
        '-q',
        '-S',
        '-m',
        'signed',
      ],
      { env },
    ).catch((e: { stderr?: string }) => ({ stdout: '', stderr: e.stderr ?? String(e) }));
    t.equal(r.stderr.includes('failed to sign'), false, r.stderr);
    const v = await execFileP('git', ['-C', repo, 'verify-commit', 'HEAD'], { env }).catch(
      (e: { stderr?: string }) => ({ stdout: '', stderr: `FAILED ${e.stderr ?? ''}` }),
    );
    t.match(v.stderr, /Good signature/, 'git verify-commit says Good');
    const last = (await audit()).at(-1)!;
    t.equal(last.decision, 'allowed');
    t.match(last.reason, /process=git/, 'decided by the process rule');
    t.equal(last.requester?.name, 'gpg', 'gpg is the requester');
    t.equal(last.requester?.parents?.[0]?.name, 'git', 'started by git');
    t.equal((await pin.invocations()).length, 0, 'no prompt');
  });

  await t.test('gpg started by a shell falls to the confirm rule and is refused', async (t) => {
    const msg = path.join(g.home, 'msg.txt');
    await writeFile(msg, 'hello\n');
    const r = await execFileP(
      'sh',
      ['-c', `gpg --batch -u ${key.fingerprint} --detach-sign -o "$0.sig" "$0"`, msg],
      { env: { ...process.env, ...g.env } },
    ).then(
      () => 0,
      (e: { code?: number }) => e.code ?? 1,
    );
    t.not(r, 0, 'gpg failed');
    const last = (await audit()).at(-1)!;
    t.equal(last.decision, 'denied');
    t.match(last.reason ?? '', /not confirmed/);
    t.equal(last.requester?.parents?.[0]?.name, 'sh');
    const calls = (await pin.calls()).flat();
    const desc = calls.find((c) => c.cmd === 'SETDESC')?.text ?? '';
    t.match(desc, /requested by: gpg --batch -u .* ← sh -c .*\(reported by the server\)/);
  });

  await t.test('gpg-connect-agent from a shell is refused the same way', async (t) => {
    const r = await execFileP(
      'sh',
      [
        '-c',
        `gpg-connect-agent --no-autostart -S "$0" "SIGKEY ${key.keygrip}" "SETHASH 8 ${'ab'.repeat(32)}" PKSIGN /bye`,
        facade.socketPath,
      ],
      { env: { ...process.env, ...g.env } },
    );
    t.match(r.stdout, /ERR \d+ Not confirmed|ERR \d+ .*confirm/i, r.stdout);
    const last = (await audit()).at(-1)!;
    t.equal(last.requester?.name, 'gpg-connect-age');
    t.equal(last.requester?.parents?.[0]?.name, 'sh');
  });
});
