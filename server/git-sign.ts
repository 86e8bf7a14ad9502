// `keytether git-sign`: a gpg.program for git (and a wrapper for `gpg --detach-sign/--clearsign
// FILE`) on a server. It hands the bytes about to be signed to the keytether facade behind the
// agent socket, tags them with a nonce, and then runs the real gpg with the same arguments and
// the same bytes, the nonce in PINENTRY_USER_DATA (gpg passes it to its agent as an OPTION). The
// holder recomputes gpg's digest from those bytes; if it matches, the user is shown what is
// signed, labelled verified. Everything else (verification, listing, a stock gpg-agent behind the
// socket, a failure here) runs gpg unchanged: the shim never stands between git and a signature.

import { spawn } from 'node:child_process';
import { chmod, readFile, rename, stat, writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import net from 'node:net';
import path from 'node:path';
import { AssuanClient } from '../protocol/assuan/index.js';
import {
  CONTENT_COMMAND,
  CONTENT_FILE_TAG,
  CONTENT_TAG,
  contentKind,
} from '../protocol/agent/index.js';
import { MAX_CONTENT_BYTES, type SignContent } from '../protocol/keyholder.js';
import { gnupgDirs } from './gnupg-dirs.js';

export interface SignInvocation {
  mode: SignContent['mode'];
  /** The input files gpg will read; empty means stdin. */
  files: string[];
}

// gpg's short options that take a value (so the next word is not a file name).
const SHORT_WITH_VALUE = new Set(['u', 'o', 'r', 'R', 'e', 'z', 'N']);
const LONG_WITH_VALUE = new Set([
  'local-user',
  'output',
  'recipient',
  'hidden-recipient',
  'default-key',
  'digest-algo',
  'status-fd',
  'logger-fd',
  'passphrase-fd',
  'command-fd',
  'homedir',
  'keyid-format',
  'compress-level',
  'set-filename',
  'sig-notation',
  'trust-model',
]);

/**
 * What a gpg command line signs, or undefined when it is not a plain signing call (verify, list,
 * encrypt+sign, several files): those run through unchanged.
 */
export function signInvocation(args: readonly string[]): SignInvocation | undefined {
  let sign = false;
  let clear = false;
  let text = false;
  let other = false;
  const files: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (a === '--') {
      files.push(...args.slice(i + 1));
      break;
    }
    if (a.startsWith('--')) {
      const name = a.slice(2).split('=')[0]!;
      if (name === 'sign' || name === 'detach-sign') sign = true;
      else if (name === 'clearsign' || name === 'clear-sign') clear = true;
      else if (name === 'textmode') text = true;
      else if (['verify', 'encrypt', 'decrypt', 'symmetric', 'list-keys', 'export'].includes(name))
        other = true;
      if (LONG_WITH_VALUE.has(name) && !a.includes('=')) i++;
      continue;
    }
    if (a.startsWith('-') && a.length > 1) {
      for (let j = 1; j < a.length; j++) {
        const c = a[j]!;
        if (c === 's' || c === 'b') sign = true;
        else if (c === 't') text = true;
        else if (c === 'e' || c === 'c' || c === 'd') other = true;
        if (SHORT_WITH_VALUE.has(c)) {
          if (j === a.length - 1) i++;
          break;
        }
      }
      continue;
    }
    files.push(a);
  }
  if (other || (!sign && !clear) || files.length > 1) return undefined;
  if (files[0] === '-') files.length = 0;
  return { mode: clear ? 'clearsign' : text ? 'text' : 'binary', files };
}

/** libassuan's socket redirect file (`%Assuan%\nsocket=PATH`), as test homes and Gpg4win use. */
async function agentSocketPath(env: NodeJS.ProcessEnv): Promise<string> {
  const p = (await gnupgDirs(env)).agentSocket;
  try {
    const info = await stat(p);
    if (info.isFile() && info.size < 4096) {
      const text = await readFile(p, 'utf8');
      const m = /^%Assuan%\r?\n(?:.*\n)*?socket=(.+)$/m.exec(text);
      if (m) return path.resolve(path.dirname(p), m[1]!.trim());
    }
  } catch {
    // No socket at all: the caller falls back to plain gpg.
  }
  return p;
}

