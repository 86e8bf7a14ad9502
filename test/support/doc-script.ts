// Runs a document's ```sh blocks verbatim, in order, the way a reader following it would:
//
//   - every block runs as `bash -e -o pipefail` in $HOME, with the environment the test gives (a
//     clean HOME, PATH, and the variables the document tells its reader to set, e.g.
//     $KT_SERVER); a block does not see variables another block set, so each doc block is
//     self-contained;
//   - a block whose first line is `# on PLACE` (`# on the server`, `# on a CI runner`, …) runs
//     at that place, which the test defines: another environment and account, or, for a place
//     with `ssh`, piped into `ssh -F ~/.ssh/config "$KT_SERVER" bash -e -s` from the default
//     place (the ssh config names the server); blocks without it run at the default place;
//   - a block with a line `… # keeps running; wait for "TEXT"` is what a reader starts in a second
//     terminal: it is started in the background (its own process group) and the next block runs
//     once a line of its output starts with TEXT; it is stopped (SIGTERM to the group) at the end.
//
// A failing block fails the test with the block's line in the document and everything it printed.

import { spawn, type ChildProcess } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import type { Test } from 'tap';

export interface DocBlock {
  /** 1-based line of the opening fence. */
  line: number;
  code: string;
  /** From a first line `# on PLACE`; undefined: the default place. */
  place?: string;
  /** For a block that keeps running: the start of the line to wait for. */
  waitFor?: string;
}

export function shBlocks(markdown: string): DocBlock[] {
  const out: DocBlock[] = [];
  const lines = markdown.split('\n');
  for (let i = 0; i < lines.length; i++) {
    if (!/^```sh\s*$/.test(lines[i]!)) continue;
    const start = i;
    const body: string[] = [];
    for (i++; i < lines.length && !/^```\s*$/.test(lines[i]!); i++) body.push(lines[i]!);
    const code = body.join('\n') + '\n';
    const wait = /# keeps running; wait for "([^"]+)"/.exec(code);
    const place = /^# on ((?:the|a|an) [\w -]*\w)/.exec(body[0] ?? '')?.[1];
    out.push({
      line: start + 1,
      code,
      ...(place !== undefined ? { place } : {}),
      ...(wait ? { waitFor: wait[1] } : {}),
    });
  }
  return out;
}

export interface BlockRun {
  code: number | null;
  out: string;
}

const BLOCK_TIMEOUT_MS = 60_000;

/** Where blocks run: an environment (with HOME), optionally another account, or over ssh. */
export interface Place {
  env: NodeJS.ProcessEnv;
  uid?: number;
  gid?: number;
  /** Run the block on $KT_SERVER through the ssh config of this place's HOME. */
  ssh?: boolean;
}

function spawnOptions(p: Place) {
  return {
    cwd: p.env.HOME,
    env: p.env,
    ...(p.uid !== undefined ? { uid: p.uid } : {}),
    ...(p.gid !== undefined ? { gid: p.gid } : {}),
  };
}

function runBlock(block: DocBlock, p: Place): Promise<BlockRun> {
  const home = p.env.HOME!;
  const [cmd, args, input] = p.ssh
    ? [
        'ssh',
        ['-F', path.join(home, '.ssh', 'config'), p.env.KT_SERVER!, 'bash -e -o pipefail -s'],
        block.code,
      ]
    : ['bash', ['-e', '-o', 'pipefail', '-c', block.code], ''];
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { ...spawnOptions(p), stdio: ['pipe', 'pipe', 'pipe'] });
    // Two pipes interleave at arbitrary points (gpg's stderr line can be split by the plaintext
    // on stdout), so each is kept whole: stdout first, then stderr on its own lines.
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (b: Buffer) => (stdout += b.toString()));
    child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), BLOCK_TIMEOUT_MS);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      const sep = stdout === '' || stdout.endsWith('\n') || stderr === '' ? '' : '\n';
      resolve({ code, out: stdout + sep + stderr });
    });
    child.stdin.on('error', () => {});
    child.stdin.end(input);
  });
}

interface Background {
  child: ChildProcess;
  out: () => string;
}

function startBackground(block: DocBlock, p: Place): Promise<Background> {
  const child = spawn('bash', ['-e', '-o', 'pipefail', '-c', block.code], {
    ...spawnOptions(p),
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  });
  let out = '';
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      stopGroup(child);
      reject(
        new Error(`no line starting "${block.waitFor}" within ${BLOCK_TIMEOUT_MS} ms:\n${out}`),
      );
    }, BLOCK_TIMEOUT_MS);
    const onData = (b: Buffer) => {
      out += b.toString();
      if (out.split('\n').some((l) => l.startsWith(block.waitFor!))) {
        clearTimeout(timer);
        child.off('exit', onExit);
        resolve({ child, out: () => out });
      }
    };
    const onExit = (code: number | null) => {
      clearTimeout(timer);
      reject(new Error(`it exited (${code}) before printing "${block.waitFor}":\n${out}`));
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);
    child.once('exit', onExit);
    child.once('error', reject);
  });
}

function stopGroup(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  try {
    process.kill(-child.pid!, 'SIGTERM');
  } catch {
    child.kill('SIGTERM');
  }
  return exited;
}

/**
 * Runs every ```sh block of DOC in order at its place (PLACES[''] is the default one) and returns
 * what each printed; background blocks are stopped when T ends.
 */
export async function runDoc(
  t: Test,
  doc: string,
  places: Record<string, Place>,
): Promise<string[]> {
  const blocks = shBlocks(await readFile(doc, 'utf8'));
  t.ok(blocks.length > 0, `${path.basename(doc)} has sh blocks`);
  const outputs: string[] = [];
  const background: Background[] = [];
  t.teardown(async () => {
    for (const b of background.reverse()) await stopGroup(b.child);
  });
  for (const block of blocks) {
    const where = `${path.basename(doc)}:${block.line}`;
    const place = places[block.place ?? ''];
    if (!place) {
      t.fail(`${where} runs "on ${block.place}", a place this test does not have`);
      return outputs;
    }
    if (block.waitFor !== undefined) {
      const started = await startBackground(block, place).then(
        (b) => b,
        (e: Error) => e,
      );
      if (started instanceof Error) {
        t.fail(`${where} (background): ${started.message}`);
        return outputs;
      }
      background.push(started);
      outputs.push(started.out());
      t.pass(`${where} is running`);
      continue;
    }
    const began = performance.now();
    const r = await runBlock(block, place);
    const ms = Math.round(performance.now() - began);
    outputs.push(r.out);
    if (r.code !== 0) {
      const bg = background.map((b) => b.out()).join('\n--- background ---\n');
      t.fail(`${where} exited ${r.code}:\n${r.out}\n--- background ---\n${bg}`);
      return outputs;
    }
    t.pass(`${where} ran (${ms} ms)`);
  }
  return outputs;
}
