// The payload files the shell shim leaves for the facade (server/payload-file.ts): any process
// that reaches the agent socket can name one, so only a file the shim could have made is read.
// Real files, a real FIFO, a real symlink and a sparse file over the cap.

import t from 'tap';
import { execFileSync } from 'node:child_process';
import { chown, mkdtemp, rm, symlink, truncate, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { payloadFileReader } from '../server/payload-file.js';
import { ContentStore, contentTag } from '../protocol/agent/content.js';
import { MAX_CONTENT_BYTES } from '../protocol/keyholder.js';

const COMMIT = `tree ${'a'.repeat(40)}\nauthor A <a@x> 1 +0000\ncommitter A <a@x> 1 +0000\n\nm\n`;

t.test('a payload file and its repo lines are read as the shim wrote them', async (t) => {
  const dir = await mkdtemp('/tmp/ktpf-');
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  await writeFile(path.join(dir, '.payload.42'), COMMIT, { mode: 0o600 });
  await writeFile(
    path.join(dir, '.payload.42.repo'),
    'cwd=/srv/repo\nGIT_DIR=\nGIT_COMMON_DIR=\nGIT_OBJECT_DIRECTORY=/srv/o\n' +
      'GIT_ALTERNATE_OBJECT_DIRECTORIES=\n',
  );
  const before = Math.floor(Date.now() / 1000);
  const got = await payloadFileReader(dir)('42');
  t.equal(Buffer.from(got!.content.data).toString(), COMMIT);
  t.match(got!.content, { kind: 'git-commit', mode: 'binary' });
  t.ok(got!.content.time >= before && got!.content.time <= before + 5, "the facade's clock");
  t.same(got!.repo, { cwd: '/srv/repo', env: { GIT_OBJECT_DIRECTORY: '/srv/o' } });

  // Without (or with a broken) repo file the payload still counts; only the objects are lost.
  await writeFile(path.join(dir, '.payload.43'), 'object abc\n');
  await writeFile(path.join(dir, '.payload.43.repo'), 'cwd=relative\n');
  const plain = await payloadFileReader(dir)('43');
  t.equal(plain!.content.kind, 'file', 'not a full object id: an ordinary payload');
  t.equal(plain!.repo, undefined);
});

t.test('only a regular file of ours, in that directory, under the cap, is read', async (t) => {
  const dir = await mkdtemp('/tmp/ktpf-');
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const read = payloadFileReader(dir);
  const secret = path.join(dir, 'secret');
  await writeFile(secret, 'not for the holder\n');

  await symlink(secret, path.join(dir, '.payload.1'));
  t.equal(await read('1'), undefined, 'a symlink is not followed');

  execFileSync('mkfifo', [path.join(dir, '.payload.2')]);
  const t0 = performance.now();
  t.equal(await read('2'), undefined, 'a FIFO is refused');
  t.ok(performance.now() - t0 < 2000, 'and does not stall the facade waiting for a writer');

  await writeFile(path.join(dir, '.payload.3'), COMMIT);
  await truncate(path.join(dir, '.payload.3'), MAX_CONTENT_BYTES + 1);
  t.equal(await read('3'), undefined, 'over the 64 MiB cap');

  await writeFile(path.join(dir, '.payload.4'), COMMIT);
  if (process.getuid?.() === 0) {
    await chown(path.join(dir, '.payload.4'), 65534, 65534);
    t.equal(await read('4'), undefined, "another user's file");
  }

  for (const id of ['../secret', '5/../../etc/passwd', '', '12345678901', '1e3']) {
    t.equal(await read(id), undefined, `id ${JSON.stringify(id)} names no file`);
  }
  t.equal(await read('99'), undefined, 'no such file');
});

t.test('PINENTRY_USER_DATA: the last tag wins; a file tag reaches the store', async (t) => {
  const nonce = 'A'.repeat(22);
  t.same(contentTag(`keytether-file=7 keytether-req=${nonce}`), { kind: 'nonce', value: nonce });
  t.same(contentTag(`keytether-req=${nonce} keytether-file=7`), { kind: 'file', value: '7' });
  t.same(contentTag('user-stuff keytether-file=12'), { kind: 'file', value: '12' });
  t.equal(contentTag('keytether-file=../x'), undefined);
  t.equal(contentTag('keytether-file='), undefined);
  t.equal(contentTag(undefined), undefined);

  const dir = await mkdtemp('/tmp/ktpf-');
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  await writeFile(path.join(dir, '.payload.9'), 'release notes\n');
  const store = new ContentStore({ readPayloadFile: payloadFileReader(dir) });
  const got = await store.tagged('keytether-file=9');
  t.equal(Buffer.from(got!.data).toString(), 'release notes\n');
  t.equal(await new ContentStore().tagged('keytether-file=9'), undefined, 'no reader: no file');
});
