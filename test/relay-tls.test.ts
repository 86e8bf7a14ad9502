// A relay on wss:// with a certificate from a private CA, every part a real process: holders and
// facades trust it through --relay-ca or a pinned fingerprint, and refuse it otherwise with one
// sentence that says what to pass, quickly and without ever sending the token.

import t, { type Test } from 'tap';
import type { ChildProcess } from 'node:child_process';
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { exportSecretKey, generateKey, makeGnupgHome } from './support/gnupg.js';
import { runCli, spawnCli, waitForLine } from './support/cli.js';
import { main } from '../cli/program.js';
import {
  describeRelayTlsError,
  formatRelayFingerprint,
  parseRelayFingerprint,
} from '../protocol/relay/endpoint.js';
import { ALLOW_BLIND_FLAG } from './support/blind-signing.js';
import { testNeeding } from './support/ci.js';

const execFileP = promisify(execFile);

const HEX = 'ab'.repeat(32);
const BYTES = Buffer.from(HEX, 'hex');

t.test('fingerprints in the forms users copy them', async (t) => {
  const colons = HEX.toUpperCase().match(/../g)!.join(':');
  const b64 = BYTES.toString('base64');
  for (const form of [
    `sha256:${HEX}`,
    `SHA256:${HEX.toUpperCase()}`,
    HEX,
    colons,
    `sha256:${colons}`,
    `sha256 Fingerprint=${colons}`,
    `SHA256 Fingerprint=${colons}\n`,
    `sha256:${b64}`,
    `sha256:${b64.replace(/=$/, '')}`,
    `sha256:${BYTES.toString('base64url')}`,
  ]) {
    const r = parseRelayFingerprint(form);
    t.ok(r.ok && Buffer.from(r.sha256).equals(BYTES), `accepts ${JSON.stringify(form)}`);
  }
  for (const bad of [
    '',
    'sha256:',
    HEX.slice(2),
    `${HEX}00`,
    colons.replace(/:/, ';'),
    'x'.repeat(5000),
    `sha256:${BYTES.subarray(1).toString('base64')}`,
  ]) {
    t.match(
      parseRelayFingerprint(bad),
      { ok: false, error: /SHA-256/ },
      `refuses ${bad.slice(0, 20)}`,
    );
  }
  t.match(parseRelayFingerprint(`sha1:${'ab'.repeat(20)}`), {
    ok: false,
    error: /only SHA-256/,
  });
  t.equal(formatRelayFingerprint(BYTES), `sha256:${HEX}`);
  t.match(
    describeRelayTlsError({
      code: 'DEPTH_ZERO_SELF_SIGNED_CERT',
      message: 'self-signed certificate',
    }),
    /^cannot trust the relay's TLS certificate \(self-signed certificate\); pass --relay-ca FILE or --relay-fingerprint sha256:…$/,
  );
  t.equal(describeRelayTlsError({ code: 'ECONNREFUSED', message: 'refused' }), undefined);
});

interface Proc {
  child: ChildProcess;
  stderr(): string;
  stop(): Promise<void>;
}

function track(child: ChildProcess): Proc {
  let err = '';
  child.stderr!.on('data', (b: Buffer) => (err += b.toString()));
  const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()));
  return {
    child,
    stderr: () => err,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
    },
  };
}

async function openssl(args: string[], cwd: string): Promise<string> {
  return (await execFileP('openssl', args, { cwd })).stdout;
}

