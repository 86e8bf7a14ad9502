// Payloads handed over by `keytether git-sign` before it runs the real gpg, so the holder can see
// (and check) what the next signature covers. gpg itself never sends the data to an agent; the
// shim does, on its own connection, and tags gpg's connection with the nonce it got back through
// PINENTRY_USER_DATA, which gpg passes on as `OPTION pinentry-user-data=…` (gpg-agent ignores it
// unless a pinentry uses it). The payload stays a claim: the holder shows it as verified only
// after recomputing SETHASH's digest from it.
//
//   KEYTETHER_CONTENT --kind=git-commit --mode=binary [--time=1733500000] [--name=<%-escaped>]
//                     [--repo]
//   S INQUIRE_MAXLEN 67108864
//   INQUIRE CONTENT          → D …  END
//   INQUIRE REPO             → D cwd=/path%0AGIT_DIR=…  END   (only with --repo, for a commit)
//   D <nonce>                  OK
//
// With --repo the facade itself reads the git objects that prove a commit's changed files, in the
// repository the shim names (the shim is the user's own process: the socket admits no one else),
// while gpg starts; the signature request waits for them. Reading them here rather than in the
// shim keeps the shim a few lines of shell that need no Node (server/git-sign.ts).
//
// A stock gpg-agent answers "Unknown IPC command", and the shim then runs gpg as it is.
//
// The shell half of the shim skips that exchange, which costs it a gpg-connect-agent process on
// every commit: it leaves the payload in a file of the directory it lives in (the facade's GnuPG
// home, private to the user) and tags gpg's connection with `keytether-file=<number>` instead.
// The facade reads that file itself (server/payload-file.ts) from the moment the connection names
// a key, so the objects are read while gpg is still talking.

import { randomBytes } from 'node:crypto';
import type { AssuanCommandContext } from '../assuan/index.js';
import { percentDecode } from '../assuan/index.js';
import { displayField } from '../display-text.js';
import { ErrorCode, GpgError } from '../gpg-error.js';
import { MAX_CONTENT_BYTES, type ContentKind, type SignContent } from '../keyholder.js';
import { parseArgs, paramError } from './args.js';

export const CONTENT_COMMAND = 'KEYTETHER_CONTENT';
/** The PINENTRY_USER_DATA prefix that names a payload; anything else in it is left alone. */
export const CONTENT_TAG = 'keytether-req=';
/** The PINENTRY_USER_DATA prefix that names a payload file the shell shim left for the facade. */
export const CONTENT_FILE_TAG = 'keytether-file=';
const NONCE_RE = /^[A-Za-z0-9_-]{22}$/;
const FILE_ID_RE = /^[0-9]{1,10}$/;
const KINDS: ReadonlySet<string> = new Set(['git-commit', 'git-tag', 'git-push', 'file']);
const MODES: ReadonlySet<string> = new Set(['binary', 'text', 'clearsign']);
const MAX_NAME_CHARS = 1024;
const MAX_REPO_BYTES = 16 * 1024;
/** What of the shim's environment locates a repository's objects (worktrees, quarantines). */
const REPO_VARIABLES: ReadonlySet<string> = new Set([
  'GIT_DIR',
  'GIT_COMMON_DIR',
  'GIT_OBJECT_DIRECTORY',
  'GIT_ALTERNATE_OBJECT_DIRECTORIES',
]);

/** What git hands a gpg.program, from the payload's first line. */
export function contentKind(data: Uint8Array, fromStdin: boolean): ContentKind {
  if (!fromStdin) return 'file';
  const head = Buffer.from(data.subarray(0, 64)).toString('latin1');
  if (/^tree [0-9a-f]{40,64}\n/.test(head)) return 'git-commit';
  if (/^object [0-9a-f]{40,64}\n/.test(head)) return 'git-tag';
  if (head.startsWith('certificate version ')) return 'git-push';
  return 'file';
}

/** Where the shim's git runs: its directory and the variables that locate the repository. */
export interface RepoLocation {
  cwd: string;
  env: Record<string, string>;
}

/**
 * Reads the payload file the shell shim left under ID, and where its git runs (server side: it
 * opens files); undefined when there is no such file or it is not one the shim could have left.
 */
export type PayloadFileReader = (
  id: string,
) => Promise<{ content: SignContent; repo?: RepoLocation } | undefined>;

