// `keytether token …` as a user runs it: the built CLI in child processes, a real key from gpg
// imported with `keytether keys import`.

import t from 'tap';
import { chmod, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseToken, verifyTokenSignature } from '../protocol/token.js';
import { loadOrCreateIdentity } from '../workstation/home/identity.js';
import type { ChildProcess } from 'node:child_process';
import { runCli, spawnCli, waitForLine } from './support/cli.js';
import {
  exportSecretKey,
  generateKey,
  makeGnupgHome,
  type GeneratedKey,
  type TempGnupg,
} from './support/gnupg.js';

let g: TempGnupg;
let key: GeneratedKey;
let home: string;
let scratch: string;
const RELAY = 'http://127.0.0.1:7878';

const kt = (args: string[], env: Record<string, string | undefined> = {}) =>
  runCli(args, { env: { KEYTETHER_HOME: home, ...env } });

t.before(async () => {
  scratch = await mkdtemp(path.join(tmpdir(), 'kt-tokcli-'));
  home = path.join(scratch, 'home');
  g = await makeGnupgHome();
  key = await generateKey(g, {
    uid: 'Erin <erin@example.org>',
    algo: 'ed25519',
    usage: 'sign,cert',
    subkeys: [{ algo: 'cv25519', usage: 'encr' }],
  });
  const imp = await runCli(['keys', 'import'], {
    env: { KEYTETHER_HOME: home },
    input: await exportSecretKey(g, key.fingerprint),
  });
  if (imp.code !== 0) throw new Error(`import failed: ${imp.stderr}`);
});
t.teardown(async () => {
  await g?.cleanup();
  await rm(scratch, { recursive: true, force: true });
});

t.test('token create prints a signed token for the key', async (t) => {
  const r = await kt([
    'token',
    'create',
    '--key',
    key.fingerprint,
    '--relay',
    RELAY,
    '--ops',
    'sign,decrypt',
    '--ttl',
    '2h',
    '--max-uses',
    '3',
    '--label',
    'release job',
  ]);
  t.equal(r.code, 0, r.stderr);
  t.match(
    r.stderr,
    /^keytether token create: key [0-9A-F]{40} has no signing subkey, so the token names the primary itself; .*\nkeytether token create: the token names subkey [0-9A-F]{40} of key [0-9A-F]{40}, not the primary: a token never lets CI certify\n$/,
    'says which keys the token stands for',
  );
  t.match(r.stdout, /^kt1\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\n$/, 'the token alone');
  const parsed = parseToken(r.stdout.trim());
  if (!parsed.ok) throw new Error(parsed.error);
  const p = parsed.token.payload;
  t.same(
    p.keys,
    [key.fingerprint, key.subkeys[0]!.fingerprint],
    'sign: the primary (no signing subkey); decrypt: the encryption subkey',
  );
  t.same(p.ops, ['sign', 'decrypt']);
  t.equal(p.exp - p.iat, 7200);
  t.equal(p.max, 3);
  t.equal(p.label, 'release job');
  t.equal(p.relay, RELAY);
  t.ok(verifyTokenSignature(parsed.token));
  t.equal(p.hid, (await loadOrCreateIdentity(home)).hid, "signed by this holder's identity");
  for (const f of ['identity.key', 'tokens.json']) {
    t.equal((await stat(path.join(home, f))).mode & 0o777, 0o600, `${f} is 0600`);
  }

  // Named by subkey fingerprint or by key id: the token is for that subkey / that key.
  const sub = key.subkeys[0]!.fingerprint;
  const bySub = await kt(['token', 'create', '--key', sub.toLowerCase(), '--relay', RELAY]);
  t.equal(bySub.code, 0, bySub.stderr);
  const s = parseToken(bySub.stdout.trim());
  t.same(s.ok && s.token.payload.keys, [sub]);
  t.same(s.ok && s.token.payload.ops, ['sign'], 'default ops');
  t.equal(s.ok && s.token.payload.exp - s.token.payload.iat, 3600, 'default ttl 1h');
  const byId = await kt(['token', 'create', '--key', key.fingerprint.slice(-16), '--relay', RELAY]);
  t.equal(byId.code, 0, byId.stderr);
  const i = parseToken(byId.stdout.trim());
  t.same(i.ok && i.token.payload.keys, [key.fingerprint]);
});

