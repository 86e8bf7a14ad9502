// The approval page over TLS (`--web-listen ADDR:PORT --web-tls-cert F --web-tls-key F`), end to
// end: a throwaway self-signed certificate made by openssl, the agent listening on the port it was
// given, Chromium opening the printed https address. The session cookie must be Secure as well as
// HttpOnly and SameSite=Strict, plain HTTP to the port gets nothing, the Host and Origin checks
// hold with the https origin, and a remote gpg waiting on a confirmation finishes once the page
// approves. Every part is real: openssl, gpg, the relay, the agent, the scripted pinentry, Chromium.

import t from 'tap';
import { execFile } from 'node:child_process';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import tls from 'node:tls';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { clearSignRig } from './support/clear-sign-rig.js';
import { makePinentryScript } from './support/pinentry-script.js';
import { launchChromium, screenshot } from './support/browser.js';

const execFileP = promisify(execFile);

/** A port nothing listens on right now (the kernel's pick, released at once). */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
  });
}

interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

/** One HTTPS request that trusts only CA (the test's certificate). */
function send(
  port: number,
  ca: Buffer,
  method: string,
  p: string,
  headers: Record<string, string> = {},
  body?: string,
): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = https.request(
      {
        host: '127.0.0.1',
        port,
        method,
        path: p,
        ca,
        // The certificate names 127.0.0.1 whatever Host header a test sends.
        checkServerIdentity: (_host, cert) => tls.checkServerIdentity('127.0.0.1', cert),
        headers: { host: `127.0.0.1:${port}`, ...headers },
      },
      (res) => {
        let data = '';
        res.on('data', (d: Buffer) => (data += d.toString()));
        res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: data }));
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