/** Reads the objects that prove a commit's changed files (server side: it runs git). */
export type ObjectCollector = (
  payload: Uint8Array,
  repo: RepoLocation,
) => Promise<Uint8Array | undefined>;

/** `cwd=…` and `GIT_…=…` lines; absolute paths only, unknown names ignored, bad lines refused. */
export function parseRepoLocation(text: Buffer): RepoLocation {
  let cwd: string | undefined;
  const env: Record<string, string> = {};
  for (const line of text.toString('utf8').split('\n')) {
    if (line === '') continue;
    const eq = line.indexOf('=');
    if (eq <= 0) throw paramError('bad REPO line');
    const name = line.slice(0, eq);
    const value = line.slice(eq + 1);
    if (value === '') continue;
    // NUL never reaches a path; every path is absolute, except GIT_DIR, which is relative to cwd.
    const paths = name === 'GIT_ALTERNATE_OBJECT_DIRECTORIES' ? value.split(':') : [value];
    if (value.includes('\0') || !paths.every((p) => p.startsWith('/') || name === 'GIT_DIR')) {
      throw paramError(`bad ${name} in REPO`);
    }
    if (name === 'cwd') cwd = value;
    else if (REPO_VARIABLES.has(name)) env[name] = value;
  }
  if (cwd === undefined) throw paramError('REPO without cwd');
  return { cwd, env };
}

/** Payloads waiting for the gpg that will sign them; shared by a facade's connections. */
export class ContentStore {
  readonly #entries = new Map<
    string,
    { content: SignContent; objects?: Promise<Uint8Array | undefined>; expires: number }
  >();
  readonly #maxEntries: number;
  readonly #ttlMs: number;
  readonly #now: () => number;
  readonly #collect: ObjectCollector | undefined;
  readonly #readFile: PayloadFileReader | undefined;

  constructor(
    opts: {
      maxEntries?: number;
      ttlMs?: number;
      now?: () => number;
      collectObjects?: ObjectCollector;
      readPayloadFile?: PayloadFileReader;
    } = {},
  ) {
    this.#maxEntries = opts.maxEntries ?? 8;
    this.#ttlMs = opts.ttlMs ?? 120_000;
    this.#now = opts.now ?? Date.now;
    this.#collect = opts.collectObjects;
    this.#readFile = opts.readPayloadFile;
  }

  /**
   * The payload a connection's PINENTRY_USER_DATA names: a nonce handed out by
   * KEYTETHER_CONTENT, or a payload file, read now, with its commit's objects collected.
   */
  async tagged(pinentryUserData: string | undefined): Promise<SignContent | undefined> {
    const tag = contentTag(pinentryUserData);
    if (tag?.kind === 'nonce') return this.take(tag.value);
    if (tag?.kind !== 'file' || !this.#readFile) return undefined;
    const found = await this.#readFile(tag.value).catch(() => undefined);
    if (!found) return undefined;
    const { content, repo } = found;
    const objects =
      repo && this.#collect && content.kind === 'git-commit'
        ? await this.#collect(content.data, repo).catch(() => undefined)
        : undefined;
    return objects && objects.length > 0 ? { ...content, objects } : content;
  }

  /**
   * Keeps CONTENT for one signature; the oldest entry goes when the store is full. For a commit
   * in REPO the objects are read from now on, while gpg starts.
   */
  put(content: SignContent, repo?: RepoLocation): string {
    this.#expire();
    while (this.#entries.size >= this.#maxEntries) {
      const oldest = this.#entries.keys().next().value as string;
      this.#entries.delete(oldest);
    }
    const nonce = randomBytes(16).toString('base64url');
    const objects =
      repo && this.#collect && content.kind === 'git-commit'
        ? this.#collect(content.data, repo).catch(() => undefined)
        : undefined;
    this.#entries.set(nonce, {
      content,
      ...(objects ? { objects } : {}),
      expires: this.#now() + this.#ttlMs,
    });
    return nonce;
  }

  /** The payload for NONCE, once: a second signature never reuses it. */
  async take(nonce: string): Promise<SignContent | undefined> {
    this.#expire();
    const e = this.#entries.get(nonce);
    this.#entries.delete(nonce);
    if (!e) return undefined;
    const objects = await e.objects;
    return objects && objects.length > 0 ? { ...e.content, objects } : e.content;
  }

  #expire(): void {
    const now = this.#now();
    for (const [k, v] of this.#entries) if (v.expires <= now) this.#entries.delete(k);
  }
}