t.test(
  'a token given a primary names its signing subkey, never the certifying primary',
  async (t) => {
    const certOnly = await generateKey(g, {
      uid: 'Cert Only <cert@example.org>',
      algo: 'ed25519',
      usage: 'cert',
      subkeys: [{ algo: 'ed25519', usage: 'sign' }],
    });
    const imp = await runCli(['keys', 'import'], {
      env: { KEYTETHER_HOME: home },
      input: await exportSecretKey(g, certOnly.fingerprint),
    });
    t.equal(imp.code, 0, imp.stderr);
    const signSub = certOnly.subkeys[0]!.fingerprint;
    const r = await kt(['token', 'create', '--key', certOnly.fingerprint, '--relay', RELAY]);
    t.equal(r.code, 0, r.stderr);
    const parsed = parseToken(r.stdout.trim());
    t.same(parsed.ok && parsed.token.payload.keys, [signSub], 'the signing subkey only');
    t.equal(
      r.stderr,
      `keytether token create: the token names subkey ${signSub} of key ${certOnly.fingerprint}, not the primary: a token never lets CI certify\n`,
    );
    const dec = await kt([
      'token',
      'create',
      '--key',
      certOnly.fingerprint,
      '--ops',
      'decrypt',
      '--relay',
      RELAY,
    ]);
    t.equal(dec.code, 1);
    t.match(
      dec.stderr,
      /^keytether token create: key [0-9A-F]{40} has no subkey that can decrypt \(encrypt flag\); add one with "gpg --quick-add-key [0-9A-F]{40} cv25519 encr"/,
    );
    t.equal(dec.stdout, '', 'no token');
  },
);

t.test('token create refusals', async (t) => {
  const unknown = await kt(['token', 'create', '--key', 'F'.repeat(40), '--relay', RELAY]);
  t.equal(unknown.code, 1);
  t.match(
    unknown.stderr,
    /^keytether token create: no key F{40} in the keystore; see keytether keys list for the stored keys\n$/,
  );
  t.equal(unknown.stdout, '');

  const noRelay = await kt(['token', 'create', '--key', key.fingerprint]);
  t.equal(noRelay.code, 2);
  t.match(noRelay.stderr, /^keytether token create: no relay is configured; give --relay URL/);

  const badOps = await kt([
    'token',
    'create',
    '--key',
    key.fingerprint,
    '--relay',
    RELAY,
    '--ops',
    'sign,export',
  ]);
  t.equal(badOps.code, 2);
  t.match(badOps.stderr, /'export' is not an operation/);

  const badUrl = await kt(['token', 'create', '--key', key.fingerprint, '--relay', 'ftp://x']);
  t.equal(badUrl.code, 2);
  t.match(badUrl.stderr, /not an http\(s\):\/\/ or ws\(s\):\/\/ relay URL/);

  // The config's first relay is the default.
  const cfgHome = path.join(scratch, 'cfg');
  await runCli(['keys', 'import'], {
    env: { KEYTETHER_HOME: cfgHome },
    input: await exportSecretKey(g, key.fingerprint),
  });
  await writeFile(
    path.join(cfgHome, 'config.toml'),
    'relay = ["wss://relay.example", "https://b.example"]\n',
    { mode: 0o600 },
  );
  const fromCfg = await runCli(['token', 'create', '--key', key.fingerprint], {
    env: { KEYTETHER_HOME: cfgHome },
  });
  t.equal(fromCfg.code, 0, fromCfg.stderr);
  const c = parseToken(fromCfg.stdout.trim());
  t.equal(c.ok && c.token.payload.relay, 'wss://relay.example');
});

function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  child.kill('SIGTERM');
  return exited;
}

/** A fresh home holding the test key, for tests that need their own config or agent. */
async function homeWithKey(name: string): Promise<string> {
  const dir = path.join(scratch, name);
  const imp = await runCli(['keys', 'import'], {
    env: { KEYTETHER_HOME: dir },
    input: await exportSecretKey(g, key.fingerprint),
  });
  if (imp.code !== 0) throw new Error(`import failed: ${imp.stderr}`);
  return dir;
}

