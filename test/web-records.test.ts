// The approval page's audit and keys sections in headless Chromium, against a real agent: the
// audit view's counts equal audit.jsonl (all, per day and decision, and under a filter), a bad
// filter is refused without changing the view, and "lock now" makes the agent forget an unlocked
// key (what `keytether status` shows) — only with the page's single-use action token.

import t from 'tap';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { clearSignRig } from './support/clear-sign-rig.js';
import { launchChromium, screenshot } from './support/browser.js';
import { runCli } from './support/cli.js';

interface Rec {
  time: string;
  decision: string;
}

t.test('audit and unlocked keys on the page', async (t) => {
  const rig = await clearSignRig(t, 'Audrey Audit <audrey@example.org>', { agentArgs: ['--web'] });
  const FPR = rig.fingerprint;
  const env = { KEYTETHER_HOME: rig.home };
  const file = path.join(rig.tmp, 'doc.txt');
  await writeFile(file, 'a document\n');
  // Two shown signatures (allowed) and one blind one, which the default policy refuses.
  for (const n of [1, 2]) {
    const r = await rig.connect(
      'sh',
      '-c',
      `"$KEYTETHER_GIT_SIGN" --batch -u ${FPR} -o '${file}.${n}.sig' --detach-sign '${file}'`,
    );
    t.equal(r.code, 0, r.stderr);
  }
  const blind = await rig.connect('gpg', '--batch', '-u', FPR, '-o', `${file}.b.sig`, '-b', file);
  t.not(blind.code, 0, 'the blind signature is refused');
  const log = (await readFile(path.join(rig.home, 'audit.jsonl'), 'utf8'))
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Rec);
  const count = (d: string) => log.filter((r) => r.decision === d).length;
  t.ok(count('allowed') >= 2 && count('denied') >= 1, 'the log has both decisions');

  const url = /^web: (http:\/\/127\.0\.0\.1:\d+\/#[A-Za-z0-9_-]{43})$/m.exec(rig.holderStderr());
  t.ok(url, 'the agent printed the page address');
  const browser = await launchChromium(t);
  const page = await browser.newPage();
  await page.goto(url![1]!);
  await page.waitForSelector('body[data-state=live]');

  await t.test('the audit view counts what audit.jsonl holds', async (t) => {
    await page.waitForSelector('#audit .matched[data-matched]');
    t.equal(
      await page.$eval('#audit .matched', (e) => e.getAttribute('data-matched')),
      String(log.length),
      'every record matched',
    );
    t.match(await page.textContent('#audit .chain'), /hash chain intact/);
    const day = log[0]!.time.slice(0, 10);
    const row = `#audit tr[data-day="${day}"]`;
    t.equal(await page.textContent(`${row} .total`), String(log.length), 'the day total');
    t.equal(await page.textContent(`${row} .allowed`), String(count('allowed')));
    t.equal(await page.textContent(`${row} .denied`), String(count('denied')));
    t.equal(
      await page.$$eval('#audit table.records tbody tr', (r) => r.length),
      log.length,
      'one row per record',
    );
    await screenshot(page, 'audit');

    await page.selectOption('#audit select[name=decision]', 'denied');
    await page.click('#audit form button[type=submit]');
    await page.waitForSelector(`#audit .matched[data-matched="${count('denied')}"]`);
    t.pass('filtered to the denied records');

    await page.fill('#audit input[name=since]', 'last tuesday');
    await page.click('#audit form button[type=submit]');
    await page.waitForSelector('#audit .problem:not([hidden])');
    t.match(await page.textContent('#audit .problem'), /the filter was refused/);
    t.equal(
      await page.$eval('#audit .matched', (e) => e.getAttribute('data-matched')),
      String(count('denied')),
      'the view is unchanged',
    );
  });

  await t.test('lock now: the agent forgets the unlocked key', async (t) => {
    const row = await page.waitForSelector('#keys tr[data-keygrip]');
    const grip = await row.getAttribute('data-keygrip');
    const status = async () =>
      JSON.parse((await runCli(['status', '--json'], { env })).stdout) as {
        unlocked: { keygrip: string }[];
      };
    t.ok(
      (await status()).unlocked.some((k) => k.keygrip === grip),
      'status lists it unlocked',
    );

    // Without the single-use token the request changes nothing.
    const refused = await page.evaluate(async (keygrip) => {
      const r = await fetch('/api/keys/lock', {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ keygrip }),
      });
      return r.status;
    }, grip);
    t.equal(refused, 403, 'no action token: 403');
    t.ok(
      (await status()).unlocked.some((k) => k.keygrip === grip),
      'still unlocked',
    );

    await page.click(`#keys tr[data-keygrip="${grip}"] button.lock`);
    await page.waitForSelector('#keys td.empty');
    t.same((await status()).unlocked, [], 'status lists no unlocked key');
    await screenshot(page, 'keys');
  });
});
