// Clear signing end to end, every part real: a holder with gpg's default key (a sign+certify
// primary), the relay, `keytether connect -- CMD` on the "server", stock gpg and git. Blind
// signatures by the certify-capable key are refused (the attack of the security review: a new
// self-signed user id); git signing through `keytether git-sign` is verified at the holder, which
// audits what was signed; gpg --verify and git verify-commit pass through the shim to gpg.

import t from 'tap';
import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { clearSignRig } from './support/clear-sign-rig.js';

t.test('clear signing through the relay', async (t) => {
  const rig = await clearSignRig(t, 'Cora Clear <cora@example.org>');
  const { tmp, connect } = rig;
  const FPR = rig.fingerprint;
  const audit = rig.signs;
  const holder = { stderr: rig.holderStderr };

  const file = path.join(tmp, 'release.tar');
  await writeFile(file, 'release 1.0 contents\n');

  await t.test('a blind signature by a certify-capable key is refused', async (t) => {
    const r = await connect('gpg', '--batch', '-u', FPR, '-o', `${file}.sig`, '-b', file);
    t.not(r.code, 0, 'gpg got no signature');
    t.match(r.stderr, /clear-sign required/, 'the facade says why');
    t.match(r.stderr, /keytether git-sign/, '… and what to do');
    const rec = (await audit()).at(-1);
    t.match(rec, { decision: 'denied', verification: 'blind' });
    t.match(
      holder.stderr(),
      new RegExp(
        `^\\d\\d:\\d\\d:\\d\\d relay, token ktt_[0-9a-f]{16}, relay says from [^:]+: sign key ${FPR} \\(blind\\): denied — clear-sign required: `,
        'm',
      ),
      "the holder's terminal shows the refusal and why, one line",
    );
  });

  await t.test('the review attack: a new user id through the token fails', async (t) => {
    const r = await connect(
      'gpg',
      '--batch',
      '--quick-add-uid',
      FPR,
      'Alice <alice@attacker.example>',
    );
    t.not(r.code, 0, 'no self-signature was made');
    t.match((await audit()).at(-1), { decision: 'denied', verification: 'blind' });
  });

  await t.test('a file signed through the shim is verified and audited', async (t) => {
    const r = await connect(
      'sh',
      '-c',
      `"$KEYTETHER_GIT_SIGN" --batch -u ${FPR} -o '${file}.sig' --detach-sign '${file}' && gpg --batch --verify '${file}.sig' '${file}'`,
    );
    t.equal(r.code, 0, r.stderr);
    t.match(r.stderr, /Good signature from "Cora Clear/);
    const rec = (await audit()).at(-1);
    t.match(rec, { decision: 'allowed', verification: 'verified' });
    t.match(rec?.content, { kind: 'file', bytes: 21, summary: /^file release\.tar, sha256 / });
  });

  await t.test('a 3 MiB file crosses the tunnel in pieces and verifies', async (t) => {
    const big = path.join(tmp, 'big.bin');
    await writeFile(big, randomBytes(3 * 1024 * 1024 + 17));
    const r = await connect(
      'sh',
      '-c',
      `"$KEYTETHER_GIT_SIGN" --batch -u ${FPR} -o '${big}.sig' -b '${big}' && gpg --batch --verify '${big}.sig' '${big}'`,
    );
    t.equal(r.code, 0, r.stderr);
    t.match((await audit()).at(-1), {
      verification: 'verified',
      content: { kind: 'file', bytes: 3 * 1024 * 1024 + 17 },
    });
  });

  await t.test('SHA-1 through the shim is still blind, and refused', async (t) => {
    const r = await connect(
      'sh',
      '-c',
      `"$KEYTETHER_GIT_SIGN" --batch --digest-algo SHA1 -u ${FPR} -o '${file}.sha1.sig' -b '${file}'`,
    );
    t.not(r.code, 0);
    t.match((await audit()).at(-1), {
      decision: 'denied',
      verification: 'blind',
      reason: /too weak to bind/,
    });
  });

  await t.test(
    'git commit -S and tag -s sign verified; verify-commit passes through',
    async (t) => {
      const repo = path.join(tmp, 'repo');
      const git = `git -C '${repo}' -c user.name='Cora Clear' -c user.email=cora@example.org -c user.signingkey=${FPR}`;
      const r = await connect(
        'sh',
        '-c',
        [
          `git init -q '${repo}'`,
          `${git} commit -q --allow-empty -S -m 'Release 1.0' -m 'Signed through the shim.'`,
          `${git} verify-commit HEAD`,
          `${git} tag -s v1.0 -m 'Version 1.0'`,
          `${git} verify-tag v1.0`,
        ].join(' && '),
      );
      t.equal(r.code, 0, r.stderr);
      t.match(r.stderr, /Good signature from "Cora Clear/);
      const recs = (await audit()).slice(-2);
      t.match(recs[0], {
        verification: 'verified',
        content: { kind: 'git-commit', summary: 'commit: Release 1.0' },
      });
      t.match(recs[1], {
        verification: 'verified',
        content: { kind: 'git-tag', summary: /^tag v1\.0: Version 1\.0/ },
      });
    },
  );

  await t.test('git commit -S: the audit shows the changed files, proven', async (t) => {
    const repo = path.join(tmp, 'repo-files');
    const git = `git -C '${repo}' -c user.name='Cora Clear' -c user.email=cora@example.org -c user.signingkey=${FPR}`;
    const r = await connect(
      'sh',
      '-c',
      [
        `git init -q '${repo}'`,
        `mkdir -p '${repo}/src/lib' && echo one > '${repo}/README' && echo old > '${repo}/src/old.ts'`,
        `${git} add -A && ${git} commit -q -S -m 'First'`,
        `echo two > '${repo}/README' && echo deep > '${repo}/src/lib/deep.ts' && rm '${repo}/src/old.ts'`,
        `${git} add -A && ${git} commit -q -S -m 'Second'`,
        `${git} verify-commit HEAD`,
      ].join(' && '),
    );
    t.equal(r.code, 0, r.stderr);
    const [first, second] = (await audit()).slice(-2);
    t.match(first, {
      verification: 'verified',
      content: { summary: 'commit: First', files: { proven: true, count: 2 } },
    });
    t.match(second, {
      decision: 'allowed',
      verification: 'verified',
      content: {
        kind: 'git-commit',
        summary: 'commit: Second',
        files: { proven: true, count: 3, first: ['M README', 'A src/lib/deep.ts', 'D src/old.ts'] },
      },
    });
  });

  await t.test(
    'control and bidi characters in a commit message never reach the record',
    async (t) => {
      const repo = path.join(tmp, 'repo2');
      const git = `git -C '${repo}' -c user.name='Cora Clear' -c user.email=cora@example.org -c user.signingkey=${FPR}`;
      const r = await connect(
        'sh',
        '-c',
        `git init -q '${repo}' && ${git} commit -q --allow-empty -S -m "$(printf 'Fix \\033[2J\\342\\200\\256gnp.exe')"`,
      );
      t.equal(r.code, 0, r.stderr);
      const rec = (await audit()).at(-1);
      t.match(rec, { verification: 'verified', content: { kind: 'git-commit' } });
      t.match(rec?.content?.summary, /^commit: Fix \ufffd\[2J\ufffdgnp\.exe$/);
    },
  );
});