/** A CA and a relay certificate it signed, for 127.0.0.1; another CA that signed nothing here. */
async function makeCertificates(dir: string) {
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  await openssl(
    ['req', '-x509', ...ec, '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2'].concat([
      '-subj',
      '/CN=keytether test CA',
    ]),
    dir,
  );
  await openssl(
    ['req', '-x509', ...ec, '-keyout', 'other.key', '-out', 'other-ca.pem', '-days', '2'].concat([
      '-subj',
      '/CN=some other CA',
    ]),
    dir,
  );
  await openssl(
    ['req', ...ec, '-keyout', 'relay.key', '-out', 'relay.csr', '-subj', '/CN=127.0.0.1'],
    dir,
  );
  await writeFile(
    path.join(dir, 'ext.cnf'),
    'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n' +
      'extendedKeyUsage=serverAuth\n',
  );
  await openssl(
    ['x509', '-req', '-in', 'relay.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key'].concat([
      '-CAcreateserial',
      '-out',
      'relay.pem',
      '-days',
      '2',
      '-extfile',
      'ext.cnf',
    ]),
    dir,
  );
  // Exactly what a user would paste: the whole line openssl prints.
  const printed = (
    await openssl(['x509', '-in', 'relay.pem', '-noout', '-fingerprint', '-sha256'], dir)
  ).trim();
  return {
    ca: path.join(dir, 'ca.pem'),
    otherCa: path.join(dir, 'other-ca.pem'),
    cert: path.join(dir, 'relay.pem'),
    key: path.join(dir, 'relay.key'),
    printed,
  };
}

const hasOpenssl = await execFileP('openssl', ['version']).then(
  () => true,
  () => false,
);

