// A server (over SSH) or a facade (over a relay) may say which user and process asks, but never
// which host or token it is: those come from the transport, so policy keyed on them holds.

import t from 'tap';
import { claimedRequester } from '../protocol/keyholder.js';

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
