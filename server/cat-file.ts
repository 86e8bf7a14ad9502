// One `git cat-file --batch` for the shim's object reads: a commit's proof needs a few objects per
// changed directory level, and one process answers them all (ids in on stdin, `<id> <type>
// <size>\n<body>\n` or `<id> missing\n` out on stdout, in order).

import { spawn, type ChildProcessByStdio } from 'node:child_process';
import type { Readable, Writable } from 'node:stream';
import type { GitObjectType } from '../protocol/git/objects.js';

export interface CatFileObject {
  type: GitObjectType;
  body: Buffer;
}

/** An object larger than the reader was told to take; the proof is then too large. */
export class ObjectTooLarge extends Error {}

const TYPES: ReadonlySet<string> = new Set(['commit', 'tree', 'blob', 'tag']);

export class CatFile {
  readonly #child: ChildProcessByStdio<Writable, Readable, null>;
  readonly #maxObjectBytes: number;
  #chunks: Buffer[] = [];
  #buffered = 0;
  /** Bytes the answer at the head of the queue needs in all, once its header is known. */
  #need = 0;
  readonly #waiting: {
    resolve: (o: CatFileObject | undefined) => void;
    reject: (e: Error) => void;
  }[] = [];
  #failed: Error | undefined;

  /** In CWD (default: ours) with ENV, so that git finds the repository the shim's git uses. */
  constructor(env: NodeJS.ProcessEnv, opts: { maxObjectBytes: number; cwd?: string }) {
    this.#maxObjectBytes = opts.maxObjectBytes;
    this.#child = spawn('git', ['cat-file', '--batch'], {
      env: {
        ...env,
        // The ids are the commit's own: a replace ref would hand back other bytes, and a partial
        // clone would go fetch from the network while git waits for its signature.
        GIT_NO_REPLACE_OBJECTS: '1',
        GIT_NO_LAZY_FETCH: '1',
      },
      stdio: ['pipe', 'pipe', 'ignore'],
      ...(opts.cwd !== undefined ? { cwd: opts.cwd } : {}),
    });
    this.#child.on('error', (e) => this.#fail(e));
    this.#child.stdin.on('error', (e) => this.#fail(e));
    this.#child.stdout.on('close', () => this.#fail(new Error('git cat-file ended')));
    this.#child.stdout.on('data', (b: Buffer) => {
      this.#chunks.push(b);
      this.#buffered += b.length;
      if (this.#buffered >= this.#need) this.#drain();
    });
  }

  /** The objects named by IDS (undefined where the repository lacks one), in order. */
  read(ids: readonly string[]): Promise<(CatFileObject | undefined)[]> {
    if (this.#failed) return Promise.reject(this.#failed);
    const answers = ids.map(
      () =>
        new Promise<CatFileObject | undefined>((resolve, reject) => {
          this.#waiting.push({ resolve, reject });
        }),
    );
    this.#child.stdin.write(ids.map((id) => `${id}\n`).join(''));
    return Promise.all(answers);
  }

  close(): void {
    this.#child.stdin.end();
    if (this.#child.exitCode === null) this.#child.kill();
  }

  #drain(): void {
    let buf = this.#chunks.length === 1 ? this.#chunks[0]! : Buffer.concat(this.#chunks);
    this.#need = 0;
    while (this.#waiting.length > 0) {
      const nl = buf.indexOf(0x0a);
      if (nl < 0) break;
      const header = buf.toString('latin1', 0, Math.min(nl, 200)).split(' ');
      if (header.length === 2) {
        // `<id> missing` (or `ambiguous`): nothing follows.
        buf = buf.subarray(nl + 1);
        this.#waiting.shift()!.resolve(undefined);
        continue;
      }
      const size = Number(header[2]);
      if (header.length !== 3 || !TYPES.has(header[1]!) || !Number.isSafeInteger(size)) {
        this.#fail(new Error('unexpected git cat-file output'));
        return;
      }
      if (size > this.#maxObjectBytes) {
        this.#fail(new ObjectTooLarge(`a ${header[1]} of ${size} bytes`));
        return;
      }
      if (buf.length < nl + 1 + size + 1) {
        this.#need = nl + 1 + size + 1;
        break;
      }
      const body = Buffer.from(buf.subarray(nl + 1, nl + 1 + size));
      buf = buf.subarray(nl + 1 + size + 1);
      this.#waiting.shift()!.resolve({ type: header[1] as GitObjectType, body });
    }
    this.#chunks = buf.length ? [buf] : [];
    this.#buffered = buf.length;
  }

  #fail(e: Error): void {
    this.#failed ??= e;
    for (const w of this.#waiting.splice(0)) w.reject(this.#failed);
    if (this.#child.exitCode === null) this.#child.kill();
  }
}