/** INQUIRE REPO's answer: where this process runs git, and the variables that locate the repo. */
function repoLocation(env: NodeJS.ProcessEnv): string {
  const lines = [`cwd=${process.cwd()}`];
  for (const k of [
    'GIT_DIR',
    'GIT_COMMON_DIR',
    'GIT_OBJECT_DIRECTORY',
    'GIT_ALTERNATE_OBJECT_DIRECTORIES',
  ]) {
    const v = env[k];
    if (v && !v.includes('\n')) lines.push(`${k}=${v}`);
  }
  return `${lines.join('\n')}\n`;
}

/** Hands CONTENT to the facade; the nonce, or undefined when no keytether facade takes it. */
export async function handOver(
  content: SignContent,
  env: NodeJS.ProcessEnv,
): Promise<string | undefined> {
  const socketPath = await agentSocketPath(env);
  const sock = net.connect(socketPath);
  try {
    await new Promise<void>((resolve, reject) => {
      sock.once('connect', resolve);
      sock.once('error', reject);
    });
    const client = await AssuanClient.connect(sock, { timeoutMs: 10_000 });
    try {
      const name = content.name !== undefined ? ` --name=${encodeURIComponent(content.name)}` : '';
      // A commit: the facade reads the objects that prove its changed files where git runs.
      const repo = content.kind === 'git-commit' ? repoLocation(env) : undefined;
      const r = await client.transact(
        `${CONTENT_COMMAND} --kind=${content.kind} --mode=${content.mode} --time=${content.time}${name}${repo ? ' --repo' : ''}`,
        {
          onInquire: (kw) =>
            kw === 'CONTENT' ? content.data : kw === 'REPO' && repo ? Buffer.from(repo) : null,
          timeoutMs: 60_000,
        },
      );
      const nonce = r.data.toString('latin1');
      return /^[A-Za-z0-9_-]{22}$/.test(nonce) ? nonce : undefined;
    } finally {
      client.close();
    }
  } catch {
    return undefined;
  } finally {
    sock.destroy();
  }
}

/** All of stdin: gpg gets every byte, whether or not the holder can be shown them. */
async function readStdin(): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const chunk of process.stdin as AsyncIterable<Buffer>) parts.push(chunk);
  return Buffer.concat(parts);
}

const shellQuote = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

/**
 * The shell half of the shim, for the one call that matters for speed: git signing an object
 * (`--status-fd=2 -bsau KEY`, the payload on stdin), which would otherwise pay Node's start-up
 * (~40 ms) on every commit, rebase step and tag. It starts one program (cat) besides gpg, since
 * each costs milliseconds. It leaves the payload in `.payload.<pid>` in the GnuPG home it was
 * written for (the facade's, private to the user; named here, so a copy of the shim works too)
 * and where its git runs in `.payload.<pid>.repo` (by the printf built-in), and tags gpg's
 * connection with `keytether-file=<pid>`; the facade reads both (server/payload-file.ts) while
 * gpg talks to it. It waits for gpg rather than exec it, so the files go when gpg is done. Any
 * other call, or any step that fails, goes to the Node shim or straight to gpg: never a lost
 * signature.
 */