testNeeding(
  t,
  'a wss:// relay with a private CA, end to end',
  !hasOpenssl && 'needs the openssl command: apt-get install openssl',
  async (t) => {
    const tmp = await mkdtemp('/tmp/kttls-');
    t.teardown(() => rm(tmp, { recursive: true, force: true }));
    const certs = await makeCertificates(tmp);
    const pinHex = /=([0-9A-F:]+)$/i.exec(certs.printed)![1]!.replace(/:/g, '').toLowerCase();
    t.match(certs.printed, /^sha256 Fingerprint=([0-9A-F]{2}:){31}[0-9A-F]{2}$/i);

    const ws = await makeGnupgHome();
    t.teardown(() => ws.cleanup());
    const key = await generateKey(ws, { uid: 'Tess TLS <tess@example.org>', algo: 'ed25519' });
    const FPR = key.fingerprint;
    const home = path.join(tmp, 'home');
    const env = { KEYTETHER_HOME: home };
    const secretFile = path.join(tmp, 'secret.gpg');
    await writeFile(secretFile, await exportSecretKey(ws, FPR), { mode: 0o600 });
    const imp = await runCli(['keys', 'import', secretFile], { env });
    t.equal(imp.code, 0, `keys import: ${imp.stderr}`);
    await rm(secretFile);
    const verifier = await makeGnupgHome();
    t.teardown(() => verifier.cleanup());
    const pub = await ws.gpg(['--batch', '--armor', '--export', FPR]);
    t.equal((await verifier.gpg(['--batch', '--import'], { input: pub.stdout })).code, 0);

    const relay = track(
      await spawnCli([
        'relay',
        '--listen',
        '127.0.0.1:0',
        '--tls-cert',
        certs.cert,
        '--tls-key',
        certs.key,
      ]),
    );
    t.teardown(() => relay.stop());
    const base = (await waitForLine(relay.child.stdout!, /^listening: (\S+)$/, 30_000))[1]!;
    t.match(base, /^https:\/\/127\.0\.0\.1:\d+$/, 'the relay serves https');
    const url = base.replace(/^https:/, 'wss:');

    const startAgent = async (agentHome: string, trustArgs: string[], line: RegExp) => {
      const a = track(
        await spawnCli(
          [
            'agent',
            ...ALLOW_BLIND_FLAG,
            '--backend',
            'builtin',
            '--socket',
            path.join(agentHome, 'S.local'),
            '--relay',
            url,
            ...trustArgs,
          ],
          { env: { KEYTETHER_HOME: agentHome } },
        ),
      );
      t.teardown(() => a.stop());
      const m = await waitForLine(a.child.stderr!, line, 30_000).catch((e: Error) => {
        throw new Error(`${e.message}; stderr: ${a.stderr()}`);
      });
      return m[0];
    };

    // Three holders at once (processes start slowly on a busy machine): two that must refuse the
    // relay and say why in their log line, and the one the facades below reach.
    const [untrusted, wrongPin] = await Promise.all([
      startAgent(path.join(tmp, 'h-untrusted'), [], /^.*cannot trust.*$/),
      startAgent(
        path.join(tmp, 'h-wrongpin'),
        ['--relay-fingerprint', `sha256:${HEX}`],
        /^.*not the pinned one.*$/,
      ),
      startAgent(home, ['--relay-ca', certs.ca], /^relay connected: /),
    ]);
    t.equal(
      untrusted,
      `relay ${url}: cannot trust the relay's TLS certificate (unable to verify the first certificate); pass --relay-ca FILE or --relay-fingerprint sha256:…`,
      'a holder without --relay-ca logs why it cannot connect',
    );
    // The same sentence is what `keytether status` shows for that relay while it keeps trying.
    const st = await runCli(['status'], { env: { KEYTETHER_HOME: path.join(tmp, 'h-untrusted') } });
    t.equal(st.code, 0, st.stderr);
    t.match(
      st.stdout,
      `${url}: connecting, 0 streams (last attempt: cannot trust the relay's TLS certificate`,
      'status names why the relay is not connected',
    );
    t.equal(
      wrongPin,
      `relay ${url}: the relay's TLS certificate is not the pinned one: expected sha256:${HEX}, got sha256:${pinHex}`,
      'a holder with a wrong pin logs expected and got',
    );

    const tok = await runCli(['token', 'create', '--key', FPR, '--relay', base], { env });
    t.equal(tok.code, 0, tok.stderr);
    const token = tok.stdout.trim();
    const file = path.join(tmp, 'release.txt');
    await writeFile(file, 'release 2.0\n');

    const connect = (
      trustArgs: string[],
      command: string[],
      extraEnv: Record<string, string> = {},
    ) =>
      runCli(['connect', '--relay', url, ...trustArgs, '--', ...command], {
        env: {
          KEYTETHER_TOKEN: token,
          KEYTETHER_RELAY_CA: undefined,
          KEYTETHER_RELAY_FINGERPRINT: undefined,
          ...extraEnv,
        },
        timeoutMs: 30_000,
      });
    const signWith = async (t: Test, trustArgs: string[], extraEnv?: Record<string, string>) => {
      const sig = path.join(tmp, `sig-${Math.random().toString(36).slice(2)}.sig`);
      const r = await connect(
        trustArgs,
        ['gpg', '--batch', '--no-tty', '-u', FPR, '-o', sig, '--detach-sign', file],
        extraEnv,
      );
      t.equal(r.code, 0, r.stderr);
      const v = await verifier.gpg(['--batch', '--verify', sig, file]);
      t.match(v.stderr, /Good signature from "Tess TLS/);
    };

    await t.test('trusted relays: gpg signs through connect', async (t) => {
      await Promise.all([
        t.test('with --relay-ca', (t) => signWith(t, ['--relay-ca', certs.ca])),
        t.test('with KEYTETHER_RELAY_FINGERPRINT as openssl prints it', (t) =>
          signWith(t, [], { KEYTETHER_RELAY_FINGERPRINT: certs.printed }),
        ),
        t.test('with --relay-fingerprint sha256:HEX and --relay-ca', async (t) => {
          const r = await connect(
            ['--relay-fingerprint', `sha256:${pinHex}`, '--relay-ca', certs.ca],
            ['true'],
          );
          t.equal(r.code, 0, r.stderr);
        }),
      ]);
    });

    // In-process `keytether …` (the CLI's main, as the executable runs it): refusals are timed
    // without the cost of starting node, which on a busy machine is seconds.
    const run = async (argv: string[], extraEnv: Record<string, string> = {}) => {
      let stderr = '';
      const saved = { ...process.env };
      Object.assign(process.env, extraEnv);
      const started = Date.now();
      try {
        const code = await main(argv, {
          stdout: { write: () => true },
          stderr: { write: (s: string) => (stderr += s) },
        });
        return { code, stderr, took: Date.now() - started };
      } finally {
        for (const k of Object.keys(extraEnv)) if (!(k in saved)) delete process.env[k];
      }
    };
    const connectArgs = ['connect', '--relay', url, '--token', token];

    await t.test('untrusted relays: one sentence, exit 1, no waiting', async (t) => {
      const untrustedLine =
        /^keytether connect: cannot trust the relay's TLS certificate \([^)]+\); pass --relay-ca FILE or --relay-fingerprint sha256:…\n$/;
      const mismatch = `keytether connect: the relay's TLS certificate is not the pinned one: expected sha256:${HEX}, got sha256:${pinHex}\n`;
      const cases: [string, string[], Record<string, string>, RegExp | string][] = [
        ['no --relay-ca', [], {}, untrustedLine],
        [
          'a CA that did not sign the certificate',
          ['--relay-ca', certs.otherCa],
          {},
          untrustedLine,
        ],
        ['a wrong pin', ['--relay-fingerprint', `sha256:${HEX}`], {}, mismatch],
        [
          'a wrong pin, though the CA vouches for the certificate',
          ['--relay-ca', certs.ca],
          { KEYTETHER_RELAY_FINGERPRINT: HEX },
          mismatch,
        ],
      ];
      for (const [what, args, extraEnv, expected] of cases) {
        const r = await run([...connectArgs, ...args, '--', 'true'], extraEnv);
        t.equal(r.code, 1, `${what}: exit 1`);
        if (typeof expected === 'string') t.equal(r.stderr, expected, what);
        else t.match(r.stderr, expected, what);
        // A hang would end at the 15 s connect timeout; a refusal comes with the handshake.
        t.ok(r.took < 5000, `${what}: refused after ${r.took} ms`);
        t.notMatch(r.stderr, token.split('.')[3]!, 'the secret is never printed');
      }

      // The executable itself exits too: nothing (a timer, a socket) keeps it alive afterwards.
      // Starting node is the baseline; a refusal must not add anything like the 15 s timeout.
      const timedCli = async (args: string[]) => {
        const started = Date.now();
        const r = await connect(args, ['true']);
        return { ...r, took: Date.now() - started };
      };
      const baseline = await timedCli(['--relay-fingerprint', 'sha256:0']);
      t.equal(baseline.code, 2, 'baseline: a usage error before any connection');
      const r = await timedCli([]);
      t.equal(r.code, 1);
      t.match(r.stderr, untrustedLine);
      t.ok(
        r.took < baseline.took + 8000,
        `the process exited ${r.took} ms after it started (baseline ${baseline.took} ms)`,
      );
    });

    await t.test('unusable trust arguments are one line naming the file or value', async (t) => {
      const missing = path.join(tmp, 'missing.pem');
      const notPem = path.join(tmp, 'not.pem');
      await writeFile(notPem, 'hello\n');
      const badBody = path.join(tmp, 'bad.pem');
      await writeFile(badBody, '-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n');
      const cases: [string[], Record<string, string>, number, RegExp][] = [
        [
          connectArgs,
          { KEYTETHER_RELAY_CA: missing },
          1,
          /^keytether connect: cannot read KEYTETHER_RELAY_CA \S+missing\.pem \(ENOENT\); check/,
        ],
        [
          [...connectArgs, '--relay-ca', notPem],
          {},
          1,
          /^keytether connect: --relay-ca \S+not\.pem holds no PEM certificate/,
        ],
        [
          [...connectArgs, '--relay-ca', badBody],
          {},
          1,
          /^keytether connect: --relay-ca \S+bad\.pem: certificate 1 is not a valid X\.509/,
        ],
        [
          [...connectArgs, '--relay-fingerprint', 'sha256:abc'],
          {},
          2,
          /^keytether connect: --relay-fingerprint must be a SHA-256 certificate fingerprint/,
        ],
        [
          ['--home', path.join(tmp, 'h-bad'), 'agent', '--relay', url, '--relay-ca', missing],
          {},
          1,
          /^keytether agent: cannot read --relay-ca \S+missing\.pem \(ENOENT\)/,
        ],
      ];
      for (const [argv, extraEnv, code, re] of cases) {
        const full = argv[0] === 'connect' ? [...argv, '--', 'true'] : argv;
        const r = await run(full, extraEnv);
        t.equal(r.code, code, `${argv.slice(-2).join(' ')}: exit ${code}`);
        t.match(r.stderr, re);
        t.equal(r.stderr.split('\n').length, 2, 'one line');
      }
    });
  },
);
