// What a confirmation shows must reach the person: a description over Assuan's 1000 bytes is
// refused by every pinentry ("Line passed to IPC too long"), and one taller than an 80×24
// terminal by pinentry-curses ("Screen or window too small"); both would turn a prompt into a
// refusal nobody saw. Properties over arbitrary text, then the real pinentry-curses in a real
// 80×24 tmux pane, driven by keys as a user would.

import t from 'tap';
import fc from 'fast-check';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { displayText } from '../protocol/display-text.js';
import {
  DIALOG_ROWS,
  escapedBytes,
  fitDialogText,
  wrappedRows,
} from '../workstation/pinentry/dialog-fit.js';
import { plusPercentEscape } from '../workstation/backends/requester-text.js';
import { Pinentry } from '../workstation/pinentry/pinentry.js';
import { testNeeding } from './support/ci.js';

const execFileP = promisify(execFile);
const BUDGET = 1000 - 'SETDESC '.length;
const rowsOf = (s: string) => s.split('\n').reduce((n, l) => n + wrappedRows(l), 0);

// Text as a server can shape it: long lines, many lines, wide characters, controls, bidi.
const piece = fc.oneof(
  fc.string({ unit: 'grapheme', maxLength: 120 }),
  fc.string({ unit: 'binary', maxLength: 40 }),
  fc.constantFrom('\n', '\r\n', '%', ' ', '日本語', '😀', '\u202e', '\u001b[2J', 'x'.repeat(300)),
);
const text = fc.array(piece, { maxLength: 60 }).map((a) => a.join(''));

t.test('the fitted text always fits: bytes, rows, sanitised', async (t) => {
  fc.assert(
    fc.property(text, fc.constantFrom(DIALOG_ROWS.confirm, DIALOG_ROWS.passphrase), (s, rows) => {
      const out = fitDialogText(s, BUDGET, rows);
      if (escapedBytes(out) > BUDGET) return false;
      if (rowsOf(out) > rows) return false;
      if (out !== displayText(out)) return false;
      // Text that fits is shown whole; text that does not says that something is left out.
      const clean = displayText(s);
      if (escapedBytes(clean) <= BUDGET && rowsOf(clean) <= rows) return out === clean;
      return /not shown\)$/.test(out) || out.endsWith('…');
    }),
    { numRuns: 2000 },
  );
  t.pass('2000 arbitrary texts');
});

t.test('lines are kept in order and whole; the rest is counted', async (t) => {
  const lines = ['question?', '', ...Array.from({ length: 40 }, (_, i) => `field ${i}`)];
  const out = fitDialogText(lines.join('\n'), BUDGET, DIALOG_ROWS.confirm).split('\n');
  t.equal(out.length, DIALOG_ROWS.confirm);
  t.same(out.slice(0, -1), lines.slice(0, DIALOG_ROWS.confirm - 1));
  t.equal(out.at(-1), `(… ${lines.length - (DIALOG_ROWS.confirm - 1)} more lines not shown)`);
  const question = 'Q '.repeat(2000);
  const cut = fitDialogText(`${question}\nsecond`, BUDGET, DIALOG_ROWS.confirm);
  t.match(cut, /^(Q )+Q?…\n\(… 1 more line not shown\)$/, 'a too long question is cut, not lost');
});

t.test("gpg-agent's SETKEYDESC: never over 900 bytes, never half a character", async (t) => {
  fc.assert(
    fc.property(text, (s) => {
      const esc = plusPercentEscape(s);
      if (esc.length > 900 || /\s/.test(esc)) return false;
      const bytes = Buffer.from(
        esc
          .replace(/\+/g, ' ')
          .replace(/%([0-9A-F]{2})/g, (_m, h: string) => String.fromCharCode(parseInt(h, 16))),
        'latin1',
      );
      // Valid UTF-8 all the way: a cut never splits a multi-byte character.
      return !bytes.toString('utf8').includes('\ufffd') || displayText(s).includes('\ufffd');
    }),
    { numRuns: 1000 },
  );
  t.pass('1000 arbitrary texts');
});

