// Creating a token on the approval page, in headless Chromium against a real relay and holder:
// the token the page shows once signs through `keytether connect` on the relay, its scope is what
// the form asked for (as `keytether token list` shows it), the page refuses what `keytether token
// create` refuses with the same sentence and records nothing, the secret is nowhere once the user
// pressed Done, and creating needs the page's single-use action token.

import t from 'tap';
import type { ChildProcess } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { exportSecretKey, generateKey, makeGnupgHome } from './support/gnupg.js';
import { runCli, spawnCli, waitForLine } from './support/cli.js';
import { ALLOW_BLIND_FLAG } from './support/blind-signing.js';
import { launchChromium, screenshot } from './support/browser.js';

interface Listed {
  id: string;
  keys: string[];
  ops: string[];
  expires: string;
  uses: number;
  maxUses: number | null;
  label: string | null;
  revoked: boolean;
}

function collectStderr(child: ChildProcess): () => string {
  let err = '';
  child.stderr!.on('data', (b: Buffer) => (err += b.toString()));
  return () => err;
}

t.test('a token made on the page signs through the relay, and is shown once', async (t) => {
  const ws = await makeGnupgHome();
  t.teardown(() => ws.cleanup());
  const key = await generateKey(ws, {
    uid: 'Paige Token <paige@example.org>',
    algo: 'ed25519',
    usage: 'sign,cert',
  });
  const FPR = key.fingerprint;
  const tmp = await mkdtemp('/tmp/ktwebtok-');
  t.teardown(() => rm(tmp, { recursive: true, force: true }));
  const home = path.join(tmp, 'home');
  const env = { KEYTETHER_HOME: home };
  const secretFile = path.join(tmp, 'secret.gpg');
  await writeFile(secretFile, await exportSecretKey(ws, FPR), { mode: 0o600 });
  t.equal((await runCli(['keys', 'import', secretFile], { env })).code, 0);
  await rm(secretFile);
  const verifier = await makeGnupgHome();
  t.teardown(() => verifier.cleanup());
  const pub = await ws.gpg(['--batch', '--armor', '--export', FPR]);
  t.equal((await verifier.gpg(['--batch', '--import'], { input: pub.stdout })).code, 0);

  const relay = await spawnCli(['relay', '--listen', '127.0.0.1:0']);
  t.teardown(() => void relay.kill('SIGKILL'));
  const url = (await waitForLine(relay.stdout!, /^listening: (\S+)$/, 30_000))[1]!;
  const holder = await spawnCli(
    ['agent', ...ALLOW_BLIND_FLAG, '--socket', path.join(tmp, 'S.local'), '--relay', url, '--web'],
    { env },
  );
  t.teardown(() => void holder.kill('SIGKILL'));
  const holderErr = collectStderr(holder);
  const connected = waitForLine(holder.stderr!, /^relay connected: /, 30_000);
  connected.catch(() => {});
  await waitForLine(holder.stdout!, /^ready: /, 30_000).catch((e: Error) => {
    throw new Error(`${e.message}; stderr: ${holderErr()}`);
  });
  await connected;
  const pageUrl = /^web: (http:\/\/127\.0\.0\.1:\d+\/#[A-Za-z0-9_-]{43})$/m.exec(holderErr());
  t.ok(pageUrl, 'the agent printed the page address');

  const listed = async () =>
    JSON.parse((await runCli(['token', 'list', '--json'], { env })).stdout) as Listed[];
  const browser = await launchChromium(t);
  const page = await browser.newPage();
  await page.goto(pageUrl![1]!);
  await page.waitForSelector('body[data-state=live]');
  // The form suggests the keys a token may name.
  await page.waitForSelector(`#tokens datalist option[value="${FPR}"]`, { state: 'attached' });

  const form = '#tokens form.token-create';
  const submit = async (fields: Record<string, string>) => {
    for (const [name, value] of Object.entries(fields)) {
      await page.fill(`${form} input[name=${name}]`, value);
    }
    await page.click(`${form} button.create`);
  };
  const refusal = async (fields: Record<string, string>) => {
    const before = (await listed()).length;
    await page.$eval('#tokens .problem', (e) => {
      e.setAttribute('hidden', '');
      e.textContent = '';
    });
    await submit(fields);
    await page.waitForSelector('#tokens .problem:not([hidden])');
    const text = (await page.textContent('#tokens .problem')) ?? '';
    t.equal((await listed()).length, before, `nothing issued for ${JSON.stringify(fields)}`);
    t.equal(await page.$$eval('#tokens .issued', (e) => e.length), 0, 'no token shown');
    return text;
  };

  await t.test('the page refuses what token create refuses, in its words', async (t) => {
    const cli = await runCli(['token', 'create', '--key', FPR, '--relay', url, '--ttl', '90d'], {
      env,
    });
    t.not(cli.code, 0);
    const sentence = /keytether token create: (.*)/.exec(cli.stderr)?.[1];
    t.ok(sentence, cli.stderr);
    t.equal(await refusal({ key: FPR, ttl: '90d' }), sentence, 'the same sentence as the CLI');
    t.match(
      await refusal({ key: FPR, ttl: 'forever' }),
      /^'forever' is not a duration; use e.g. 90s, 15m, 1h or 2d$/,
      'a bad lifetime',
    );
    t.match(
      await refusal({ key: 'F'.repeat(40), ttl: '1h' }),
      /^no key F{40} in the keystore/,
      'an unknown key',
    );
    t.equal(
      await refusal({ key: '', ttl: '1h' }),
      'name at least one key for the token (--key)',
      'no key',
    );
    t.match(
      await refusal({ key: FPR, maxUses: '0' }),
      /^--max-uses: '0' is not a whole number of at least 1/,
    );
    t.match(
      await refusal({ key: FPR, maxUses: '', label: 'evil\u202elabel' }),
      /^the label must not contain control characters/,
    );
  });

  let token = '';
  let id = '';
  await t.test('create: the scope asked for, the secret shown once', async (t) => {
    await page.fill(`${form} input[name=label]`, '');
    await submit({ key: FPR, ttl: '2h', maxUses: '3', label: 'page release', relay: '' });
    await page.waitForSelector('#tokens .issued textarea');
    token = await page.$eval(
      '#tokens .issued textarea',
      (e) => (e as unknown as { value: string }).value,
    );
    t.match(token, /^kt1\./, 'the page shows the token');
    id = (await page.getAttribute('#tokens .issued', 'data-id')) ?? '';
    t.match(id, /^ktt_[0-9a-f]{16}$/);
    t.match(
      await page.textContent('#tokens .issued'),
      new RegExp(`relay ${url.replace(/[.]/g, '\\.')} is the one the running agent`),
      'it says which relay the token is for',
    );
    await screenshot(page, 'token-created');
    const row = (await listed()).find((r) => r.id === id);
    t.match(row, { keys: [FPR], ops: ['sign'], maxUses: 3, label: 'page release', uses: 0 });
    const ttl = Date.parse(row!.expires) - Date.now();
    t.ok(ttl > 7_100_000 && ttl <= 7_200_000, `expires in 2h (${ttl} ms)`);
    await page.waitForSelector(`#tokens tr[data-id="${id}"]`);

    await page.click('#tokens .issued button.done');
    await page.waitForSelector('#tokens .issued', { state: 'detached' });
    const secret = token.split('.')[3]!;
    t.ok(secret.length > 20, 'the token has a secret part');
    t.notOk((await page.content()).includes(secret), 'Done removes the secret from the page');
    await page.reload();
    await page.waitForSelector(`#tokens tr[data-id="${id}"]`);
    t.notOk((await page.content()).includes(secret), 'a reload does not show it again');
    const api = await page.evaluate(async () => (await fetch('/api/tokens')).text());
    t.notOk(api.includes(secret), 'the token list answer does not carry it');
    t.notOk(holderErr().includes(secret), 'the agent never printed it');
  });

  await t.test('the token signs through the relay', async (t) => {
    const file = path.join(tmp, 'release.txt');
    await writeFile(file, 'release 2.0\n');
    const sig = `${file}.sig`;
    const r = await runCli(
      ['connect', '--relay', url, '--', 'gpg', '--batch', '-u', FPR, '-o', sig, '-b', file],
      { env: { KEYTETHER_TOKEN: token } },
    );
    t.equal(r.code, 0, r.stderr);
    const v = await verifier.gpg(['--batch', '--verify', sig, file]);
    t.match(v.stderr, /Good signature from "Paige Token/);
    t.equal((await listed()).find((x) => x.id === id)?.uses, 1, 'one of its 3 uses counted');
  });

  await t.test('creating needs the single-use action token', async (t) => {
    const before = (await listed()).length;
    const status = await page.evaluate(async (fpr) => {
      const body = JSON.stringify({ key: [fpr], ops: 'sign' });
      const headers = { 'content-type': 'application/json' };
      const none = await fetch('/api/tokens', { method: 'POST', headers, body });
      const csrf = ((await (await fetch('/api/csrf')).json()) as { token: string }).token;
      const withToken = { ...headers, 'x-keytether-csrf': csrf };
      const first = await fetch('/api/tokens', { method: 'POST', headers: withToken, body });
      const replay = await fetch('/api/tokens', { method: 'POST', headers: withToken, body });
      const unknown = await fetch('/api/tokens', {
        method: 'POST',
        headers: {
          ...headers,
          'x-keytether-csrf': ((await (await fetch('/api/csrf')).json()) as { token: string })
            .token,
        },
        body: JSON.stringify({ key: [fpr], ops: 'sign', admin: true }),
      });
      return [none.status, first.status, replay.status, unknown.status];
    }, FPR);
    t.same(status, [403, 200, 403, 400], 'no token 403, a token once, a replay 403, junk 400');
    t.equal((await listed()).length, before + 1, 'only the one with a fresh token was issued');
  });

  await t.test('revoke on the page: the token stops working', async (t) => {
    await page.click(`#tokens tr[data-id="${id}"] button.revoke`);
    await page.waitForSelector(`#tokens tr[data-id="${id}"] button.revoke`, {
      state: 'detached',
    });
    t.equal((await listed()).find((x) => x.id === id)?.revoked, true);
    const file = path.join(tmp, 'after.txt');
    await writeFile(file, 'after\n');
    const r = await runCli(
      [
        'connect',
        '--relay',
        url,
        '--',
        'gpg',
        '--batch',
        '-u',
        FPR,
        '-o',
        `${file}.sig`,
        '-b',
        file,
      ],
      { env: { KEYTETHER_TOKEN: token } },
    );
    t.not(r.code, 0, 'a revoked token signs nothing');
  });
});
