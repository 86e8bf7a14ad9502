// `keytether audit list` and `audit summary` (issue #15's audit view, in the CLI): an audit log
// made by real signatures — stock gpg through the holder's gpg-agent protocol, with a local
// front and two servers' ssh fronts, decided by policy and a scripted pinentry — read back with
// filters, each result checked against audit.jsonl itself; then the same log damaged and cut
// short, and flags that cannot be read.
//
// The holder is a harness in the test process (openHolderRuntime, serveAgent on one socket per
// front, as status.test.ts does); the commands under test run as real child processes.

import t from 'tap';
import net from 'node:net';
import { copyFile, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { serveAgent } from '../protocol/agent/index.js';
import type { Requester } from '../protocol/keyholder.js';
import { loadConfig, mergeFlags } from '../workstation/home/config.js';
import { listenUnix } from '../workstation/holder/local-socket.js';
import { openHolderRuntime } from '../workstation/holder/runtime.js';
import { parseAuditFilter } from '../workstation/audit/filter.js';
import { queryAuditLog } from '../workstation/audit/query.js';
import { runCli } from './support/cli.js';
import {
  clientHome,
  exportPublicKey,
  exportSecretKey,
  generateKey,
  makeGnupgHome,
  redirectAgentSocket,
} from './support/gnupg.js';
import { makePinentryScript } from './support/pinentry-script.js';
import { ALLOW_BLIND_RULE } from './support/blind-signing.js';

interface Rec {
  seq: number;
  time: string;
  front: string;
  host?: string;
  keygrip?: string;
  fingerprint?: string;
  decision: string;
}

const ws = await makeGnupgHome();
t.teardown(() => ws.cleanup());
const key = await generateKey(ws, {
  uid: 'Aude Query <aude@example.org>',
  algo: 'ed25519',
  usage: 'sign,cert',
});
const tmp = await mkdtemp('/tmp/ktaq-');
t.teardown(() => rm(tmp, { recursive: true, force: true }));
const home = path.join(tmp, 'kt');
const env = { KEYTETHER_HOME: home };
const kt = (args: string[]) => runCli(args, { env, timeoutMs: 30_000 });
const log = path.join(home, 'audit.jsonl');

async function fileRecords(file = log): Promise<Rec[]> {
  return (await readFile(file, 'utf8'))
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Rec);
}