async function tmux(...args: string[]): Promise<string> {
  return (await execFileP('tmux', args, { encoding: 'utf8' })).stdout;
}

/** Polls the pane until it shows RE (pinentry-curses draws asynchronously) or 20 s pass. */
async function paneShows(session: string, re: RegExp): Promise<string> {
  const deadline = Date.now() + 20_000;
  for (;;) {
    const screen = await tmux('capture-pane', '-p', '-t', session);
    if (re.test(screen) || Date.now() > deadline) return screen;
    await new Promise((r) => setImmediate(r));
  }
}

function lacking(): string | false {
  for (const [program, pkg] of [
    ['tmux', 'tmux'],
    ['pinentry-curses', 'pinentry-curses'],
  ] as const) {
    const found = (process.env.PATH ?? '')
      .split(':')
      .some((d) => d && existsSync(path.join(d, program)));
    if (!found) return `needs ${program}: apt-get install ${pkg}`;
  }
  return false;
}

testNeeding(
  t,
  'real pinentry-curses in an 80×24 tmux pane shows the longest prompt',
  lacking(),
  async (t) => {
    const session = `kt-fit-${process.pid}`;
    await tmux('new-session', '-d', '-s', session, '-x', '80', '-y', '24', 'sleep 3600');
    t.teardown(() => tmux('kill-session', '-t', session).catch(() => {}));
    const tty = (await tmux('display', '-p', '-t', session, '#{pane_tty}')).trim();
    const pinentry = new Pinentry({
      program: 'pinentry-curses',
      env: { PATH: process.env.PATH, GPG_TTY: tty, TERM: 'xterm', LC_ALL: 'C.UTF-8' },
      timeoutMs: 60_000,
    });
    const description = [
      `keytether: allow ssh build-${'very-long-host-name-'.repeat(3)}.example.org (claims user=deploy, cmd=git commit -S, pid=4242) to sign with key 3D640B8EC37A93BFC99AB46C7BFEBDF0367F15E4?`,
      '',
      'commit (verified): Fix the release script so that it signs tags again',
      ...Array.from({ length: 30 }, (_, i) => `  M src/module-${i}/${'deep/'.repeat(10)}file.ts`),
    ].join('\n');

    // Many short lines: under 1000 bytes, but taller than the screen unless fitted.
    const tall = [
      'keytether: allow ssh build to sign with key 3D640B8EC37A93BFC99AB46C7BFEBDF0367F15E4?',
      '',
      ...Array.from({ length: 40 }, (_, i) => `  A f${i}.ts`),
    ].join('\n');
    const tallAnswer = pinentry.confirm({ description: tall });
    const tallScreen = await paneShows(session, /<OK>/);
    t.match(tallScreen, /A f0\.ts[^]*more lines not shown\)/, 'a tall prompt is shown, shortened');
    await tmux('send-keys', '-t', session, 'Enter');
    t.equal(await tallAnswer, true);

    const answer = pinentry.confirm({ description });
    const screen = await paneShows(session, /<OK>/);
    t.match(
      screen,
      /keytether: allow ssh[^]*to sign with key[^]*3D640B8E/,
      'the question is on screen',
    );
    t.match(screen, /more lines not shown\)/, 'what did not fit is said');
    t.match(screen, /<OK>.*<Cancel>/, 'with both buttons');
    await tmux('send-keys', '-t', session, 'Enter');
    t.equal(await answer, true, 'Enter on OK confirms');

    const pass = pinentry.getPassphrase({ keygrip: 'A'.repeat(40), description });
    const entry = await paneShows(session, /Passphrase:/);
    t.match(entry, /keytether: allow ssh/);
    await tmux('send-keys', '-t', session, '-l', 'typed secret');
    await tmux('send-keys', '-t', session, 'Enter');
    const got = await pass;
    t.equal(got.toString(), 'typed secret', 'the passphrase typed in the pane comes back');
    got.fill(0);
  },
);