t.test('the page over TLS on --web-listen', async (t) => {
  const certDir = await mkdtemp('/tmp/kt-webtls-');
  t.teardown(() => rm(certDir, { recursive: true, force: true }));
  const certFile = path.join(certDir, 'cert.pem');
  const keyFile = path.join(certDir, 'key.pem');
  await execFileP('/usr/bin/openssl', [
    'req',
    '-x509',
    '-newkey',
    'ec',
    '-pkeyopt',
    'ec_paramgen_curve:prime256v1',
    '-nodes',
    '-days',
    '1',
    '-subj',
    '/CN=127.0.0.1',
    '-addext',
    'subjectAltName=IP:127.0.0.1',
    '-keyout',
    keyFile,
    '-out',
    certFile,
  ]);
  const ca = await readFile(certFile);
  const port = await freePort();

  const pin = await makePinentryScript({ confirm: ['hang'] });
  t.teardown(() => pin.cleanup());
  const rig = await clearSignRig(t, 'Tessa TLS <tessa@example.org>', {
    agentArgs: [
      '--web-listen',
      `127.0.0.1:${port}`,
      '--web-tls-cert',
      certFile,
      '--web-tls-key',
      keyFile,
      '--pinentry-program',
      pin.program,
      '--policy',
      'front=relay,op=sign,action=confirm',
    ],
    agentEnv: pin.env,
  });
  const FPR = rig.fingerprint;
  const origin = `https://127.0.0.1:${port}`;
  const printed = new RegExp(`^web: (https://127\\.0\\.0\\.1:${port}/#[A-Za-z0-9_-]{43})$`, 'm');
  const url = printed.exec(rig.holderStderr());
  t.ok(url, `the agent printed an https address on port ${port}: ${rig.holderStderr()}`);

  await t.test('plain HTTP to the TLS port gets no page', async (t) => {
    const r = await new Promise<string>((resolve) => {
      const req = http.get(
        { host: '127.0.0.1', port, path: '/', headers: { host: `127.0.0.1:${port}` } },
        (res) => {
          let data = '';
          res.on('data', (d: Buffer) => (data += d.toString()));
          res.on('end', () => resolve(`status ${res.statusCode}: ${data}`));
        },
      );
      req.on('error', (e) => resolve(`error: ${e.message}`));
    });
    t.match(r, /^error: /, `the connection fails (${r})`);
    t.notMatch(r, /<script/, 'no part of the page came back in the clear');
  });

  await t.test('the certificate, the Host check and the https Origin', async (t) => {
    const page = await send(port, ca, 'GET', '/');
    t.equal(page.status, 200, 'a client trusting only the test certificate gets the page');
    t.match(page.body, '<script type="module" src="/assets/app.js">');
    t.equal(page.headers['cache-control'], 'no-store');
    t.match(String(page.headers['content-security-policy']), "frame-ancestors 'none'");
    for (const host of ['evil.example', `evil.example:${port}`, `localhost:${port}`]) {
      const r = await send(port, ca, 'GET', '/', { host });
      t.equal(r.status, 403, `Host ${host}`);
      t.match(r.body, 'wrong Host');
    }
    // The plain-http origin of the same address is another origin: a secret posted from it does
    // not buy a session. (The secret here is made up; the Origin check answers first.)
    const plain = await send(
      port,
      ca,
      'POST',
      '/api/session',
      { origin: `http://127.0.0.1:${port}`, 'content-type': 'application/json' },
      JSON.stringify({ secret: 'x'.repeat(43) }),
    );
    t.equal(plain.status, 403);
    t.match(plain.body, 'foreign Origin');
    t.equal((await send(port, ca, 'GET', '/api/tokens')).status, 403, 'no session, no API');
  });

  const browser = await launchChromium(t);
  // The certificate is self-signed; the context accepts it (the Node client above checked it).
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  t.teardown(() => context.close());
  const page = await context.newPage();

  await t.test(
    'the page loads; its session cookie is Secure, HttpOnly, SameSite=Strict',
    async (t) => {
      const sessionReply = page.waitForResponse(
        (r) => r.url() === `${origin}/api/session` && r.request().method() === 'POST',
      );
      await page.goto(url![1]!);
      const r = await sessionReply;
      t.equal(r.status(), 200, 'the one-time secret bought a session');
      const setCookie = (await r.allHeaders())['set-cookie'] ?? '';
      t.match(
        setCookie,
        /^kt_session=[A-Za-z0-9_-]{43}; HttpOnly; SameSite=Strict; Path=\/; Secure$/,
        'Set-Cookie as sent',
      );
      await page.waitForSelector('body[data-state=live]');
      t.equal(new URL(page.url()).hash, '', 'the secret is gone from the address bar');
      t.equal(new URL(page.url()).protocol, 'https:');
      const cookies = await context.cookies(origin);
      t.equal(cookies.length, 1);
      t.match(cookies[0], {
        name: 'kt_session',
        secure: true,
        httpOnly: true,
        sameSite: 'Strict',
        path: '/',
      });
      t.equal(await page.evaluate<string>('document.cookie'), '', 'scripts cannot read it');
      await page.waitForSelector('#pending .empty');
      await screenshot(page, 'tls-page');
    },
  );

  await t.test('the same link twice buys nothing', async (t) => {
    const again = await context.newPage();
    t.teardown(() => again.close());
    const sessionReply = again.waitForResponse((r) => r.url() === `${origin}/api/session`);
    await again.goto(url![1]!);
    t.equal((await sessionReply).status(), 403);
  });

  await t.test('a waiting signature approved on the page: gpg finishes Good', async (t) => {
    const file = path.join(rig.tmp, 'doc.txt');
    await writeFile(file, 'a document signed over TLS\n');
    const done = rig.connect(
      'sh',
      '-c',
      `"$KEYTETHER_GIT_SIGN" --batch -u ${FPR} -o '${file}.sig' --detach-sign '${file}' && gpg --batch --verify '${file}.sig' '${file}'`,
    );
    const item = await page.waitForSelector('#pending article.request');
    await pin.waitFor((inv) => inv.some((i) => i.calls.some((c) => c.cmd === 'CONFIRM')));
    t.match((await item.textContent()) ?? '', `sign with key ${FPR}`);
    const answer = page.waitForResponse((r) => /\/api\/pending\/[^/]+\/answer$/.test(r.url()));
    await page.click('#pending article.request button.approve');
    const a = await answer;
    t.equal(a.url().startsWith(`${origin}/`), true, 'the answer went over https');
    t.equal(a.status(), 200);
    const r = await done;
    t.equal(r.code, 0, r.stderr);
    t.match(r.stderr, /Good signature from "Tessa TLS/);
    t.match((await rig.signs()).at(-1), {
      decision: 'confirmed',
      reason: /confirmed at the web page/,
    });
    await page.waitForSelector('#pending .empty');
  });
});
