// docs/relay-metrics.md and the example alert rules stay true: every metric a relay (with and
// without TLS) exposes is documented, every refusal reason the relay can count is explained, and
// every alert names only metrics that exist.

import t from 'tap';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { parse } from 'yaml';
import { buildRelay } from '../server/relay/index.js';
import { repoRoot } from './support/cli.js';

const execFileP = promisify(execFile);

async function metricFamilies(tls: boolean, redis?: string): Promise<Set<string>> {
  let https: { cert: Buffer; key: Buffer } | undefined;
  if (tls) {
    const dir = await mkdtemp('/tmp/kt-metrics-');
    try {
      await execFileP(
        'openssl',
        [
          'req',
          '-x509',
          '-newkey',
          'ec',
          '-pkeyopt',
          'ec_paramgen_curve:prime256v1',
          '-nodes',
        ].concat(['-keyout', 'k.pem', '-out', 'c.pem', '-days', '1', '-subj', '/CN=127.0.0.1']),
        { cwd: dir },
      );
      https = {
        cert: await readFile(path.join(dir, 'c.pem')),
        key: await readFile(path.join(dir, 'k.pem')),
      };
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }
  // With --redis (never connected here: metrics exist before the connection does).
  const app = buildRelay({
    logger: false,
    ...(https ? { https } : {}),
    ...(redis ? { redis } : {}),
  });
  try {
    const body = (await app.inject({ method: 'GET', url: '/metrics' })).body;
    return new Set([...body.matchAll(/^# TYPE (\S+) /gm)].map((m) => m[1]!));
  } finally {
    await app.close();
  }
}

const doc = await readFile(path.join(repoRoot, 'docs', 'relay-metrics.md'), 'utf8');
const rulesFile = path.join(repoRoot, 'deploy', 'prometheus', 'keytether-relay.rules.yml');

t.test('every metric is documented, and only those', async (t) => {
  const plain = await metricFamilies(false);
  const tls = await metricFamilies(true);
  t.ok(tls.has('keytether_relay_tls_certificate_not_after_seconds'), 'TLS adds its series');
  t.notOk(plain.has('keytether_relay_tls_certificate_not_after_seconds'), 'and only with TLS');
  const redis = await metricFamilies(false, 'redis://127.0.0.1:1');
  t.ok(redis.has('keytether_relay_redis_up'), '--redis adds its series');
  t.notOk(plain.has('keytether_relay_redis_up'), 'and only with --redis');
  for (const m of redis) tls.add(m);
  const documented = new Set(
    [...doc.matchAll(/^\| `(keytether_relay_\w+)`\s*\|/gm)].map((m) => m[1]!),
  );
  t.same([...documented].sort(), [...tls].sort(), 'the table lists exactly the exposed metrics');
});

t.test('every refusal reason the relay counts is explained', async (t) => {
  const dir = path.join(repoRoot, 'server', 'relay');
  const reasons = new Set<string>();
  for (const f of await readdir(dir)) {
    if (!f.endsWith('.ts')) continue;
    const src = await readFile(path.join(dir, f), 'utf8');
    for (const m of src.matchAll(/refusals\.inc\(\{ reason: '([a-z_]+)' \}\)/g)) reasons.add(m[1]!);
    // this.refuse(ws, log, code, text, 'metric_reason'): the last literal is the metric's.
    // refusal(code, 'text', 'metric_reason'), as hub.ts decides a stream's admission.
    for (const m of src.matchAll(/\brefusal\(\s*CloseCode\.\w+,\s*'[^']*',\s*'([a-z_]+)'\s*\)/g)) {
      reasons.add(m[1]!);
    }
    for (const m of src.matchAll(/this\.refuse\(([^;]*?)\);/gs)) {
      const literals = [...m[1]!.matchAll(/'([a-z_]+)'/g)];
      if (literals.length) reasons.add(literals.at(-1)![1]!);
    }
  }
  t.ok(reasons.size >= 10, `found the relay's reasons (${reasons.size})`);
  const explained = new Set(
    [...doc.matchAll(/^\| `([a-z_]+)`\s*\|/gm)]
      .map((m) => m[1]!)
      .filter((r) => !r.startsWith('keytether_')),
  );
  for (const r of reasons) t.ok(explained.has(r), `reason ${r} is explained`);
  for (const r of explained) t.ok(reasons.has(r), `explained reason ${r} exists`);
});

t.test('the example alerts parse and name only real metrics', async (t) => {
  const families = await metricFamilies(true);
  const rules = parse(await readFile(rulesFile, 'utf8')) as {
    groups: { name: string; rules: Record<string, unknown>[] }[];
  };
  const alerts = rules.groups.flatMap((g) => g.rules);
  t.ok(alerts.length >= 5);
  for (const r of alerts) {
    const name = String(r.alert);
    t.match(r, { alert: /^Keytether\w+$/, expr: String, labels: { severity: String } }, name);
    t.match(r.annotations, { summary: String }, `${name} has a summary`);
    if (r.for !== undefined) t.match(r.for, /^\d+[smh]$/, `${name}: for is a duration`);
    for (const m of String(r.expr).matchAll(/keytether_relay_\w+/g)) {
      const family = m[0].replace(/_(bucket|sum|count)$/, '');
      t.ok(families.has(family), `${name} uses ${family}, which the relay exposes`);
    }
    t.ok(doc.includes(`**${name}**`), `${name} is described in docs/relay-metrics.md`);
  }
  const described = [...doc.matchAll(/\*\*(Keytether\w+)\*\*/g)].map((m) => m[1]!);
  t.same(described.sort(), alerts.map((r) => String(r.alert)).sort(), 'no described alert missing');
});
