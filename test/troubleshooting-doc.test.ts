// docs/troubleshooting.md covers every sentence keytether prints when something fails, and only
// sentences that still exist. The sentences come from the source (test/support/user-messages.ts
// says which constructs it scans, and shows each computed part as `…`); the doc's entries are the
// code spans at the start of its list items, before the ` — ` that starts the explanation (an item
// may name several sentences, each in its own code span).
//
// The matching rule: an entry covers a sentence when the entry, read with each `…` as "anything",
// matches the sentence from its start. So an entry may stop early (a prefix, ending in `…`) and
// may put `…` wherever the source computes something, but any literal text it gives must be the
// source's. Whitespace is collapsed on both sides. A sentence no entry covers fails the test by
// name and place in the source; an entry that covers no sentence fails as stale.

import t from 'tap';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { repoRoot } from './support/cli.js';
import { collectUserMessages, normalise, PLACEHOLDER } from './support/user-messages.js';

const DOC = path.join(repoRoot, 'docs', 'troubleshooting.md');

interface Entry {
  text: string;
  line: number;
  pattern: RegExp;
}

function entries(markdown: string): Entry[] {
  const out: Entry[] = [];
  markdown.split('\n').forEach((raw, i) => {
    if (!raw.startsWith('- ')) return;
    const lead = raw.split(' — ')[0]!;
    // `text` or `` text with `backticks` ``, as CommonMark reads code spans.
    for (const m of lead.matchAll(/(`+)(?!`)\s?(.+?)\s?\1(?!`)/g)) {
      const text = normalise(m[2]!);
      const pattern = new RegExp(
        '^' +
          text
            .split(PLACEHOLDER)
            .map((s) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'))
            .join('.*?'),
        's',
      );
      out.push({ text, line: i + 1, pattern });
    }
  });
  return out;
}

t.test(
  'every user-facing error sentence is in docs/troubleshooting.md, and only those',
  async (t) => {
    const messages = collectUserMessages(repoRoot);
    const docEntries = entries(await readFile(DOC, 'utf8'));
    // A scan that finds next to nothing would make this test pass vacuously.
    t.ok(messages.length > 150, `the scan found ${messages.length} sentences`);
    t.ok(docEntries.length > 150, `the doc has ${docEntries.length} entries`);

    const missing = messages.filter((m) => !docEntries.some((e) => e.pattern.test(m.text)));
    t.same(
      missing.map((m) => `${m.sites[0]}: ${m.text}`),
      [],
      'sentences the doc does not cover (add an entry under the section where users meet them)',
    );
    const stale = docEntries.filter((e) => !messages.some((m) => e.pattern.test(m.text)));
    t.same(
      stale.map((e) => `docs/troubleshooting.md:${e.line}: ${e.text}`),
      [],
      'doc entries no sentence in the source matches any more (update or remove them)',
    );
  },
);

t.test('the scan reads what the matching rule assumes', async (t) => {
  const messages = collectUserMessages(repoRoot);
  const byText = (s: string) => messages.find((m) => m.text.startsWith(s));
  // A template literal: its `${…}` parts become the placeholder.
  t.match(byText('no keytether agent is running for'), {
    text: 'no keytether agent is running for …; start one with keytether agent',
    sites: [/^cli\/commands\/status\.ts:\d+$/],
  });
  // `a ? 'x' : 'y'` as the message: both sentences.
  for (const s of [
    'the keytether agent at … refused the request: …',
    '… does not speak the keytether control protocol',
    // The facade's gpg-facing text, the relay's refusal reasons and both close-code tables.
    'the relay connection to the holder is down',
    'holder not connected',
    'the token has expired; create a new one',
    'another holder with the same identity connected to the relay',
  ]) {
    t.ok(byText(s), `found: ${s}`);
  }
  // A message passed on whole (`new UserError(e.message)`) is no sentence of its own.
  t.notOk(
    messages.some((m) => m.text === PLACEHOLDER),
    'no entry-less placeholder sentences',
  );
});
