import { realpathSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { ErrorCode, GpgError, gpgErr } from '../protocol/gpg-error.js';
import { Pinentry, askUntilUnlocked } from '../workstation/pinentry/pinentry.js';
import { makePinentryScript, type PinentryScriptSpec } from './support/pinentry-script.js';
import { testNeeding } from './support/ci.js';

const GRIP = '0123456789ABCDEF0123456789ABCDEF01234567';

/** A plain workstation environment: only what the child needs plus what the test sets. */
function baseEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  return { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: process.env.HOME ?? '/tmp', ...extra };
}

async function setup(t: Test, spec: PinentryScriptSpec) {
  const script = await makePinentryScript(spec);
  t.teardown(() => script.cleanup());
  return script;
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function rejectsCode(p: Promise<unknown>, code: number): Promise<GpgError> {
  try {
    await p;
  } catch (e) {
    if (e instanceof GpgError && e.code === code) return e;
    throw new Error(`expected GpgError ${code}, got ${String(e)}`);
  }
  throw new Error(`expected GpgError ${code}, but it resolved`);
}

t.test('returns the passphrase and sets up the pinentry like gpg-agent', async (t) => {
  const s = await setup(t, { answers: ['correct horse'] });
  const pe = new Pinentry({
    program: s.program,
    env: baseEnv({
      ...s.env,
      DISPLAY: ':5',
      GPG_TTY: '/dev/pts/9',
      TERM: 'xterm-256color',
      LANG: 'de_DE.UTF-8',
    }),
    title: 'keytether',
  });
  const pass = await pe.getPassphrase({ keygrip: GRIP, description: 'Unlock key X' });
  t.equal(pass.toString('utf8'), 'correct horse');
  pass.fill(0);

  const inv = await s.invocations();
  t.equal(inv.length, 1, 'pinentry ran once');
  t.equal(inv[0]!.argv, '--display :5');
  t.equal(inv[0]!.env.DISPLAY, ':5', 'child gets the workstation env');
  const lines = inv[0]!.calls.map((c) => (c.args ? `${c.cmd} ${c.args}` : c.cmd));
  t.ok(lines.includes('OPTION ttyname=/dev/pts/9'));
  t.ok(lines.includes('OPTION ttytype=xterm-256color'));
  t.ok(lines.includes('OPTION lc-ctype=de_DE.UTF-8'));
  t.ok(lines.includes('OPTION lc-messages=de_DE.UTF-8'));
  t.ok(lines.includes('SETTIMEOUT 60'));
  t.ok(lines.includes('SETTITLE keytether'));
  t.ok(lines.includes(`SETKEYINFO n/${GRIP}`));
  t.ok(lines.includes('SETDESC Unlock key X'));
  t.ok(lines.includes('SETPROMPT Passphrase:'));
  t.notOk(
    lines.some((l) => l.startsWith('SETERROR')),
    'no error line on a first try',
  );
  t.same(lines.slice(-2), ['GETPIN', 'BYE'], 'GETPIN last, then BYE');
  t.notOk(isAlive(inv[0]!.pid), 'pinentry exited');
  const log = await readFile(join(s.dir, 'log.jsonl'), 'utf8');
  t.notMatch(log, /correct horse/, 'the passphrase never reached the log');
});

t.test('a passphrase spanning several D lines with escapes is decoded whole', async (t) => {
  const secret = 'p%a\ns\rs+ wörd ' + 'x'.repeat(150) + '%%';
  const s = await setup(t, { answers: [secret], chunk: 16 });
  const pe = new Pinentry({ program: s.program, env: baseEnv(s.env) });
  const pass = await pe.getPassphrase({ keygrip: GRIP, description: 'd' });
  t.equal(pass.toString('utf8'), secret);
});

t.test('Cancel → CANCELED (99)', async (t) => {
  const s = await setup(t, { answers: [null] });
  const pe = new Pinentry({ program: s.program, env: baseEnv(s.env) });
  const e = await rejectsCode(pe.getPassphrase({ keygrip: GRIP, description: 'd' }), 99);
  t.equal(e.code, ErrorCode.CANCELED);
  t.equal(e.source, 4, 'reported as the agent, not the pinentry');
});

t.test("the pinentry's own timeout → TIMEOUT", async (t) => {
  const s = await setup(t, { answers: [{ timeout: true }] });
  const pe = new Pinentry({ program: s.program, env: baseEnv(s.env) });
  await rejectsCode(pe.getPassphrase({ keygrip: GRIP, description: 'd' }), ErrorCode.TIMEOUT);
});

t.test('askUntilUnlocked: wrong then right', async (t) => {
  const s = await setup(t, { answers: ['wrong', 'secret'] });
  const pe = new Pinentry({ program: s.program, env: baseEnv(s.env) });
  const seen: Buffer[] = [];
  const result = await askUntilUnlocked(pe, { keygrip: GRIP, description: 'd' }, async (p) => {
    seen.push(p);
    if (p.toString() !== 'secret') throw gpgErr('BAD_PASSPHRASE');
    return 'unlocked';
  });
  t.equal(result, 'unlocked');
  t.equal(seen.length, 2);
  t.ok(
    seen.every((b) => b.length > 0 && b.every((x) => x === 0)),
    'every passphrase buffer was zeroed',
  );
  const calls = await s.calls();
  t.equal(calls.length, 2, 'pinentry ran twice');
  t.notOk(calls[0]!.some((c) => c.cmd === 'SETERROR'));
  const err = calls[1]!.find((c) => c.cmd === 'SETERROR');
  t.equal(err?.text, 'Bad Passphrase (try 2 of 3)');
});

t.test('askUntilUnlocked: three wrong → BAD_PASSPHRASE', async (t) => {
  const s = await setup(t, { answers: ['a', 'b', 'c', 'never asked'] });
  const pe = new Pinentry({ program: s.program, env: baseEnv(s.env) });
  await rejectsCode(
    askUntilUnlocked(pe, { keygrip: GRIP, description: 'd' }, async () => {
      throw gpgErr('BAD_PASSPHRASE');
    }),
    ErrorCode.BAD_PASSPHRASE,
  );
  const calls = await s.calls();
  t.equal(calls.length, 3);
  t.equal(calls[2]!.find((c) => c.cmd === 'SETERROR')?.text, 'Bad Passphrase (try 3 of 3)');
});

t.test('askUntilUnlocked: cancel or another failure stops at once', async (t) => {
  const s = await setup(t, { answers: ['x', null] });
  const pe = new Pinentry({ program: s.program, env: baseEnv(s.env) });
  await rejectsCode(
    askUntilUnlocked(pe, { keygrip: GRIP, description: 'd' }, async () => {
      throw gpgErr('INV_DATA');
    }),
    ErrorCode.INV_DATA,
  );
  t.equal((await s.calls()).length, 1, 'no retry after a non-passphrase error');
  await rejectsCode(
    askUntilUnlocked(pe, { keygrip: GRIP, description: 'd' }, async () => 1),
    ErrorCode.CANCELED,
  );
});

t.test('a hanging pinentry → TIMEOUT by the deadline, and the child is gone', async (t) => {
  const s = await setup(t, { hang: true });
  // The deadline must cover starting node on a loaded machine before GETPIN is reached.
  const pe = new Pinentry({ program: s.program, env: baseEnv(s.env), timeoutMs: 3000 });
  const started = Date.now();
  const e = await rejectsCode(
    pe.getPassphrase({ keygrip: GRIP, description: 'd' }),
    ErrorCode.TIMEOUT,
  );
  t.ok(Date.now() - started < 10_000, 'returned near the deadline');
  t.notMatch(e.message, /secret/);
  const inv = await s.invocations();
  t.equal(inv.length, 1);
  t.ok(
    inv[0]!.calls.some((c) => c.cmd === 'GETPIN'),
    'it was waiting in GETPIN',
  );
  t.notOk(isAlive(inv[0]!.pid), 'pinentry process was killed and reaped');
});

t.test('aborting the request ends the pinentry → CANCELED', async (t) => {
  const s = await setup(t, { hang: true });
  const pe = new Pinentry({ program: s.program, env: baseEnv(s.env) });
  const ctl = new AbortController();
  const p = pe.getPassphrase({ keygrip: GRIP, description: 'd' }, ctl.signal);
  // Abort once the pinentry is actually showing its dialog, seen through its log.
  await s.waitFor((inv) => inv[0]?.calls.some((c) => c.cmd === 'GETPIN') ?? false);
  ctl.abort();
  await rejectsCode(p, ErrorCode.CANCELED);
  const inv = await s.invocations();
  t.notOk(isAlive(inv[0]!.pid), 'pinentry process is gone');
});

t.test('a request waiting for the pinentry lock can be abandoned', async (t) => {
  const s = await setup(t, { hang: true });
  const pe = new Pinentry({ program: s.program, env: baseEnv(s.env), timeoutMs: 60_000 });
  const first = new AbortController();
  const second = new AbortController();
  const p1 = pe.getPassphrase({ keygrip: GRIP, description: 'first' }, first.signal);
  await s.waitFor((inv) => inv[0]?.calls.some((c) => c.cmd === 'GETPIN') ?? false);
  const p2 = pe.getPassphrase({ keygrip: GRIP, description: 'second' }, second.signal);
  second.abort();
  await rejectsCode(p2, ErrorCode.CANCELED);
  t.equal((await s.invocations()).length, 1, 'the waiting request never started a pinentry');
  first.abort();
  await rejectsCode(p1, ErrorCode.CANCELED);
  t.notOk(isAlive((await s.invocations())[0]!.pid), 'pinentry process is gone');
});

t.test('missing program → NO_PIN_ENTRY naming it', async (t) => {
  const pe = new Pinentry({ program: '/nonexistent/pinentry-nope', env: baseEnv() });
  const e = await rejectsCode(
    pe.getPassphrase({ keygrip: GRIP, description: 'd' }),
    ErrorCode.NO_PIN_ENTRY,
  );
  t.match(e.message, /pinentry program "\/nonexistent\/pinentry-nope" was not found/);
  const e2 = await rejectsCode(pe.confirm({ description: 'ok?' }), ErrorCode.NO_PIN_ENTRY);
  t.match(e2.detail, /pinentry-nope/);
});

t.test('a pinentry that dies mid-request → NO_PIN_ENTRY', async (t) => {
  const s = await setup(t, { answers: [{ crash: true }] });
  const pe = new Pinentry({ program: s.program, env: baseEnv(s.env) });
  const e = await rejectsCode(
    pe.getPassphrase({ keygrip: GRIP, description: 'd' }),
    ErrorCode.NO_PIN_ENTRY,
  );
  t.match(e.message, /exited unexpectedly \(status 3\)/);
});

t.test('CONFIRM: OK → true, Cancel / Not confirmed → false', async (t) => {
  const s = await setup(t, { confirm: ['ok', 'cancel', 'notok'] });
  const pe = new Pinentry({ program: s.program, env: baseEnv(s.env) });
  const req = {
    description: 'Allow signing for ci@build?',
    okLabel: '_Allow',
    cancelLabel: '_Deny',
  };
  t.equal(await pe.confirm(req), true);
  t.equal(await pe.confirm(req), false);
  t.equal(await pe.confirm(req), false);
  const calls = await s.calls();
  t.equal(calls.length, 3);
  const first = calls[0]!;
  t.equal(first.find((c) => c.cmd === 'SETDESC')?.text, 'Allow signing for ci@build?');
  t.equal(first.find((c) => c.cmd === 'SETOK')?.text, '_Allow');
  t.equal(first.find((c) => c.cmd === 'SETCANCEL')?.text, '_Deny');
  t.ok(first.some((c) => c.cmd === 'CONFIRM'));
});

t.test('CONFIRM on a hanging pinentry → TIMEOUT', async (t) => {
  const s = await setup(t, { hang: true });
  const pe = new Pinentry({ program: s.program, env: baseEnv(s.env), timeoutMs: 1500 });
  const started = Date.now();
  await rejectsCode(pe.confirm({ description: 'ok?' }), ErrorCode.TIMEOUT);
  t.ok(Date.now() - started < 10_000, 'returned near the deadline');
  for (const i of await s.invocations()) t.notOk(isAlive(i.pid), 'pinentry process is gone');
});

t.test('description text arrives at the pinentry exactly', async (t) => {
  const s = await setup(t, { answers: ['p', 'p', 'p'] });
  const pe = new Pinentry({ program: s.program, env: baseEnv(s.env) });
  const desc =
    'Please enter the passphrase to unlock the OpenPGP secret key:\n"Jürgen Ø <j@example.org>"\n' +
    '100% sure, a+b %0A stays literal, 鍵 🔑';
  (await pe.getPassphrase({ keygrip: GRIP, description: desc, prompt: 'PIN:' })).fill(0);

  // Terminal control characters from a remote description must not reach a curses screen.
  (await pe.getPassphrase({ keygrip: GRIP, description: 'a\u001b[2Jb\r\nc\u202ed\te' })).fill(0);

  const long = 'é%'.repeat(600);
  (await pe.getPassphrase({ keygrip: GRIP, description: long })).fill(0);

  const calls = await s.calls();
  const descOf = (i: number) => calls[i]!.find((c) => c.cmd === 'SETDESC')!;
  t.equal(descOf(0).text, desc);
  t.equal(calls[0]!.find((c) => c.cmd === 'SETPROMPT')?.text, 'PIN:');
  t.equal(descOf(1).text, 'a\ufffd[2Jb\nc\ufffdd e');
  const longDesc = descOf(2);
  t.ok(Buffer.byteLength(`SETDESC ${longDesc.args}`) <= 1000, 'line fits the Assuan limit');
  t.ok(longDesc.text!.endsWith('…'), 'shortened with an ellipsis');
  t.ok(long.startsWith(longDesc.text!.slice(0, -1)), 'shortened at a character boundary');
});

t.test('one pinentry at a time: concurrent requests are serialised', async (t) => {
  const s = await setup(t, { answers: ['one', 'two', 'three'] });
  const pe1 = new Pinentry({ program: s.program, env: baseEnv(s.env) });
  const pe2 = new Pinentry({ program: s.program, env: baseEnv(s.env) });
  const got = await Promise.all([
    pe1.getPassphrase({ keygrip: GRIP, description: 'first' }),
    pe2.getPassphrase({ keygrip: GRIP, description: 'second' }),
    pe1.getPassphrase({ keygrip: GRIP, description: 'third' }),
  ]);
  t.same(
    got.map((b) => b.toString()),
    ['one', 'two', 'three'],
    'answered in request order',
  );
  const inv = await s.invocations();
  t.same(
    inv.map((i) => i.calls.find((c) => c.cmd === 'SETDESC')?.text),
    ['first', 'second', 'third'],
  );
  for (const i of inv) t.equal(i.calls.at(-1)?.cmd, 'BYE', 'each ran to completion');
  // The log is in time order; serialised runs never interleave.
  const pids = (await readFile(join(s.dir, 'log.jsonl'), 'utf8'))
    .split('\n')
    .filter(Boolean)
    .map((l) => (JSON.parse(l) as { pid: number }).pid);
  const runs = pids.filter((p, k) => k === 0 || pids[k - 1] !== p);
  t.equal(runs.length, 3, 'three contiguous runs in the log');
});

const realPinentry = (() => {
  try {
    return realpathSync('/usr/bin/pinentry');
  } catch {
    return '';
  }
})();

testNeeding(
  t,
  'real pinentry-curses without a terminal fails cleanly',
  !realPinentry.endsWith('pinentry-curses') &&
    'needs /usr/bin/pinentry to be pinentry-curses: apt-get install pinentry-curses, then update-alternatives --set pinentry /usr/bin/pinentry-curses',
  async (t) => {
    // No GPG_TTY/DISPLAY: pinentry-curses talks Assuan on pipes and finds no terminal for GETPIN.
    const pe = new Pinentry({ program: '/usr/bin/pinentry', env: baseEnv(), timeoutMs: 20_000 });
    const started = Date.now();
    const e = await rejectsCode(
      pe.getPassphrase({ keygrip: GRIP, description: 'headless test' }),
      ErrorCode.NO_PIN_ENTRY,
    );
    t.ok(Date.now() - started < 15_000, 'failed well before the deadline');
    t.match(e.message, /\/usr\/bin\/pinentry/);
    t.match(e.message, /no terminal/);
  },
);
