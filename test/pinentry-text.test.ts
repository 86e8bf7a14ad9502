// One sanitiser for every text that reaches a person: what a server writes in SETKEYDESC (and a
// relay in its claims) must not drive a terminal or reorder a dialog, whichever pinentry shows it.
// The gpg-agent back end case is the one that slipped before: gpg-agent leaves %XX escapes for its
// pinentry to decode, so a raw ESC or U+202E arrived in the dialog intact.

import t from 'tap';
import { randomBytes } from 'node:crypto';
import { displayField, displayText, isDisplaySafeLine } from '../protocol/display-text.js';
import { GpgAgentBackend } from '../workstation/backends/index.js';
import { generateKey, makeGnupgHome } from './support/gnupg.js';
import { makePinentryScript } from './support/pinentry-script.js';

const HOSTILE =
  'line1\u001b[2J\u001b]52;c;ZXZpbA==\u0007\r\nline2\u202eexe.txt\u2028forged\u200b\u0085end';
const UNSAFE = /[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u200b-\u200f\u2028-\u202e\u2066-\u2069]/;

t.test('displayText keeps lines, replaces controls and format characters', async (t) => {
  const s = displayText(HOSTILE);
  t.notMatch(s, UNSAFE);
  t.match(s, /^line1\ufffd\[2J\ufffd\]52;c;ZXZpbA==\ufffd\nline2\ufffdexe\.txt\ufffdforged/);
  t.equal(displayText('a\tb\rc'), 'a b\nc');
  t.equal(displayText('naïve — 日本 ✓'), 'naïve — 日本 ✓', 'ordinary text is untouched');
});

t.test('displayField is one line, capped by code points', async (t) => {
  t.notMatch(displayField(HOSTILE, 500), /[\n\r]/);
  t.notMatch(displayField(HOSTILE, 500), UNSAFE);
  const long = displayField('😀'.repeat(100), 10);
  t.equal([...long].length, 10);
  t.ok(long.endsWith('…'));
  t.notOk(isDisplaySafeLine('label\u202e'), 'a bidi override is refused where values are refused');
  t.ok(isDisplaySafeLine('release key 2026'));
});

t.test("gpg-agent back end: gpg-agent's pinentry never sees the raw text", async (t) => {
  const PASS = 'pinentry text pass';
  const pin = await makePinentryScript({ answers: [PASS] });
  t.teardown(() => pin.cleanup());
  const wrapper = await pin.standaloneProgram();
  const ws = await makeGnupgHome({ agentConf: [`pinentry-program ${wrapper}`] });
  t.teardown(() => ws.cleanup());
  const key = await generateKey(ws, {
    uid: 'Tess Text <tess@example.org>',
    algo: 'ed25519',
    usage: 'sign',
    passphrase: PASS,
  });
  const backend = await GpgAgentBackend.open({ gnupgHome: ws.home });
  t.teardown(() => backend.close());
  const entry = (await backend.inventory()).keys.find((k) => k.keygrip === key.keygrip);
  if (!entry) throw new Error('the key is not in the inventory');
  const op = await backend.open(entry, {
    description: HOSTILE,
    requester: { front: 'ssh', host: 'srv\u001b[31m', user: 'u\u202e', command: 'gpg' },
    signal: undefined,
  });
  t.equal((await op.sign(8, randomBytes(32))).length > 0, true, 'the signature was made');
  const desc = (await pin.invocations())
    .flatMap((i) => i.calls)
    .find((c) => c.cmd === 'SETDESC')?.text;
  t.ok(desc, "gpg-agent's pinentry showed a description");
  t.notMatch(desc!, UNSAFE, 'no control, bidi or zero-width character reached it');
  t.match(desc!, /keytether: request from ssh srv\ufffd\[31m \(claims user=u\ufffd, cmd=gpg\)/);
  t.match(desc!, /line1\ufffd\[2J/, 'what was there is visibly replaced');
  t.match(desc!, /\nline2/, 'line breaks survive');
});
