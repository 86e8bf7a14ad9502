// The desktop notification `keytether agent --web` sends through notify-send when a confirmation
// starts waiting. A desktop notification daemon cannot run here (no session bus, no display), so
// a small shell script named notify-send, first on the agent's PATH, stands in for the real
// program: it writes its argv, one argument per line, to a file of its own per call. Everything
// else is real: gpg and git on the "server" side, the relay, the agent, the scripted pinentry,
// and `keytether approve`/`deny` answering.

import t, { type Test } from 'tap';
import { watch } from 'node:fs';
import { chmod, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { accessSync, constants } from 'node:fs';
import path from 'node:path';
import { clearSignRig } from './support/clear-sign-rig.js';
import { makePinentryScript } from './support/pinentry-script.js';
import { runCli } from './support/cli.js';

/** A directory holding a notify-send stand-in that logs each call to LOGDIR/call.<pid>. */
async function standIn(t: Test, mode: number): Promise<{ bin: string; logDir: string }> {
  const dir = await mkdtemp('/tmp/kt-notify-');
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const bin = path.join(dir, 'bin');
  const logDir = path.join(dir, 'calls');
  await mkdir(bin);
  await mkdir(logDir);
  // Written aside and renamed, so a reader never sees half a call.
  await writeFile(
    path.join(bin, 'notify-send'),
    `#!/bin/sh\n# Stands in for notify-send (no notification daemon runs in tests): logs its argv.\nf='${logDir}/.tmp.'$$\nfor a in "$@"; do printf '%s\\n' "$a"; done > "$f"\nmv "$f" '${logDir}/call.'$$\n`,
  );
  await chmod(path.join(bin, 'notify-send'), mode);
  return { bin, logDir };
}

/** Each logged call's arguments (one per line as the stand-in wrote them). */
async function calls(logDir: string): Promise<string[][]> {
  const names = (await readdir(logDir)).filter((n) => n.startsWith('call.'));
  return Promise.all(
    names.map(async (n) =>
      (await readFile(path.join(logDir, n), 'utf8')).replace(/\n$/, '').split('\n'),
    ),
  );
}

/** Resolves once LOGDIR holds at least N calls (checked on every change of the directory). */
function callsReach(logDir: string, n: number, timeoutMs = 30_000): Promise<string[][]> {
  return new Promise((resolve, reject) => {
    let done = false;
    const watcher = watch(logDir);
    const finish = (err: Error | null, c?: string[][]) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      watcher.close();
      if (err) reject(err);
      else resolve(c!);
    };
    const check = () =>
      calls(logDir).then((c) => (c.length >= n ? finish(null, c) : undefined), finish);
    const timer = setTimeout(
      () => finish(new Error(`notify-send was not called ${n} time(s)`)),
      timeoutMs,
    );
    watcher.on('change', check);
    watcher.on('error', finish);
    check();
  });
}

/** PATH without any directory that has an executable notify-send. */
function pathWithoutNotifySend(): string {
  return (process.env.PATH ?? '')
    .split(path.delimiter)
    .filter((d) => {
      try {
        accessSync(path.join(d, 'notify-send'), constants.X_OK);
        return false;
      } catch {
        return true;
      }
    })
    .join(path.delimiter);
}

