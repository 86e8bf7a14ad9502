// The approval page in a real browser, end to end: a remote gpg (through `keytether connect`, the
// relay and the holder) waits on a confirmation that the pinentry and the page are both offered;
// clicking on the page decides it, the pinentry is withdrawn, and the audit log names the page.
// Every part is real: gpg, the relay, the agent with --web, the scripted pinentry, Chromium.

import t from 'tap';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { clearSignRig } from './support/clear-sign-rig.js';
import { makePinentryScript } from './support/pinentry-script.js';
import { launchChromium, screenshot } from './support/browser.js';
import { runCli } from './support/cli.js';

/** Resolves once PID has exited (the withdrawn pinentry), within LIMIT ms. */
async function exited(pid: number, limitMs = 10_000): Promise<boolean> {
  const until = performance.now() + limitMs;
  while (performance.now() < until) {
    try {
      process.kill(pid, 0);
    } catch {
      return true;
    }
    await new Promise((r) => setTimeout(r, 25));
  }
  return false;
}

t.test('approving and denying on the page', async (t) => {
  const pin = await makePinentryScript({ confirm: ['hang', 'hang', 'ok', 'hang', 'hang', 'hang'] });
  t.teardown(() => pin.cleanup());
  const rig = await clearSignRig(t, 'Wendy Web <wendy@example.org>', {
    agentArgs: [
      '--web',
      '--pinentry-program',
      pin.program,
      '--policy',
      'front=relay,op=sign,action=confirm',
    ],
    agentEnv: pin.env,
  });
  const FPR = rig.fingerprint;
  const url = /^web: (http:\/\/127\.0\.0\.1:\d+\/#[A-Za-z0-9_-]{43})$/m.exec(rig.holderStderr());
  t.ok(url, 'the agent printed the page address with its one-time secret');
  const browser = await launchChromium(t);
  const page = await browser.newPage();
  await page.goto(url![1]!);
  await page.waitForSelector('body[data-state=live]');
  t.equal(new URL(page.url()).hash, '', 'the secret is gone from the address bar');
  await page.waitForSelector('#pending .empty');

  let n = 0;
  const sign = () => {
    const file = path.join(rig.tmp, `doc${++n}.txt`);
    return {
      file,
      done: writeFile(file, `document ${n}\n`).then(() =>
        rig.connect(
          'sh',
          '-c',
          `"$KEYTETHER_GIT_SIGN" --batch -u ${FPR} -o '${file}.sig' --detach-sign '${file}' && gpg --batch --verify '${file}.sig' '${file}'`,
        ),
      ),
    };
  };
  const confirms = async (count: number) =>
    pin.waitFor(
      (inv) => inv.filter((i) => i.calls.some((c) => c.cmd === 'CONFIRM')).length >= count,
    );

  await t.test('the waiting signature shows on the page; approve lets gpg finish', async (t) => {
    const s = sign();
    const item = await page.waitForSelector('#pending article.request');
    const inv = await confirms(1);
    t.pass('the pinentry was offered the same request');
    const text = (await item.textContent()) ?? '';
    t.match(text, `sign with key ${FPR}`);
    t.match(text, /relay/);
    t.match(text, /file: doc1\.txt \(name reported by the server\)/, 'the content, labelled');
    t.match(text, /sha256 \(verified\)/);
    t.equal(await item.$eval('h3 .label', (e) => e.textContent), 'verified');
    await screenshot(page, 'pending-request');
    await page.click('#pending article.request button.approve');
    const r = await s.done;
    t.equal(r.code, 0, r.stderr);
    t.match(r.stderr, /Good signature from "Wendy Web/);
    t.ok(await exited(inv.at(-1)!.pid), 'the pinentry was withdrawn');
    t.match((await rig.signs()).at(-1), {
      decision: 'confirmed',
      reason: /confirmed at the web page/,
    });
    await page.waitForSelector('#pending .empty');
  });

  await t.test('deny makes gpg fail "Operation cancelled"', async (t) => {
    const s = sign();
    const item = await page.waitForSelector('#pending article.request');
    await confirms(2);
    await page.click('#pending article.request button.deny');
    const r = await s.done;
    t.not(r.code, 0);
    t.match(r.stderr, /Operation cancelled/);
    t.match((await rig.signs()).at(-1), { decision: 'denied', reason: 'denied at the web page' });
    await page.waitForSelector('#pending .empty');
  });

  await t.test('the pinentry answers first: the page drops the request', async (t) => {
    const r = await sign().done;
    t.equal(r.code, 0, r.stderr);
    const rec = (await rig.signs()).at(-1);
    t.match(rec, { decision: 'confirmed' });
    t.notMatch(String(rec?.reason), /web page/, 'decided at the pinentry');
    await page.waitForSelector('#pending .empty');
    t.equal(await page.$$eval('#pending article.request', (a) => a.length), 0);
  });

  await t.test('a commit message with ANSI, bidi and HTML renders inert', async (t) => {
    const repo = path.join(rig.tmp, 'repo');
    const msg = path.join(rig.tmp, 'message.txt');
    await writeFile(
      msg,
      'Fix \x1b[31mRED\x1b[0m in \u202etxt.exe\n\n<img src=x onerror="document.title=1">\n<script>document.title=2</script>\n',
    );
    const git = `git -C '${repo}' -c user.name='Wendy Web' -c user.email=wendy@example.org -c user.signingkey=${FPR}`;
    const committed = rig.connect(
      'sh',
      '-c',
      `git init -q '${repo}' && ${git} commit -q --allow-empty -S -F '${msg}'`,
    );
    const item = await page.waitForSelector('#pending article.request');
    await confirms(4);
    const shown = await item.$eval('pre.content', (e) => e.textContent ?? '');
    t.match(shown, 'commit (verified)', 'the commit is shown as verified content');
    t.match(shown, '<img src=x onerror="document.title=1">', 'markup is shown as text');
    t.match(shown, '<script>document.title=2</script>');
    t.notMatch(shown, /[\x1b\u202e]/, 'no escape or bidi override survives');
    t.match(shown, /\ufffd\[31mRED/, 'the escape is visibly replaced');
    t.equal(
      await page.$$eval('#sections img, #sections script', (els) => els.length),
      0,
      'no element was injected',
    );
    t.equal(await page.title(), 'keytether', 'no injected script ran');
    const png = await screenshot(page, 'commit-inert');
    t.ok(png.length > 1000, 'screenshot taken');
    await page.click('#pending article.request button.deny');
    const r = await committed;
    t.not(r.code, 0, 'the denied commit was not made');
    t.match((await rig.signs()).at(-1), {
      decision: 'denied',
      verification: 'verified',
      content: { kind: 'git-commit' },
    });
  });
  await t.test('keytether approve lists and answers it; the page drops it', async (t) => {
    const s = sign();
    await page.waitForSelector('#pending article.request');
    await confirms(5);
    const env = { KEYTETHER_HOME: rig.home };
    const listed = await runCli(['approve'], { env });
    t.equal(listed.code, 0, listed.stderr);
    const id = /^([0-9a-f]{12}) {2}sign with key (\S+) \(verified\) for relay, token ktt_/m.exec(
      listed.stdout,
    );
    t.ok(id, listed.stdout);
    t.equal(id?.[2], FPR);
    t.match(listed.stdout, /process: .*\(reported\)/);
    const answered = await runCli(['approve', id![1]!], { env });
    t.equal(answered.code, 0, answered.stderr);
    t.equal((await s.done).code, 0);
    await page.waitForSelector('#pending .empty');
    t.match((await rig.signs()).at(-1), { reason: /confirmed at the command line/ });
    const again = await runCli(['deny', id![1]!], { env });
    t.equal(again.code, 1, 'a late answer is refused');
    t.match(again.stderr, new RegExp(`no request ${id![1]} is waiting`));
  });

  await t.test('"for 10 minutes" skips the next prompt', async (t) => {
    const s = sign();
    const item = await page.waitForSelector('#pending article.request');
    await confirms(6);
    t.equal(
      await item.$eval('select.minutes', (e) => (e as unknown as { value: string }).value),
      '10',
    );
    await page.click('#pending article.request button.approve-for');
    t.equal((await s.done).code, 0);
    const before = (await pin.invocations()).length;
    const next = await sign().done;
    t.equal(next.code, 0, next.stderr);
    t.match(next.stderr, /Good signature/);
    t.equal((await pin.invocations()).length, before, 'no pinentry was started');
    t.match((await rig.signs()).at(-1), { decision: 'allowed' });
  });

  await t.test('fronts, relays and tokens show; revoke on the page revokes', async (t) => {
    await page.waitForSelector('table.relays td:text("connected")');
    t.match(await page.textContent('table.relays'), rig.url.replace(/\/$/, ''));
    t.match(await page.textContent('table.fronts'), /relay/);
    const row = await page.waitForSelector('table.tokens tr[data-id^="ktt_"]');
    const tokenId = await row.getAttribute('data-id');
    t.ok(tokenId, "the rig's token is listed");
    await screenshot(page, 'overview');
    await page.click(`table.tokens tr[data-id="${tokenId}"] button.revoke`);
    await page.waitForSelector(`table.tokens tr[data-id="${tokenId}"] td:text("revoked")`);
    const listed = await runCli(['token', 'list', '--json'], { env: { KEYTETHER_HOME: rig.home } });
    t.match(JSON.parse(listed.stdout), [{ id: tokenId, revoked: true }]);
    const r = await sign().done;
    t.not(r.code, 0, 'the revoked token signs nothing');
  });
});
