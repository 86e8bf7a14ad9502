// A certificate renewal without a restart: `kill -HUP` makes a running `keytether relay` serve
// the renewed certificate to new connections, keeps open ones, and keeps the old certificate when
// the new files are unusable, saying why in one log line that holds none of the key.

import t from 'tap';
import { execFile } from 'node:child_process';
import { copyFile, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { connect, type TLSSocket } from 'node:tls';
import { X509Certificate } from 'node:crypto';
import path from 'node:path';
import { promisify } from 'node:util';
import { runCli, spawnCli, waitForLine } from './support/cli.js';
import { testNeeding } from './support/ci.js';

const execFileP = promisify(execFile);

const hasOpenssl = await execFileP('openssl', ['version']).then(
  () => true,
  () => false,
);

/** A self-signed certificate for 127.0.0.1 as NAME.pem with its key NAME.key. */
async function selfSigned(dir: string, name: string): Promise<{ cert: string; key: string }> {
  await execFileP(
    'openssl',
    ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'].concat(
      ['-keyout', `${name}.key`, '-out', `${name}.pem`, '-days', '2', '-subj', `/CN=${name}`],
      ['-addext', 'subjectAltName=IP:127.0.0.1'],
    ),
    { cwd: dir },
  );
  return { cert: path.join(dir, `${name}.pem`), key: path.join(dir, `${name}.key`) };
}

function fingerprintOf(pem: Buffer): string {
  return new X509Certificate(pem).fingerprint256;
}

/** Opens a TLS connection to the relay and resolves once the handshake is done. */
function tlsConnect(port: number): Promise<TLSSocket> {
  return new Promise((resolve, reject) => {
    const s = connect({ host: '127.0.0.1', port, rejectUnauthorized: false }, () => resolve(s));
    s.once('error', reject);
  });
}

async function servedFingerprint(port: number): Promise<string> {
  const s = await tlsConnect(port);
  const fpr = s.getPeerCertificate().fingerprint256;
  s.destroy();
  return fpr;
}

/** One HTTP/1.1 request on an open socket (keep-alive); resolves to the whole response text. */
function request(s: TLSSocket, target: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let buf = '';
    const onData = (b: Buffer) => {
      buf += b.toString();
      const head = buf.indexOf('\r\n\r\n');
      const len = /content-length: (\d+)/i.exec(buf);
      if (head >= 0 && len && buf.length >= head + 4 + Number(len[1])) {
        s.off('data', onData);
        resolve(buf);
      }
    };
    s.on('data', onData);
    s.once('error', reject);
    s.write(`GET ${target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n\r\n`);
  });
}

async function metrics(port: number): Promise<string> {
  const s = await tlsConnect(port);
  try {
    return await request(s, '/metrics');
  } finally {
    s.destroy();
  }
}

