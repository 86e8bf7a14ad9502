// A server (over SSH) or a facade (over a relay) may say which user and process asks, but never
// which host or token it is: those come from the transport, so policy keyed on them holds.

import t from 'tap';
import { claimedRequester, MAX_PARENTS } from '../protocol/keyholder.js';
import {
  describeProcessChain,
  requestedByLine,
  requesterPrefixedText,
  shortProcessChain,
} from '../workstation/backends/requester-text.js';

t.test('front, host and token id are never taken from a claim', async (t) => {
  const forged = {
    front: 'local' as const,
    host: 'trusted.example',
    tokenId: 'ktt_0123456789abcdef',
    user: 'deploy',
    pid: 4242,
    uid: 1000,
    command: 'git commit -S',
  };
  const kept = claimedRequester(forged);
  t.same(kept, { user: 'deploy', pid: 4242, uid: 1000, command: 'git commit -S' });
  t.notOk('host' in kept || 'tokenId' in kept || 'front' in kept);
});

t.test('claimed text cannot forge lines in a pinentry dialog', async (t) => {
  const kept = claimedRequester({
    user: 'root\n\nkeytether: request from local gpg',
    command: `\u202egnp.exe${'x'.repeat(200)}`,
    pid: -1,
    uid: 1.5,
  });
  t.notMatch(kept.user ?? '', /[\r\n]/);
  t.notMatch(kept.command ?? '', /\u202e/);
  t.ok((kept.command ?? '').length <= 64);
  t.equal(kept.pid, undefined);
  t.equal(kept.uid, undefined);
});

t.test(
  'a claimed process chain is kept cleaned, bounded, and shown as the server says',
  async (t) => {
    const parents = [
      { pid: 41, name: 'git', command: 'git commit -S' },
      { pid: 40, name: 'ba\u202esh', command: `bash\n\nkeytether: request from local gpg` },
      { pid: -3, name: 'bad pid' },
      { pid: 39 } as unknown as { pid: number; name: string },
      ...Array.from({ length: 10 }, (_, i) => ({ pid: 100 + i, name: 'sh' })),
    ];
    const kept = claimedRequester({ pid: 42, name: 'gpg', command: 'gpg -bsau K', parents });
    t.equal(kept.name, 'gpg');
    t.equal(kept.parents?.[0]?.name, 'git');
    t.notMatch(kept.parents?.[1]?.name ?? '', /\u202e/, 'bidi neutralised');
    t.notMatch(kept.parents?.[1]?.command ?? '', /\n/, 'no line survives');
    t.ok(
      kept.parents?.every((p) => p.pid > 0 && p.name.length > 0),
      'malformed entries dropped',
    );
    t.ok((kept.parents?.length ?? 0) <= MAX_PARENTS, 'at most 8');

    const r = { front: 'ssh' as const, host: 'srv', ...kept };
    t.equal(
      describeProcessChain({ ...r, parents: r.parents?.slice(0, 1) }),
      'gpg -bsau K ← git commit -S',
    );
    t.match(
      requestedByLine(r),
      /^requested by: gpg -bsau K ← git commit -S ← .* \(reported by the server\)$/,
    );
    t.ok((describeProcessChain(r) ?? '').length <= 150, 'the chain fits two lines of a pinentry');
    t.equal(shortProcessChain(r)?.startsWith('gpg ← git ← '), true);
    t.equal(requestedByLine({ front: 'ssh' }), undefined, 'nothing when nothing was reported');
    t.match(
      requesterPrefixedText(r, 'Please enter', 'x'),
      /\nrequested by: gpg .*\(reported by the server\)\n\nPlease enter/,
    );
  },
);