/**
 * What a PINENTRY_USER_DATA value such as `keytether-req=<nonce>` or `keytether-file=<id>` names,
 * if anything; the last well-formed tag wins, anything else in the value is left alone.
 */
export function contentTag(
  pinentryUserData: string | undefined,
): { kind: 'nonce' | 'file'; value: string } | undefined {
  if (!pinentryUserData) return undefined;
  // The last tag: a shim appends its own to whatever value it inherited.
  for (const part of pinentryUserData.split(/[ ,;]/).reverse()) {
    if (part.startsWith(CONTENT_TAG)) {
      const nonce = part.slice(CONTENT_TAG.length);
      if (NONCE_RE.test(nonce)) return { kind: 'nonce', value: nonce };
    } else if (part.startsWith(CONTENT_FILE_TAG)) {
      const id = part.slice(CONTENT_FILE_TAG.length);
      if (FILE_ID_RE.test(id)) return { kind: 'file', value: id };
    }
  }
  return undefined;
}

/**
 * One connection's view of the store: the payload its tag names, looked up as soon as a key is
 * named and taken by one PKSIGN; a later PKSIGN gets it only if the tag changes.
 */
export class TaggedContent {
  readonly #store: ContentStore;
  #tag: string | undefined;
  #content: Promise<SignContent | undefined> | undefined;

  constructor(store: ContentStore) {
    this.#store = store;
  }

  prefetch(pinentryUserData: string | undefined): void {
    if (this.#content && this.#tag === pinentryUserData) return;
    this.#tag = pinentryUserData;
    this.#content = this.#store.tagged(pinentryUserData).catch(() => undefined);
  }

  take(pinentryUserData: string | undefined): Promise<SignContent | undefined> {
    this.prefetch(pinentryUserData);
    const content = this.#content!;
    this.#content = Promise.resolve(undefined);
    return content;
  }
}

export async function registerContent(
  ctx: AssuanCommandContext,
  store: ContentStore | undefined,
): Promise<void> {
  // Not a keytether front that can carry payloads: the shim falls back to plain gpg.
  if (!store) throw new GpgError(ErrorCode.ASS_UNKNOWN_CMD);
  const { options, words } = parseArgs(ctx.args);
  if (words.length > 0) throw paramError('unexpected argument');
  const kind = options.get('kind');
  const mode = options.get('mode');
  // Without --time the shim is on this machine, and our clock is its clock.
  const rawTime = options.get('time');
  const time = rawTime === undefined ? Math.floor(Date.now() / 1000) : Number(rawTime);
  if (kind === undefined || !KINDS.has(kind)) throw paramError('bad --kind');
  if (mode === undefined || !MODES.has(mode)) throw paramError('bad --mode');
  if (!Number.isSafeInteger(time) || time < 0 || time > 0xffffffff) throw paramError('bad --time');
  const rawName = options.get('name');
  let name: string | undefined;
  if (rawName !== undefined) {
    const decoded = percentDecode(rawName).toString('utf8');
    if (decoded.length > MAX_NAME_CHARS) throw paramError('--name too long');
    name = displayField(decoded, MAX_NAME_CHARS);
  }
  const withRepo = options.has('repo');
  if (withRepo && (options.get('repo') !== undefined || kind !== 'git-commit')) {
    throw paramError('--repo is a flag, for a git-commit');
  }
  ctx.sendStatus('INQUIRE_MAXLEN', String(MAX_CONTENT_BYTES));
  const data = await ctx.inquire('CONTENT', { maxLength: MAX_CONTENT_BYTES });
  let repo: RepoLocation | undefined;
  if (withRepo) {
    ctx.sendStatus('INQUIRE_MAXLEN', String(MAX_REPO_BYTES));
    repo = parseRepoLocation(await ctx.inquire('REPO', { maxLength: MAX_REPO_BYTES }));
  }
  const nonce = store.put(
    {
      kind: kind as ContentKind,
      mode: mode as SignContent['mode'],
      time,
      data,
      ...(name !== undefined ? { name } : {}),
    },
    repo,
  );
  ctx.sendData(Buffer.from(nonce, 'latin1'));
}
