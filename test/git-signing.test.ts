// Every way git signs, through `keytether connect -- CMD` and the shim it sets as gpg.program:
// merge -S, rebase -S, commit --amend -S, cherry-pick -S and push --signed (a push certificate)
// each reach the holder with the bytes git signs, the holder recomputes gpg's digest from them
// and audits the signature as verified, and git verifies what it got. All parts real: the
// relay, the holder, the key (gpg's default sign+certify primary, so a blind request would be
// refused and a pass here means every one of them was verified), gpg and git.

import t from 'tap';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { v4HashedSuffix } from '../protocol/openpgp/v4-digest.js';
import { clearSignRig, type SignRecord as AuditRec } from './support/clear-sign-rig.js';

t.test('git signs every kind of object through the shim, each verified', async (t) => {
  const rig = await clearSignRig(t, 'Gil Git <gil@example.org>');
  const { ws, tmp } = rig;
  const FPR = rig.fingerprint;

  const repo = path.join(tmp, 'repo');
  const remote = path.join(tmp, 'remote.git');
  const git = `git -C '${repo}' -c user.name='Gil Git' -c user.email=gil@example.org -c user.signingkey=${FPR}`;
  const commit = (file: string, msg: string) =>
    `echo '${msg}' > '${repo}/${file}' && ${git} add '${file}' && ${git} commit -q -S -m '${msg}'`;
  const script = [
    `git init -q -b main '${repo}'`,
    commit('base.txt', 'base'),
    `${git} checkout -q -b feature`,
    commit('feature.txt', 'feature work'),
    `${git} checkout -q main`,
    commit('main.txt', 'main work'),
    `${git} merge -q -S --no-edit -m 'Merge feature' feature`,
    `${git} verify-commit HEAD`,
    `${git} commit -q --amend -S --no-edit -m 'Merge feature (amended)'`,
    `${git} verify-commit HEAD`,
    `${git} checkout -q -b topic main~1`,
    commit('topic1.txt', 'topic one'),
    commit('topic2.txt', 'topic two'),
    `${git} rebase -q -S main`,
    `${git} verify-commit HEAD && ${git} verify-commit HEAD~1`,
    `${git} checkout -q main`,
    `${git} cherry-pick -S topic`,
    `${git} verify-commit HEAD`,
    `git init -q --bare '${remote}'`,
    `git -C '${remote}' config receive.certNonceSeed keytether-test`,
    `${git} push -q --signed=yes '${remote}' main`,
  ].join(' && ');
  const r = await rig.connect('sh', '-c', script);
  t.equal(r.code, 0, r.stderr);
  t.equal(r.stderr.match(/Good signature from "Gil Git/g)?.length, 5, 'git verified each one');

  const signs = await rig.signs();
  const summaries = signs.map((s) => s.content?.summary);
  t.same(
    summaries,
    [
      'commit: base',
      'commit: feature work',
      'commit: main work',
      'commit: Merge feature',
      'commit: Merge feature (amended)',
      'commit: topic one',
      'commit: topic two',
      'commit: topic one',
      'commit: topic two',
      'commit: topic two',
      `push to ${remote}: 1 ref(s)`,
    ],
    'one verified record per object git signed, in order, naming it',
  );
  t.ok(
    signs.every((s) => s.decision === 'allowed' && s.verification === 'verified'),
    'none of them blind',
  );
  t.equal(signs.at(-1)?.content?.kind, 'git-push');
  t.same(
    signs
      .filter((s) => s.content?.kind === 'git-commit')
      .map((s) => (s.content?.files as { first?: string[] } | undefined)?.first),
    [
      ['A base.txt'],
      ['A feature.txt'],
      ['A main.txt'],
      ['A feature.txt'],
      ['A feature.txt'],
      ['A topic1.txt'],
      ['A topic2.txt'],
      ['A topic1.txt'],
      ['A topic2.txt'],
      ['A topic2.txt'],
    ],
    "each commit's changed files, proven at the holder (a merge against its first parent)",
  );

  // git's own call is served by the shell half of the shim alone: with its Node fallback
  // broken, commits still sign and verify.
  const shellOnly = path.join(tmp, 'shell-only-git-sign');
  const r2 = await rig.connect(
    'sh',
    '-c',
    [
      `sed 's/^exec .*git-sign-main.js.*$/exit 99/' "$KEYTETHER_GIT_SIGN" > '${shellOnly}'`,
      `chmod 700 '${shellOnly}'`,
      `echo shell > '${repo}/shell.txt' && ${git} add shell.txt`,
      `${git} -c gpg.program='${shellOnly}' commit -q -S -m 'shell only'`,
      `${git} verify-commit HEAD`,
      // The payload files the shell shim left for the facade are gone with its gpg.
      `ls -a "$GNUPGHOME" > '${tmp}/home-after.txt'`,
    ].join(' && '),
  );
  t.equal(r2.code, 0, r2.stderr);
  const homeAfter = await readFile(path.join(tmp, 'home-after.txt'), 'utf8');
  t.ok(homeAfter.includes('keytether-git-sign'), 'the listing is of the shim’s directory');
  t.notMatch(homeAfter, /\.payload\./, 'no payload file is left behind');
  const last = (await rig.signs()).at(-1);
  t.match(last, {
    verification: 'verified',
    content: {
      summary: 'commit: shell only',
      // The facade read the objects itself, where the shell shim ran git.
      files: { proven: true, count: 1, first: ['A shell.txt'] },
    },
  });
  // The attack of clear-signing.md §1.4, by hand: a payload handed over as the shim would, then
  // a raw PKSIGN whose digest covers that payload as a certification, binding or revocation.
  // The holder must never take the shown payload for what it signs: refused, audited blind.
  const grip = /Keygrip = ([0-9A-F]{40})/.exec(
    (await ws.gpg(['--with-keygrip', '-K', FPR])).stdout.toString(),
  )![1]!;
  const payload = path.join(tmp, 'payload.txt');
  await writeFile(payload, 'looks like release notes\n');
  const now = Math.floor(Date.now() / 1000);
  for (const type of [0x13, 0x18, 0x20]) {
    const suffix = Buffer.from(
      v4HashedSuffix({
        sigType: 0,
        pubkeyAlgo: 22,
        hashAlgo: 8,
        issuerFingerprint: Buffer.from(FPR, 'hex'),
        created: now,
      }),
    );
    suffix[1] = type;
    const digest = createHash('sha256')
      .update(await readFile(payload))
      .update(suffix)
      .digest('hex')
      .toUpperCase();
    const raw = await rig.connect(
      'sh',
      '-c',
      [
        `out=$(gpg-connect-agent --no-autostart "/definqfile CONTENT ${payload}" 'KEYTETHER_CONTENT --kind=file --mode=binary' /bye)`,
        `nonce=$(printf '%s\\n' "$out" | sed -n 's/^D //p')`,
        `gpg-connect-agent --no-autostart "OPTION pinentry-user-data=keytether-req=$nonce" 'SIGKEY ${grip}' 'SETHASH 8 ${digest}' PKSIGN /bye`,
      ].join('; '),
    );
    t.match(raw.stdout, /ERR \d+ Forbidden/, `type 0x${type.toString(16)}: PKSIGN is refused`);
    t.notMatch(raw.stdout, /D \(7:sig-val/, 'and no signature comes back');
    const rec: AuditRec | undefined = (await rig.signs()).at(-1);
    t.match(rec, {
      op: 'sign',
      decision: 'denied',
      verification: 'blind',
      reason: /not a data signature over the payload/,
    });
  }
});