testNeeding(
  t,
  'SIGHUP reloads the certificate; an unusable one is refused and the old one kept',
  !hasOpenssl && 'needs the openssl command: apt-get install openssl',
  async (t) => {
    const dir = await mkdtemp('/tmp/kt-tlsreload-');
    t.teardown(() => rm(dir, { recursive: true, force: true }));
    const a = await selfSigned(dir, 'relay-a');
    const b = await selfSigned(dir, 'relay-b');
    const served = { cert: path.join(dir, 'relay.pem'), key: path.join(dir, 'relay.key') };
    await copyFile(a.cert, served.cert);
    await copyFile(a.key, served.key);
    const fprA = fingerprintOf(await readFile(a.cert));
    const fprB = fingerprintOf(await readFile(b.cert));

    const relay = await spawnCli(
      ['relay', '--listen', '127.0.0.1:0'].concat([
        '--tls-cert',
        served.cert,
        '--tls-key',
        served.key,
      ]),
    );
    let stderr = '';
    relay.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise((resolve) => relay.on('exit', resolve));
    t.teardown(async () => {
      relay.kill('SIGKILL');
      await exited;
    });
    const base = (await waitForLine(relay.stdout!, /^listening: (\S+)$/))[1]!;
    const port = Number(new URL(base).port);
    t.equal(await servedFingerprint(port), fprA, 'the relay starts with certificate A');
    const notAfter = (pem: Buffer) => Date.parse(new X509Certificate(pem).validTo) / 1000;
    t.match(
      await metrics(port),
      `keytether_relay_tls_certificate_not_after_seconds ${notAfter(await readFile(a.cert))}`,
      '/metrics tells when A expires',
    );

    // A connection opened before the renewal, kept alive across it.
    const before = await tlsConnect(port);
    t.teardown(() => before.destroy());

    await copyFile(b.cert, served.cert);
    await copyFile(b.key, served.key);
    relay.kill('SIGHUP');
    const reloaded = await waitForLine(relay.stderr!, /^.*tls certificate reloaded.*$/);
    t.match(reloaded[0], fprB.replace(/:/g, '').toLowerCase(), 'the log names the new fingerprint');
    t.equal(await servedFingerprint(port), fprB, 'new connections get certificate B');
    t.equal(before.getPeerCertificate().fingerprint256, fprA, 'the open connection still has A');
    t.match(await request(before, '/healthz'), /^HTTP\/1\.1 200/, 'and it still works');
    const m1 = await metrics(port);
    t.match(m1, 'keytether_relay_tls_reloads_total{result="ok"} 1');
    t.match(
      m1,
      `keytether_relay_tls_certificate_not_after_seconds ${notAfter(await readFile(b.cert))}`,
    );

    // A renewal half done: B's certificate with A's key. Refused; B stays.
    await copyFile(a.key, served.key);
    relay.kill('SIGHUP');
    const refused = await waitForLine(relay.stderr!, /^.*tls reload failed.*$/);
    t.match(refused[0], /does not belong to the certificate/, 'the log line says why');
    t.equal(await servedFingerprint(port), fprB, 'the relay still serves B');

    // Not a certificate at all.
    await writeFile(served.cert, 'not a certificate\n');
    await copyFile(b.key, served.key);
    relay.kill('SIGHUP');
    t.match(
      (await waitForLine(relay.stderr!, /^.*tls reload failed.*$/))[0],
      /not a PEM certificate/,
    );
    // A missing file.
    await rm(served.cert);
    relay.kill('SIGHUP');
    t.match(
      (await waitForLine(relay.stderr!, /^.*tls reload failed.*$/))[0],
      /cannot read --tls-cert/,
    );
    t.equal(await servedFingerprint(port), fprB, 'still B after every refusal');
    t.match(await metrics(port), 'keytether_relay_tls_reloads_total{result="failed"} 3');
    t.notMatch(stderr, /PRIVATE KEY|BEGIN/, 'no PEM text in the log');
    t.equal(relay.exitCode, null, 'the relay is still running');
  },
);

t.test('SIGHUP on a relay without TLS is logged and changes nothing', async (t) => {
  const relay = await spawnCli(['relay', '--listen', '127.0.0.1:0']);
  const exited = new Promise((resolve) => relay.on('exit', resolve));
  t.teardown(async () => {
    relay.kill('SIGKILL');
    await exited;
  });
  const base = (await waitForLine(relay.stdout!, /^listening: (\S+)$/))[1]!;
  relay.kill('SIGHUP');
  await waitForLine(relay.stderr!, /nothing to reload/);
  const res = await fetch(`${base}/metrics`);
  t.equal(res.status, 200, 'the relay still answers');
  t.notMatch(await res.text(), /keytether_relay_tls_/, 'no certificate series without TLS');
});

testNeeding(
  t,
  'a relay that cannot start with its certificate says which part is wrong',
  !hasOpenssl && 'needs the openssl command: apt-get install openssl',
  async (t) => {
    const dir = await mkdtemp('/tmp/kt-tlsstart-');
    t.teardown(() => rm(dir, { recursive: true, force: true }));
    const a = await selfSigned(dir, 'a');
    const b = await selfSigned(dir, 'b');
    const run = (cert: string, key: string) =>
      runCli(['relay', '--listen', '127.0.0.1:0', '--tls-cert', cert, '--tls-key', key]);
    const mismatch = await run(a.cert, b.key);
    t.not(mismatch.code, 0);
    t.equal(
      mismatch.stderr.trim(),
      'keytether relay: the TLS key does not belong to the certificate; check --tls-cert and --tls-key',
    );
    const swapped = await run(a.key, a.cert);
    t.not(swapped.code, 0);
    t.match(
      swapped.stderr.trim(),
      /^keytether relay: the TLS certificate is not a PEM certificate;/,
    );
  },
);