t.test("without --relay, the running agent's relay is the token's, and it says so", async (t) => {
  const agentHome = await homeWithKey('agent');
  const env = { KEYTETHER_HOME: agentHome };
  // config.toml names another relay: the one the agent is connected to wins.
  await writeFile(path.join(agentHome, 'config.toml'), 'relay = "https://other.example"\n', {
    mode: 0o600,
  });
  const relay = await spawnCli(['relay', '--listen', '127.0.0.1:0']);
  t.teardown(() => stop(relay));
  const url = (await waitForLine(relay.stdout!, /^listening: (\S+)$/))[1]!;
  const agent = await spawnCli(
    ['agent', '--backend', 'builtin', '--socket', path.join(agentHome, 'S.local'), '--relay', url],
    { env },
  );
  t.teardown(() => stop(agent));
  await waitForLine(agent.stdout!, /^ready: /);

  const r = await runCli(['token', 'create', '--key', key.fingerprint], { env });
  t.equal(r.code, 0, r.stderr);
  const p = parseToken(r.stdout.trim());
  t.equal(p.ok && p.token.payload.relay, url);
  t.match(
    r.stderr,
    new RegExp(
      `^keytether token create: relay ${url.replace(/[.]/g, '\\.')} is the one the running agent \\(pid ${agent.pid}\\) uses; give --relay URL for another\n`,
    ),
  );

  await stop(agent);
  const fromFile = await runCli(['token', 'create', '--key', key.fingerprint], { env });
  t.equal(fromFile.code, 0, fromFile.stderr);
  const f = parseToken(fromFile.stdout.trim());
  t.equal(f.ok && f.token.payload.relay, 'https://other.example', 'relay = "URL" (one string)');
  t.match(
    fromFile.stderr,
    /^keytether token create: relay https:\/\/other\.example is the first in .*config\.toml; give --relay URL for another\n/,
  );

  // "URL,URL" names instances of one relay (the holder fails over between them): a token is for
  // one address, the first instance, not the whole string.
  await writeFile(
    path.join(agentHome, 'config.toml'),
    'relay = "https://one.example:7878, https://two.example:7878"\n',
    { mode: 0o600 },
  );
  const cluster = await runCli(['token', 'create', '--key', key.fingerprint], { env });
  t.equal(cluster.code, 0, cluster.stderr);
  const c = parseToken(cluster.stdout.trim());
  t.equal(c.ok && c.token.payload.relay, 'https://one.example:7878', 'the first instance');
  t.match(cluster.stderr, /relay https:\/\/one\.example:7878 is the first in /);
});

t.test('--ttl beyond token-max-ttl (default 30d) is refused, naming the maximum', async (t) => {
  const over = await kt([
    'token',
    'create',
    '--key',
    key.fingerprint,
    '--relay',
    RELAY,
    '--ttl',
    '31d',
  ]);
  t.equal(over.code, 2);
  t.match(
    over.stderr,
    /^keytether token create: --ttl is longer than the 30d a token may live; give a shorter --ttl or raise token-max-ttl \(now "30d"\) in .*config\.toml\n$/,
  );
  t.equal(over.stdout, '');
  const max = await kt([
    'token',
    'create',
    '--key',
    key.fingerprint,
    '--relay',
    RELAY,
    '--ttl',
    '30d',
  ]);
  t.equal(max.code, 0, max.stderr);

  const longHome = await homeWithKey('long-ttl');
  await writeFile(path.join(longHome, 'config.toml'), 'token-max-ttl = "90d"\n', { mode: 0o600 });
  const env = { KEYTETHER_HOME: longHome };
  const long = await runCli(
    ['token', 'create', '--key', key.fingerprint, '--relay', RELAY, '--ttl', '60d'],
    { env },
  );
  t.equal(long.code, 0, long.stderr);
  const p = parseToken(long.stdout.trim());
  t.equal(p.ok && p.token.payload.exp - p.token.payload.iat, 60 * 86_400);
  const tooLong = await runCli(
    ['token', 'create', '--key', key.fingerprint, '--relay', RELAY, '--ttl', '91d'],
    { env },
  );
  t.match(tooLong.stderr, /longer than the 90d a token may live/);
});

