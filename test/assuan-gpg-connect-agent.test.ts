// Our Assuan server driven by the real libassuan client in gpg-connect-agent (GnuPG 2.2.40).

import t from 'tap';
import net from 'node:net';
import { spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ErrorCode, GpgError } from '../protocol/gpg-error.js';
import { serveAssuan } from '../protocol/assuan/index.js';

function run(
  args: string[],
  env: Record<string, string>,
): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn('gpg-connect-agent', args, {
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString('latin1')));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, out, err });
    });
  });
}

t.test('gpg-connect-agent -S talks to serveAssuan', async (t) => {
  const dir = await mkdtemp('/tmp/kt-gca-');
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const socket = join(dir, 'S.agent');
  const inqFile = join(dir, 'ct');
  await writeFile(inqFile, Buffer.from('line1\nline2 100%\r\0end'), { mode: 0o600 });

  let inquired: Buffer | undefined;
  const server = net.createServer((sock) => {
    void serveAssuan(sock, {
      commands: {
        GETINFO: (ctx) => {
          if (ctx.args !== 'version') throw new GpgError(ErrorCode.ASS_PARAMETER);
          ctx.sendData('2.2.40');
        },
        KEYINFO: (ctx) => {
          ctx.sendStatus('KEYINFO', ctx.args, 'D', '-', '-', '-', 'C', '-', '-', '-');
        },
        PKDECRYPT: async (ctx) => {
          ctx.sendStatus('INQUIRE_MAXLEN', '4096');
          inquired = await ctx.inquire('CIPHERTEXT', { maxLength: 4096 });
          ctx.sendData(inquired);
        },
      },
    });
  });
  await new Promise<void>((resolve) => server.listen(socket, resolve));
  t.teardown(() => new Promise((resolve) => server.close(resolve)));

  const res = await run(
    [
      '--no-autostart',
      '-S',
      socket,
      `/definqfile CIPHERTEXT ${inqFile}`,
      'GETINFO version',
      'KEYINFO 0123ABCD',
      'FROBNICATE',
      'PKDECRYPT',
      '/bye',
    ],
    { GNUPGHOME: dir },
  );
  t.equal(res.code, 0, res.err);
  t.same(res.out.split('\n'), [
    'D 2.2.40',
    'OK',
    'S KEYINFO 0123ABCD D - - - C - - -',
    'OK',
    'ERR 67109139 Unknown IPC command <GPG Agent>',
    'S INQUIRE_MAXLEN 4096',
    'INQUIRE CIPHERTEXT',
    // gpg-connect-agent prints D data with its own escaping (CR, LF, % escaped; NUL raw).
    'D line1%0Aline2 100%25%0D\0end',
    'OK',
    '',
  ]);
  t.same(inquired, Buffer.from('line1\nline2 100%\r\0end'), 'inquiry data arrived intact');
});