t.test('a waiting confirmation: one notification pointing at the page, no secret', async (t) => {
  const { bin, logDir } = await standIn(t, 0o755);
  const pin = await makePinentryScript({ confirm: ['hang', 'hang'] });
  t.teardown(() => pin.cleanup());
  const rig = await clearSignRig(t, 'Nora Notify <nora@example.org>', {
    agentArgs: [
      '--web',
      '--pinentry-program',
      pin.program,
      '--policy',
      'front=relay,op=sign,action=confirm',
    ],
    agentEnv: { ...pin.env, PATH: `${bin}${path.delimiter}${pathWithoutNotifySend()}` },
  });
  const FPR = rig.fingerprint;
  const printed = /^web: (http:\/\/127\.0\.0\.1:\d+\/)#([A-Za-z0-9_-]{43})$/m.exec(
    rig.holderStderr(),
  );
  t.ok(printed, 'the agent printed the page address with its one-time secret');
  const [, base, secret] = printed!;
  t.same(await calls(logDir), [], 'no notification before anything waits');
  const env = { KEYTETHER_HOME: rig.home };
  const answerWith = async (verb: 'approve' | 'deny') => {
    const listed = await runCli(['approve'], { env });
    const id = /^([0-9a-f]{12}) {2}sign with key /m.exec(listed.stdout);
    t.ok(id, listed.stdout);
    const r = await runCli([verb, id![1]!], { env });
    t.equal(r.code, 0, r.stderr);
  };

  await t.test('a commit with control characters in its message', async (t) => {
    const repo = path.join(rig.tmp, 'repo');
    const msg = path.join(rig.tmp, 'message.txt');
    await writeFile(
      msg,
      'Fix \x1b[31mRED\x1b[0m in \u202etxt.exe\x07\n\n$(touch /tmp/kt-notify-pwned) `id` --urgency=critical\n',
    );
    const git = `git -C '${repo}' -c user.name='Nora Notify' -c user.email=nora@example.org -c user.signingkey=${FPR}`;
    const committed = rig.connect(
      'sh',
      '-c',
      `git init -q '${repo}' && ${git} commit -q --allow-empty -S -F '${msg}'`,
    );
    const [call] = await callsReach(logDir, 1);
    await pin.waitFor((inv) => inv.some((i) => i.calls.some((c) => c.cmd === 'CONFIRM')));
    await answerWith('approve');
    const r = await committed;
    t.equal(r.code, 0, r.stderr);
    t.match((await rig.signs()).at(-1), {
      decision: 'confirmed',
      content: { kind: 'git-commit' },
    });

    // Read once the request is over: the call is spawned when the request is offered, so a second
    // one for the same request would have been spawned long before gpg finished.
    const all = await calls(logDir);
    t.equal(all.length, 1, 'exactly one notification for the one request');
    t.same(call, [
      '--app-name=keytether',
      'keytether: confirmation waiting',
      `sign with key ${FPR.slice(-16)} for relay: approve or deny at ${base}`,
    ]);
    const argv = call!.join('\n');
    t.notMatch(argv, secret!, 'the one-time secret is not in the arguments');
    t.notMatch(argv, '#', 'no fragment at all');
    t.notMatch(argv, /[\x00-\x08\x0b-\x1f\x7f\u202a-\u202e\u2066-\u2069]/, 'no control character');
    for (const bit of ['RED', 'txt.exe', 'kt-notify-pwned', '`id`', '--urgency']) {
      t.notMatch(argv, bit, `nothing of the commit message (${bit})`);
    }
  });

  await t.test('each request its own notification', async (t) => {
    const file = path.join(rig.tmp, 'doc.txt');
    await writeFile(file, 'a document\n');
    const signed = rig.connect(
      'sh',
      '-c',
      `"$KEYTETHER_GIT_SIGN" --batch -u ${FPR} -o '${file}.sig' --detach-sign '${file}'`,
    );
    await callsReach(logDir, 2);
    await pin.waitFor(
      (inv) => inv.filter((i) => i.calls.some((c) => c.cmd === 'CONFIRM')).length >= 2,
    );
    await answerWith('deny');
    const r = await signed;
    t.not(r.code, 0, 'denied');
    t.equal((await calls(logDir)).length, 2, 'one more call, not more');
  });
});

t.test('no notify-send on PATH: no error, the request still works', async (t) => {
  // A notify-send that is not executable is no notify-send: PATH lookup skips it.
  const { bin, logDir } = await standIn(t, 0o644);
  const pin = await makePinentryScript({ confirm: ['ok'] });
  t.teardown(() => pin.cleanup());
  const rig = await clearSignRig(t, 'Nadia Nonotify <nadia@example.org>', {
    agentArgs: [
      '--web',
      '--pinentry-program',
      pin.program,
      '--policy',
      'front=relay,op=sign,action=confirm',
    ],
    agentEnv: { ...pin.env, PATH: `${bin}${path.delimiter}${pathWithoutNotifySend()}` },
  });
  t.match(rig.holderStderr(), /^web: http:\/\/127\.0\.0\.1:\d+\/#/m, 'the page is served');
  const file = path.join(rig.tmp, 'doc.txt');
  await writeFile(file, 'a document\n');
  const r = await rig.connect(
    'sh',
    '-c',
    `"$KEYTETHER_GIT_SIGN" --batch -u ${rig.fingerprint} -o '${file}.sig' --detach-sign '${file}' && gpg --batch --verify '${file}.sig' '${file}'`,
  );
  t.equal(r.code, 0, r.stderr);
  t.match(r.stderr, /Good signature from "Nadia Nonotify/);
  const inv = await pin.invocations();
  t.ok(
    inv.some((i) => i.calls.some((c) => c.cmd === 'CONFIRM')),
    'the confirmation was asked (and answered) at the pinentry',
  );
  t.match((await rig.signs()).at(-1), { decision: 'confirmed' });
  t.same(await calls(logDir), [], 'the non-executable stand-in never ran');
  t.notMatch(
    rig.holderStderr(),
    /notify|ENOENT|EACCES|spawn|error/i,
    'the agent said nothing of it',
  );
});
