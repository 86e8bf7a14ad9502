// docs/config.example.toml is the user's reference for config.toml: every setting the schema
// accepts, with its default. Parsed here with the real parser so it cannot drift from the code.

import t from 'tap';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parse as parseToml } from 'smol-toml';
import {
  CONFIG_KEYS,
  DEFAULT_CONFIG,
  POLICY_RULE_KEYS,
  parseConfig,
} from '../workstation/home/config.js';
import { repoRoot } from './support/cli.js';

const file = join(repoRoot, 'docs', 'config.example.toml');
const text = await readFile(file, 'utf8');
// Settings are commented as `#name = …` (no space), prose as `# …`.
const uncommented = text.replace(/^#(?=[a-z[])/gm, '');

t.test('as shipped, every line is a comment: the file changes nothing', async (t) => {
  const c = parseConfig(text, file);
  t.same({ ...c, file: undefined }, { ...DEFAULT_CONFIG, relay: [], policy: [] });
});

t.test('uncommented, it is a valid config naming every setting and rule field', async (t) => {
  const c = parseConfig(uncommented, file);
  const raw = parseToml(uncommented) as Record<string, unknown>;
  for (const key of CONFIG_KEYS) t.ok(key in raw, `documents ${key}`);
  const ruleFields = new Set(
    (raw.policy as Record<string, unknown>[]).flatMap((r) => Object.keys(r)),
  );
  for (const key of POLICY_RULE_KEYS) t.ok(ruleFields.has(key), `documents policy field ${key}`);
  t.equal(c.policy.length, 3);

  // Where a setting has a default, the example shows that default.
  t.equal(c.pinentryTimeoutMs, DEFAULT_CONFIG.pinentryTimeoutMs, 'pinentry-timeout');
  t.equal(c.defaultCacheTtlMs, DEFAULT_CONFIG.defaultCacheTtlMs, 'default-cache-ttl');
  t.equal(c.maxCacheTtlMs, DEFAULT_CONFIG.maxCacheTtlMs, 'max-cache-ttl');
  t.equal(c.backend, DEFAULT_CONFIG.backend, 'backend');
  t.equal(c.auditSync, DEFAULT_CONFIG.auditSync, 'audit-sync');
  t.equal(c.tokenMaxTtlMs, DEFAULT_CONFIG.tokenMaxTtlMs, 'token-max-ttl');
  t.same(c.limits, DEFAULT_CONFIG.limits, 'the limits');
});

t.test('every setting has a line of explanation above it', async (t) => {
  const lines = text.split('\n');
  for (const key of CONFIG_KEYS.filter((k) => k !== 'policy')) {
    const at = lines.findIndex((l) => l.startsWith(`#${key} = `));
    t.ok(at > 0 && lines[at - 1]!.startsWith('# '), `${key} is explained`);
  }
});