t.before(async () => {
  const secrets = path.join(tmp, 'secret.gpg');
  await writeFile(secrets, await exportSecretKey(ws, key.fingerprint), { mode: 0o600 });
  const imp = await kt(['keys', 'import', secrets]);
  if (imp.code !== 0) throw new Error(`keys import: ${imp.stderr}`);
  await rm(secrets);

  const pin = await makePinentryScript({ confirm: ['ok', 'cancel'] });
  const loaded = mergeFlags(await loadConfig(home), { backend: 'builtin' });
  const rt = await openHolderRuntime(home, {
    ...loaded,
    pinentryProgram: await pin.standaloneProgram(),
    policy: [
      ALLOW_BLIND_RULE,
      { front: 'ssh', host: 'deny.example', action: 'deny', origin: 'test: deny' },
      { front: 'ssh', host: 'ask.example', action: 'confirm', origin: 'test: confirm' },
      { front: 'ssh', host: 'build1.example', action: 'allow', origin: 'test: allow' },
      ...loaded.policy,
    ],
  });
  const servers: net.Server[] = [];
  const open = new Set<net.Socket>();
  const socketFor = async (name: string, requester: Requester) => {
    const socket = path.join(tmp, `S.${name}`);
    servers.push(
      await listenUnix(socket, (sock) => {
        open.add(sock);
        sock.on('close', () => open.delete(sock));
        sock.on('error', () => sock.destroy());
        void serveAgent(sock, { holder: rt.holder, requester });
      }),
    );
    return socket;
  };
  const fronts = {
    local: await socketFor('local', { front: 'local' }),
    build1: await socketFor('build1', { front: 'ssh', host: 'build1.example' }),
    deny: await socketFor('deny', { front: 'ssh', host: 'deny.example' }),
    ask: await socketFor('ask', { front: 'ssh', host: 'ask.example' }),
  };
  const client = await clientHome(fronts.local, await exportPublicKey(ws, key.fingerprint));
  try {
    // Seven requests: two allowed locally, two allowed for build1, one denied by policy, one
    // confirmed and one refused at the (scripted) confirmation.
    const plan: [keyof typeof fronts, boolean][] = [
      ['local', true],
      ['build1', true],
      ['deny', false],
      ['local', true],
      ['ask', true],
      ['ask', false],
      ['build1', true],
    ];
    for (const [front, succeeds] of plan) {
      await redirectAgentSocket(client, fronts[front]);
      const r = await client.gpg(['--batch', '-u', key.fingerprint, '--detach-sign'], {
        input: `via ${front}\n`,
      });
      if ((r.code === 0) !== succeeds) {
        throw new Error(`gpg through ${front} exited ${r.code}: ${r.stderr}`);
      }
    }
  } finally {
    await client.cleanup();
    for (const s of open) s.destroy();
    await Promise.all(servers.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
    await rt.close();
    await pin.cleanup();
  }
});

interface ListJson {
  file: string;
  total: number;
  matched: number;
  unreadable: number;
  chain: { ok: boolean; records?: number; head?: string; record?: number; reason?: string };
  records: Rec[];
}

async function listJson(args: string[]): Promise<ListJson> {
  const r = await kt(['audit', 'list', '--json', ...args]);
  if (r.code !== 0) throw new Error(`audit list ${args.join(' ')} failed (${r.code}): ${r.stderr}`);
  return JSON.parse(r.stdout) as ListJson;
}

t.test('every record, and each filter, as audit.jsonl has them', async (t) => {
  const all = await fileRecords();
  t.equal(all.length, 7, 'seven requests, seven records');
  t.same(
    all.map((r) => r.decision),
    ['allowed', 'allowed', 'denied', 'allowed', 'confirmed', 'denied', 'allowed'],
    'decided by policy and the pinentry as planned',
  );

  const every = await listJson([]);
  t.same(every.records, all, 'unfiltered: the records as the file holds them');
  t.match(every, { total: 7, matched: 7, unreadable: 0, chain: { ok: true, records: 7 } });
  t.equal(every.chain.head, 'agrees', 'and the head file agrees');

  const cases: [string[], (r: Rec) => boolean][] = [
    [['--host', 'build1.example'], (r) => r.host === 'build1.example'],
    [['--host', 'BUILD1.example'], (r) => r.host === 'build1.example'],
    [['--decision', 'denied'], (r) => r.decision === 'denied'],
    [['--decision', 'allowed', '--host', 'ask.example'], () => false],
    [['--key', key.fingerprint], (r) => r.fingerprint === key.fingerprint],
    [['--key', key.keygrip.toLowerCase()], (r) => r.keygrip === key.keygrip],
    [['--key', key.fingerprint.slice(-16)], (r) => r.fingerprint === key.fingerprint],
    [['--key', 'AB'.repeat(20)], () => false],
    [['--since', all[3]!.time], (r) => r.time >= all[3]!.time],
    [['--until', all[3]!.time], (r) => r.time < all[3]!.time],
    [
      ['--since', all[1]!.time, '--until', all[5]!.time],
      (r) => r.time >= all[1]!.time && r.time < all[5]!.time,
    ],
    [['--since', '1h'], () => true],
    [['--until', '1h'], () => false],
    [['--since', all[0]!.time.slice(0, 10)], () => true],
  ];
  // The CLI for a few, the module behind it (and the web page) for all: one process each is slow.
  const viaCli = new Set([0, 6, 10]);
  for (const [i, [args, pred]] of cases.entries()) {
    const text: Record<string, string> = {};
    for (let a = 0; a < args.length; a += 2) text[args[a]!.slice(2)] = args[a + 1]!;
    const got = viaCli.has(i)
      ? await listJson(args)
      : await queryAuditLog(log, { filter: parseAuditFilter(text), limit: 1000 });
    const want = all.filter(pred);
    t.same(got.records, want, `${args.join(' ')}: ${want.length} records`);
    t.equal(got.matched, want.length, `${args.join(' ')}: matched`);
  }

  const last2 = await kt(['audit', 'list', '--limit', '2', '--json']);
  t.same((JSON.parse(last2.stdout) as ListJson).records, all.slice(-2), '--limit keeps the latest');
  t.equal((JSON.parse(last2.stdout) as ListJson).matched, 7);
});

t.test('one readable line per record', async (t) => {
  const all = await fileRecords();
  const r = await kt(['audit', 'list', '--host', 'ask.example']);
  t.equal(r.code, 0, r.stderr);
  t.equal(r.stderr, '');
  const lines = r.stdout.split('\n').filter(Boolean);
  const asked = all.filter((x) => x.host === 'ask.example');
  t.equal(lines.length, asked.length);
  lines.forEach((line, i) => {
    const rec = asked[i]!;
    t.equal(
      line.slice(0, 19),
      `${rec.time.slice(0, 10)} ${rec.time.slice(11, 19)}`,
      'starts with its date and time',
    );
    t.match(line, `ssh, host ask.example`);
    t.match(line, `sign key ${key.fingerprint} (blind): ${rec.decision}`);
  });

  const limited = await kt(['audit', 'list', '--limit', '3']);
  t.equal(limited.stdout.split('\n').filter(Boolean).length, 3);
  t.equal(limited.stderr, '(the last 3 of 7 matching records; --limit shows more)\n');
});

t.test('summary: per-day counts by decision, and the chain', async (t) => {
  const all = await fileRecords();
  const day = all[0]!.time.slice(0, 10);
  t.ok(
    all.every((r) => r.time.startsWith(day)),
    'the records share a day (the test does not run across midnight UTC)',
  );
  const count = (recs: Rec[], d: string) => recs.filter((r) => r.decision === d).length;
  const r = await kt(['audit', 'summary', '--json']);
  t.equal(r.code, 0, r.stderr);
  const doc = JSON.parse(r.stdout) as {
    total: number;
    matched: number;
    days: unknown[];
    chain: unknown;
  };
  t.same(doc.days, [
    {
      day,
      total: all.length,
      allowed: count(all, 'allowed'),
      confirmed: count(all, 'confirmed'),
      denied: count(all, 'denied'),
      canceled: count(all, 'canceled'),
      failed: count(all, 'failed'),
    },
  ]);
  t.match(doc, { total: 7, matched: 7, chain: { ok: true, records: 7, head: 'agrees' } });

  const build1 = all.filter((x) => x.host === 'build1.example');
  const f = await kt(['audit', 'summary', '--host', 'build1.example', '--json']);
  t.match(JSON.parse(f.stdout), {
    matched: build1.length,
    days: [{ day, total: build1.length, allowed: build1.length, denied: 0 }],
  });

  const text = await kt(['audit', 'summary', '--decision', 'allowed']);
  t.equal(text.code, 0, text.stderr);
  t.match(text.stdout, `audit log ${log}: 7 records\n`);
  t.match(text.stdout, /^chain OK: 7 records \(its head file agrees\)$/m);
  t.match(text.stdout, `matching decision allowed: ${count(all, 'allowed')} operations`);
  t.match(
    text.stdout,
    new RegExp(`^${day} +${count(all, 'allowed')} +${count(all, 'allowed')} +0 +0 +0 +0$`, 'm'),
  );
});

t.test('a damaged chain is reported, and the records are still read', async (t) => {
  const dir = await mkdtemp('/tmp/ktaq-damage-');
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const all = await fileRecords();
  const lines = (await readFile(log, 'utf8')).split('\n');

  // An edited record: build1 becomes build2 in record 2.
  const edited = path.join(dir, 'edited.jsonl');
  await writeFile(
    edited,
    lines.map((l, i) => (i === 1 ? l.replace('build1', 'build2') : l)).join('\n'),
  );
  const e = await kt(['audit', 'summary', '--file', edited, '--json']);
  t.equal(e.code, 0, e.stderr);
  t.match(JSON.parse(e.stdout), {
    total: 7,
    matched: 7,
    chain: {
      ok: false,
      record: 2,
      reason: 'its hash does not match its contents (the record was edited)',
    },
  });
  const el = await kt(['audit', 'list', '--file', edited, '--host', 'build2.example']);
  t.equal(
    el.stdout.split('\n').filter(Boolean).length,
    1,
    'the edited record is shown as it reads now',
  );
  t.equal(
    el.stderr,
    'warning: chain BROKEN: record 2 is broken: its hash does not match its contents (the record was edited) (see keytether audit verify)\n',
  );
  const et = await kt(['audit', 'summary', '--file', edited]);
  t.match(et.stdout, /^chain BROKEN: record 2 is broken: its hash does not match/m);

  // A line that is no record at all, and one far longer than any record.
  const garbled = path.join(dir, 'garbled.jsonl');
  await writeFile(
    garbled,
    [lines[0], 'not json', lines[1], 'x'.repeat(200_000), ...lines.slice(2)].join('\n'),
  );
  const g = await listJson(['--file', garbled]);
  t.match(g, { total: 9, unreadable: 2, chain: { ok: false, record: 2 } });
  t.same(g.records, all, 'every record is still listed');

  // Records cut off the end leave a valid chain; the head file beside the log says so.
  const cut = path.join(dir, 'cut.jsonl');
  await writeFile(cut, `${lines.slice(0, 5).join('\n')}\n`);
  await copyFile(`${log}.head`, `${cut}.head`);
  const c = await listJson(['--file', cut]);
  t.equal(c.records.length, 5);
  t.same(c.chain, {
    ok: false,
    reason:
      'the log holds 5 records but its head file says 7 were written: records were removed from its end',
  });
});

t.test('flags it cannot read are refused in one line, exit 2', async (t) => {
  const bad: [string[], string][] = [
    [
      ['--since', 'yesterday'],
      "--since takes a date (2026-12-07, 2026-12-07T14:00Z) or an age (90m, 24h, 7d), not 'yesterday'",
    ],
    [
      ['--until', '2026-02-30'],
      "--until takes a date (2026-12-07, 2026-12-07T14:00Z) or an age (90m, 24h, 7d), not '2026-02-30'",
    ],
    [['--since', '2026-12-07T25:00'], '--since takes a date'],
    [['--since', '999999h'], '--since takes a date'],
    [
      ['--decision', 'maybe'],
      "--decision takes one of allowed, confirmed, denied, canceled, failed, not 'maybe'",
    ],
    [
      ['--key', 'xyz'],
      "--key takes a fingerprint, keygrip, 16-digit key id or SSH SHA256: fingerprint, not 'xyz'",
    ],
    [['--host', 'h'.repeat(300)], '--host takes at most 256 characters'],
    [
      ['--since', '2026-12-07', '--until', '2026-12-06'],
      '--since (2026-12-07T00:00:00.000Z) must be before --until (2026-12-06T00:00:00.000Z)',
    ],
    [['--limit', '0'], "option '--limit <n>' argument '0' is invalid."],
  ];
  for (const sub of ['list', 'summary']) {
    // summary parses its filters with the same code: two of them show it.
    for (const [args, message] of sub === 'list' ? bad : bad.slice(0, 2)) {
      const r = await kt(['audit', sub, ...args]);
      t.equal(r.code, 2, `${sub} ${args.join(' ')}: exit 2`);
      t.equal(r.stdout, '');
      t.equal(r.stderr.split('\n').filter(Boolean).length, 1, 'one line');
      t.match(r.stderr, `keytether audit ${sub}: ${message}`);
    }
  }
  const missing = await kt(['audit', 'list', '--file', path.join(tmp, 'nope.jsonl')]);
  t.equal(missing.code, 1);
  t.match(
    missing.stderr,
    /^keytether audit list: there is no audit log at .*nope\.jsonl: check --home or --file/,
  );
});