function fastPath(dir: string): string {
  return `tmp=
if [ "$#" = 3 ] && [ "$1" = --status-fd=2 ] && [ "$2" = -bsau ]; then
  tmp=${shellQuote(dir)}/.payload.$$
  case "$tmp" in /*[!A-Za-z0-9/._-]* | [!/]*) tmp= ;; esac
fi
if [ -n "$tmp" ]; then
  # Created afresh or not at all (noclobber: O_EXCL), with a regular built-in, whose failed
  # redirection does not end the shell.
  set -C
  { true > "$tmp"; } 2>/dev/null || tmp=
  if [ -n "$tmp" ] && ! { printf 'cwd=%s\nGIT_DIR=%s\nGIT_COMMON_DIR=%s\nGIT_OBJECT_DIRECTORY=%s\nGIT_ALTERNATE_OBJECT_DIRECTORIES=%s\n' \
    "$PWD" "\${GIT_DIR-}" "\${GIT_COMMON_DIR-}" "\${GIT_OBJECT_DIRECTORY-}" \
    "\${GIT_ALTERNATE_OBJECT_DIRECTORIES-}" > "$tmp.repo"; } 2>/dev/null; then
    rm -f "$tmp"
    tmp=
  fi
  set +C
fi
if [ -n "$tmp" ]; then
  trap 'rm -f "$tmp" "$tmp.repo"' EXIT
  trap 'exit 129' HUP
  trap 'exit 130' INT
  trap 'exit 143' TERM
  # A payload read short is never signed: gpg would sign what arrived.
  cat >> "$tmp" || exit 2
  PINENTRY_USER_DATA="\${PINENTRY_USER_DATA:+$PINENTRY_USER_DATA }${CONTENT_FILE_TAG}$$"
  export PINENTRY_USER_DATA
  "\${KEYTETHER_GPG:-gpg}" "$@" < "$tmp"
  exit
fi
`;
}

/**
 * Writes DIR/keytether-git-sign, a gpg.program for git that runs this build's shim with this
 * Node: sessions set it up without depending on what is on the server's PATH.
 */
export async function writeGitSignProgram(dir: string): Promise<string> {
  const main = fileURLToPath(new URL('./git-sign-main.js', import.meta.url));
  const file = path.join(dir, 'keytether-git-sign');
  const script =
    `#!/bin/sh\n# keytether git-sign (gpg.program), written by keytether for this build\n` +
    `${fastPath(dir)}exec ${shellQuote(process.execPath)} ${shellQuote(main)} "$@"\n`;
  // Written aside and renamed: a git of another session may be running the old one right now.
  const aside = `${file}.${process.pid}.tmp`;
  await writeFile(aside, script, { mode: 0o700 });
  await chmod(aside, 0o700);
  await rename(aside, file);
  return file;
}

export interface GitSignOptions {
  env?: NodeJS.ProcessEnv;
  /** The real gpg (default: $KEYTETHER_GPG, else `gpg` on PATH). */
  gpg?: string;
  now?: () => number;
}

/** Runs gpg with ARGS (after handing the payload over when it signs); resolves to its status. */
export async function runGitSign(args: string[], opts: GitSignOptions = {}): Promise<number> {
  const env = opts.env ?? process.env;
  const gpg = opts.gpg ?? env.KEYTETHER_GPG ?? 'gpg';
  const inv = signInvocation(args);
  let input: Buffer | undefined;
  let childEnv = env;
  if (inv) {
    const fromStdin = inv.files.length === 0;
    let data: Buffer | undefined;
    if (fromStdin) data = input = await readStdin();
    else {
      const info = await stat(inv.files[0]!).catch(() => undefined);
      if (info?.isFile() && info.size <= MAX_CONTENT_BYTES) {
        data = await readFile(inv.files[0]!).catch(() => undefined);
      }
    }
    if (data && data.length <= MAX_CONTENT_BYTES) {
      const content: SignContent = {
        kind: contentKind(data, fromStdin),
        mode: inv.mode,
        time: Math.floor((opts.now ?? Date.now)() / 1000),
        data,
        ...(fromStdin ? {} : { name: path.basename(inv.files[0]!) }),
      };
      const nonce = await handOver(content, env);
      if (nonce !== undefined) {
        const prior = env.PINENTRY_USER_DATA;
        childEnv = {
          ...env,
          PINENTRY_USER_DATA: `${prior ? `${prior} ` : ''}${CONTENT_TAG}${nonce}`,
        };
      }
    }
  }
  return new Promise<number>((resolve) => {
    const child = spawn(gpg, args, {
      env: childEnv,
      stdio: [input !== undefined ? 'pipe' : 'inherit', 'inherit', 'inherit'],
    });
    child.on('error', (e) => {
      process.stderr.write(`keytether git-sign: cannot run ${gpg}: ${e.message}\n`);
      resolve(127);
    });
    child.on('exit', (code, signal) => resolve(code ?? (signal ? 128 + 1 : 1)));
    if (input !== undefined) {
      child.stdin!.on('error', () => {});
      child.stdin!.end(input);
    }
  });
}