t.test('token list and revoke', async (t) => {
  const created = await kt([
    'token',
    'create',
    '--key',
    key.fingerprint,
    '--relay',
    RELAY,
    '--label',
    'to revoke',
    '--max-uses',
    '9',
  ]);
  t.equal(created.code, 0, created.stderr);
  const parsed = parseToken(created.stdout.trim());
  if (!parsed.ok) throw new Error(parsed.error);
  const id = parsed.token.payload.tid;

  const listed = await kt(['token', 'list', '--json']);
  t.equal(listed.code, 0, listed.stderr);
  const rows = JSON.parse(listed.stdout) as Record<string, unknown>[];
  const row = rows.find((x) => x.id === id);
  t.same(row, {
    id,
    keys: [key.fingerprint],
    ops: ['sign'],
    expires: new Date(parsed.token.payload.exp * 1000).toISOString(),
    uses: 0,
    maxUses: 9,
    label: 'to revoke',
    revoked: false,
  });
  t.ok(rows.length >= 4, 'every token issued so far');
  t.notOk(listed.stdout.includes(created.stdout.trim().split('.')[3]!), 'no secret in the list');

  const text = await kt(['token', 'list']);
  t.equal(text.code, 0);
  t.match(
    text.stdout,
    new RegExp(
      `^${id} active ops=sign keys=${key.fingerprint} uses=0/9 expires=\\S+Z label="to revoke"$`,
      'm',
    ),
  );
  t.equal(text.stdout.trim().split('\n').length, rows.length, 'one line per token');

  const rv = await kt(['token', 'revoke', id]);
  t.equal(rv.code, 0, rv.stderr);
  t.equal(rv.stdout, `revoked ${id}\n`);
  const after = JSON.parse((await kt(['token', 'list', '--json'])).stdout) as {
    id: string;
    revoked: boolean;
  }[];
  t.equal(after.find((x) => x.id === id)?.revoked, true);
  t.match((await kt(['token', 'list'])).stdout, new RegExp(`^${id} revoked `, 'm'));

  const unknown = await kt(['token', 'revoke', 'ktt_0000000000000000']);
  t.equal(unknown.code, 1);
  t.equal(
    unknown.stderr,
    'keytether token revoke: no token ktt_0000000000000000 was issued by this holder; see keytether token list\n',
  );

  await chmod(path.join(home, 'tokens.json'), 0o644);
  const loose = await kt(['token', 'list']);
  t.equal(loose.code, 1);
  t.match(loose.stderr, /tokens\.json is accessible by other users \(mode 644\); run: chmod 600 /);
  await chmod(path.join(home, 'tokens.json'), 0o600);

  const empty = await runCli(['token', 'list', '--json'], {
    env: { KEYTETHER_HOME: path.join(scratch, 'empty') },
  });
  t.equal(empty.code, 0, empty.stderr);
  t.same(JSON.parse(empty.stdout), []);
});

t.test('token prune, and a full registry names it', async (t) => {
  const pruneHome = path.join(scratch, 'prune');
  const env = { KEYTETHER_HOME: pruneHome };
  const imp = await runCli(['keys', 'import'], {
    env,
    input: await exportSecretKey(g, key.fingerprint),
  });
  t.equal(imp.code, 0, imp.stderr);
  const create = () =>
    runCli(['token', 'create', '--key', key.fingerprint, '--relay', RELAY], { env });
  const first = await create();
  t.equal(first.code, 0, first.stderr);
  const keep = parseToken(first.stdout.trim());
  if (!keep.ok) throw new Error(keep.error);

  // Fill the registry to its cap with tokens revoked just now, as years of CI jobs would.
  const file = path.join(pruneHome, 'tokens.json');
  const doc = JSON.parse(await readFile(file, 'utf8')) as {
    tokens: { id: string; claims: { tid: string }; revoked: boolean; revokedAt?: string }[];
  };
  const mine = doc.tokens[0]!;
  const revokedAt = new Date().toISOString();
  for (let i = 1; i < 10_000; i++) {
    const id = `ktt_${i.toString(16).padStart(16, '0')}`;
    doc.tokens.push({ ...mine, id, claims: { ...mine.claims, tid: id }, revoked: true, revokedAt });
  }
  await writeFile(file, JSON.stringify(doc), { mode: 0o600 });

  const full = await create();
  t.equal(full.code, 1);
  t.match(
    full.stderr,
    /^keytether token create: \S+tokens\.json already holds 10000 tokens; remove expired and revoked ones with keytether token prune/,
  );
  t.equal(full.stdout, '', 'no token');

  const recent = await runCli(['token', 'prune', '--older-than', '1d'], { env });
  t.equal(recent.code, 0, recent.stderr);
  t.equal(recent.stdout, 'pruned 0 tokens\n', 'revoked just now: not a day ago');
  const pruned = await runCli(['token', 'prune'], { env });
  t.equal(pruned.code, 0, pruned.stderr);
  t.equal(pruned.stdout, 'pruned 9999 tokens\n');
  const again = await create();
  t.equal(again.code, 0, again.stderr);
  const rows = JSON.parse((await runCli(['token', 'list', '--json'], { env })).stdout) as {
    id: string;
  }[];
  t.equal(rows.length, 2, 'the active token and the new one');
  t.equal(rows[0]!.id, keep.token.payload.tid);
  t.equal((await stat(file)).mode & 0o777, 0o600, 'tokens.json is still 0600');
});
