// `keytether keys …`: the builtin back end's key store from the command line.

import { readFile } from 'node:fs/promises';
import type { Command } from 'commander';
import { UserError } from '../../system/user-error.js';
import { action, examples, resolveHome } from '../program.js';
import {
  Keystore,
  MAX_IMPORT_BYTES,
  type ListedKey,
  type ListedSubkey,
} from '../../workstation/keystore/index.js';

function out(cmd: Command): (s: string) => void {
  const write = cmd.configureOutput().writeOut;
  return (s) => (write ? write(s) : process.stdout.write(s));
}

async function open(cmd: Command): Promise<Keystore> {
  return Keystore.open(resolveHome(cmd.optsWithGlobals<{ home?: string }>()));
}

async function readInput(file: string | undefined): Promise<{ bytes: Buffer; source: string }> {
  if (file !== undefined && file !== '-') {
    try {
      return { bytes: await readFile(file), source: file };
    } catch (e) {
      throw new UserError(`cannot read ${file}: ${(e as Error).message}`);
    }
  }
  if (process.stdin.isTTY) {
    throw new UserError(
      'no FILE given and stdin is a terminal; run: gpg --export-secret-keys FPR | keytether keys import',
    );
  }
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of process.stdin) {
    const b = chunk as Buffer;
    size += b.length;
    if (size > MAX_IMPORT_BYTES) {
      throw new UserError(
        `stdin is larger than ${MAX_IMPORT_BYTES} bytes; that is not a key export`,
      );
    }
    chunks.push(b);
  }
  return { bytes: Buffer.concat(chunks), source: 'stdin' };
}

function describeLine(tag: string, k: ListedSubkey): string {
  const mark = k.secret ? ' ' : '#';
  const lines = [`${tag}${mark} ${k.algorithm} [${k.usage.join(',')}] ${k.fingerprint}`];
  lines.push(`      keygrip ${k.keygrip ?? '(unsupported algorithm)'}`);
  return lines.join('\n');
}

function formatKey(k: ListedKey): string {
  const ssh = k.format === 'openssh';
  const lines = [describeLine(ssh ? 'ssh' : 'sec', k)];
  for (const uid of k.uids) lines.push(`${ssh ? 'comment' : 'uid  '} ${uid}`);
  for (const s of k.subkeys) lines.push(describeLine('ssb', s));
  return lines.join('\n') + '\n';
}

export function register(program: Command): void {
  const keys = program
    .command('keys')
    .addHelpText(
      'after',
      examples(
        'gpg --export-secret-keys --armor alice@example.org | keytether keys import',
        'keytether keys list',
      ),
    )
    .description('the OpenPGP and OpenSSH secret keys this workstation holds (builtin back end)');

  keys
    .command('import')
    .addHelpText(
      'after',
      examples(
        'gpg --export-secret-keys --armor alice@example.org | keytether keys import',
        'keytether keys import ~/.ssh/id_ed25519',
      ),
    )
    .description(
      'import secret keys from FILE or stdin (output of gpg --export-secret-keys [--armor], or an OpenSSH private key file); passphrases are kept',
    )
    .argument('[file]', 'file to read; stdin when omitted or -')
    .action(
      action(async (file: string | undefined, _opts: unknown, cmd: Command) => {
        const { bytes, source } = await readInput(file);
        // An encrypted PEM SSH key hides its public half; FILE.pub beside it has it.
        const sshPublic =
          file !== undefined && file !== '-'
            ? await readFile(`${file}.pub`, 'utf8').catch(() => undefined)
            : undefined;
        const ks = await open(cmd);
        const write = out(cmd);
        for (const r of await ks.importKeys(bytes, source, sshPublic ? { sshPublic } : {})) {
          write(`imported ${r.fingerprint} ${r.uid}`.trimEnd() + '\n');
        }
      }),
    );

  keys
    .command('list')
    .addHelpText('after', examples('keytether keys list', 'keytether keys list --json'))
    .description('list stored keys with fingerprint, algorithm, usage and keygrip (# marks a stub)')
    .option(
      '--json',
      'print a JSON array of {fingerprint, uids, algorithm, keygrip, usage, subkeys}',
    )
    .action(
      action(async (opts: { json?: boolean }, cmd: Command) => {
        const ks = await open(cmd);
        const list = ks.list();
        const write = out(cmd);
        if (opts.json) write(JSON.stringify(list, null, 2) + '\n');
        else write(list.map(formatKey).join('\n'));
      }),
    );

  keys
    .command('export')
    .addHelpText(
      'after',
      examples('keytether keys export 6F1C2A3B4D5E6F708192A3B4C5D6E7F801234567 > alice.asc'),
    )
    .description('print armored public keys (all when no FPR is given); never secret keys')
    .argument(
      '[fpr...]',
      'primary key fingerprints (SHA256:… of OpenSSH keys: authorized_keys lines)',
    )
    .action(
      action(async (fprs: string[], _opts: unknown, cmd: Command) => {
        const ks = await open(cmd);
        if (fprs.length === 0 && ks.list().length === 0) {
          throw new UserError(
            `no keys stored in ${ks.dir}; import some with keytether keys import`,
          );
        }
        out(cmd)(ks.exportPublic(fprs));
      }),
    );

  keys
    .command('remove')
    .addHelpText(
      'after',
      examples('keytether keys remove 6F1C2A3B4D5E6F708192A3B4C5D6E7F801234567'),
    )
    .description('delete a key (and its subkeys) from the store')
    .argument('<fpr>', 'primary key fingerprint, or SHA256:… of an OpenSSH key')
    .action(
      action(async (fpr: string, _opts: unknown, cmd: Command) => {
        const ks = await open(cmd);
        const removed = await ks.remove(fpr);
        out(cmd)(`removed ${removed}\n`);
      }),
    );
}
