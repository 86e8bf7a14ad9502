// config.toml (workstation/home/config.ts parseConfig: smol-toml, then the zod schema, then the
// problem sentences).
// Oracle: parseConfig returns a Config or throws ConfigError, nothing else; the message and each
// listed problem are one line that names the file; an accepted config has every duration a whole
// number of milliseconds within its bounds and as many policy rules as the file has.

import fc from 'fast-check';
import {
  CONFIG_KEYS,
  ConfigError,
  parseConfig,
  POLICY_RULE_KEYS,
} from '../../../workstation/home/config.js';
import { violation, type FuzzTarget } from '../harness.js';
import { mutateText, mutations, rawText } from '../gen.js';

const FILE = '/fuzz/home/config.toml';

const durationText = fc.oneof(
  fc.constantFrom(
    '"60s"',
    '"1h30m"',
    '"15m"',
    '600',
    '0',
    '"0s"',
    '"30d"',
    '"99999999d"',
    '"1x"',
    '""',
    '-1',
    '1.5',
    '"1H"',
  ),
  fc.integer({ min: -10, max: 2 ** 53 }).map(String),
  fc.string({ maxLength: 10 }).map((s) => JSON.stringify(s)),
);
const tomlString = fc.oneof(
  fc.string({ maxLength: 40 }).map((s) => JSON.stringify(s)),
  fc.constantFrom(
    '"builtin"',
    '"gpg-agent"',
    '"auto"',
    '"write"',
    '"fsync"',
    '"~/.gnupg"',
    '"*"',
    '"sign"',
    '"decrypt"',
    '"allow"',
    '"confirm"',
    '"deny"',
    '"required"',
    '"preferred"',
    '"off"',
    '"local"',
    '"ssh"',
    '"relay"',
    '"git"',
    `"${'A'.repeat(40)}"`,
    '"0x0123456789ABCDEF"',
    "'literal'",
    '"""multi\nline"""',
    '"\\u0000"',
    '"\\uD800"',
  ),
);
const value = fc.oneof(
  tomlString,
  durationText,
  fc.constantFrom(
    'true',
    'false',
    '[]',
    '["https://relay.example:7878"]',
    '{}',
    '1979-05-27T07:32:00Z',
    'inf',
    'nan',
    '0x10',
  ),
  fc.array(tomlString, { maxLength: 3 }).map((a) => `[${a.join(', ')}]`),
);
const key = (keys: readonly string[]) =>
  fc.oneof(
    { weight: 5, arbitrary: fc.constantFrom(...keys) },
    { weight: 1, arbitrary: fc.constantFrom('nosuch', '"quoted key"', 'a.b', 'Policy') },
  );
const assignments = (keys: readonly string[]) =>
  fc.array(
    fc.tuple(key(keys), value).map(([k, v]) => `${k} = ${v}`),
    { maxLength: 6 },
  );

const document = fc
  .record({
    top: assignments(CONFIG_KEYS),
    rules: fc.array(assignments(POLICY_RULE_KEYS), { maxLength: 4 }),
    header: fc.constantFrom('[[policy]]', '[[policy]]', '[policy]', '[[ policy ]]', '[[nosuch]]'),
    m: mutations(2),
  })
  .map(({ top, rules, header, m }) =>
    mutateText([...top, ...rules.flatMap((r) => ['', header, ...r])].join('\n') + '\n', m),
  );

const MAX_DURATION_CHECK = 2 ** 53;

export const configTarget: FuzzTarget<string> = {
  name: 'config',
  oracle:
    'parseConfig returns a Config or throws ConfigError with one-line sentences naming the file; ' +
    'accepted durations are bounded whole milliseconds',
  generators: [
    { name: 'format', arb: document },
    { name: 'bytes', arb: rawText(1500) },
  ],
  check(text) {
    let c;
    try {
      c = parseConfig(text, FILE);
    } catch (e) {
      if (!(e instanceof ConfigError)) throw e;
      for (const line of [e.message, ...e.problems]) {
        if (/[\r\n]/.test(line))
          violation(`a config problem spans lines: ${JSON.stringify(line.slice(0, 120))}`);
        if (line.length > 2000) violation('a config problem longer than 2000 characters');
      }
      if (!e.message.includes(FILE) && !e.problems.some((p) => p.includes(FILE))) {
        violation(`refusal does not name the file: ${JSON.stringify(e.message.slice(0, 120))}`);
      }
      return;
    }
    for (const ms of [c.pinentryTimeoutMs, c.defaultCacheTtlMs, c.maxCacheTtlMs, c.tokenMaxTtlMs]) {
      if (!Number.isSafeInteger(ms) || ms < 0 || ms > MAX_DURATION_CHECK)
        violation(`duration ${ms}`);
    }
    for (const r of c.policy)
      if (typeof r.origin !== 'string' || !r.origin.includes(FILE)) violation('rule origin');
  },
};
