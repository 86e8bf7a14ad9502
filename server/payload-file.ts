// The payload files the shell half of `keytether git-sign` leaves next to itself (server/git-sign.ts):
// `.payload.<id>` holds exactly the bytes gpg reads on stdin, `.payload.<id>.repo` the `cwd=` and
// `GIT_…=` lines of where its git runs. The tag that names them arrives from any process that can
// reach the agent socket, so only a file the shim could have made is read: a regular file, not a
// link, owned by this user, in this one directory, within the payload cap, opened without
// blocking (a FIFO put there cannot stall the facade). What is read stays a claim: the holder
// recomputes gpg's digest from it before it calls anything verified.

import { constants } from 'node:fs';
import { open } from 'node:fs/promises';
import path from 'node:path';
import {
  contentKind,
  parseRepoLocation,
  type PayloadFileReader,
  type RepoLocation,
} from '../protocol/agent/content.js';
import { MAX_CONTENT_BYTES } from '../protocol/keyholder.js';

const MAX_REPO_BYTES = 16 * 1024;

/** FILE's bytes if it is a regular file of ours of at most MAX bytes; undefined otherwise. */
async function readOwnFile(file: string, max: number): Promise<Buffer | undefined> {
  let fh;
  try {
    fh = await open(file, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch {
    return undefined;
  }
  try {
    const st = await fh.stat();
    const uid = process.getuid?.();
    if (!st.isFile() || (uid !== undefined && st.uid !== uid) || st.size > max) return undefined;
    const buf = Buffer.alloc(st.size);
    let got = 0;
    while (got < buf.length) {
      const { bytesRead } = await fh.read(buf, got, buf.length - got, got);
      if (bytesRead === 0) break;
      got += bytesRead;
    }
    // A file that shrank while it was read is not the payload gpg reads.
    return got === buf.length ? buf : undefined;
  } finally {
    await fh.close();
  }
}

/** Reads the shim's payload files in DIR (the GnuPG home the shim was written to). */
export function payloadFileReader(dir: string): PayloadFileReader {
  return async (id) => {
    if (!/^[0-9]{1,10}$/.test(id)) return undefined;
    const file = path.join(dir, `.payload.${id}`);
    const [data, repoText] = await Promise.all([
      readOwnFile(file, MAX_CONTENT_BYTES),
      readOwnFile(`${file}.repo`, MAX_REPO_BYTES),
    ]);
    if (!data) return undefined;
    let repo: RepoLocation | undefined;
    try {
      repo = repoText ? parseRepoLocation(repoText) : undefined;
    } catch {
      repo = undefined;
    }
    return {
      // git's one call the shell shim serves: `-bsau`, binary, the payload on stdin. The time is
      // this machine's clock, which is the shim's.
      content: {
        kind: contentKind(data, true),
        mode: 'binary',
        time: Math.floor(Date.now() / 1000),
        data,
      },
      ...(repo ? { repo } : {}),
    };
  };
}
