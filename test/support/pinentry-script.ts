// Sets up test/support/scripted-pinentry.mjs for one test: a private temp dir holding the answer
// script and the command log, and readers for what the pinentry saw.

import { watch } from 'node:fs';
import { chmod, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const SCRIPTED_PINENTRY = fileURLToPath(new URL('./scripted-pinentry.mjs', import.meta.url));

/** One GETPIN answer: a passphrase, null (Cancel), or a special behaviour. */
export type PinAnswer =
  | string
  | null
  | { cancel: true }
  | { timeout: true }
  | { hang: true }
  | { crash: true }
  | { error: number };

export type ConfirmAnswer = 'ok' | 'cancel' | 'notok' | 'hang' | 'crash';

export interface PinentryScriptSpec {
  answers?: PinAnswer[];
  confirm?: ConfirmAnswer[];
  /** Never answer GETPIN/CONFIRM. */
  hang?: boolean;
  /** Split GETPIN data into D lines of at most this many escaped bytes. */
  chunk?: number;
}

export interface PinentryCall {
  cmd: string;
  args: string;
  /** The percent-decoded text, for SETDESC/SETPROMPT/SETERROR/SETOK/… */
  text?: string;
}

export interface PinentryInvocation {
  pid: number;
  argv: string;
  env: Record<string, string>;
  calls: PinentryCall[];
}

export interface PinentryScript {
  program: string;
  /** Variables the pinentry child needs; merge into the env handed to Pinentry. */
  env: Record<string, string>;
  dir: string;
  /** Commands received, one array per pinentry invocation, in start order. */
  calls(): Promise<PinentryCall[][]>;
  invocations(): Promise<PinentryInvocation[]>;
  /** Resolves once the log satisfies `pred` (checked on every change of the log file). */
  waitFor(
    pred: (inv: PinentryInvocation[]) => boolean,
    timeoutMs?: number,
  ): Promise<PinentryInvocation[]>;
  /**
   * A program that runs this script with no help from its caller's environment — what
   * gpg-agent's `pinentry-program` needs, since gpg-agent starts its pinentry with its own.
   */
  standaloneProgram(): Promise<string>;
  cleanup(): Promise<void>;
}

interface LogLine {
  pid: number;
  cmd: string;
  args: string;
  text?: string;
  env?: Record<string, string>;
}

export async function makePinentryScript(spec: PinentryScriptSpec = {}): Promise<PinentryScript> {
  const dir = await mkdtemp(join(tmpdir(), 'kt-pinentry-'));
  const scriptFile = join(dir, 'script.json');
  const logFile = join(dir, 'log.jsonl');
  await writeFile(scriptFile, JSON.stringify(spec), { mode: 0o600 });
  await writeFile(logFile, '', { mode: 0o600 });

  async function invocations(): Promise<PinentryInvocation[]> {
    const text = await readFile(logFile, 'utf8');
    const byPid = new Map<number, PinentryInvocation>();
    for (const raw of text.split('\n')) {
      if (!raw) continue;
      const line = JSON.parse(raw) as LogLine;
      let inv = byPid.get(line.pid);
      if (!inv) {
        inv = { pid: line.pid, argv: '', env: {}, calls: [] };
        byPid.set(line.pid, inv);
      }
      if (line.cmd === '#spawn') {
        inv.argv = line.args;
        inv.env = line.env ?? {};
      } else {
        const call: PinentryCall = { cmd: line.cmd, args: line.args };
        if (line.text !== undefined) call.text = line.text;
        inv.calls.push(call);
      }
    }
    return [...byPid.values()];
  }

  function waitFor(
    pred: (inv: PinentryInvocation[]) => boolean,
    timeoutMs = 30_000,
  ): Promise<PinentryInvocation[]> {
    return new Promise((resolve, reject) => {
      let done = false;
      const watcher = watch(logFile);
      const finish = (err: Error | null, inv?: PinentryInvocation[]): void => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        watcher.close();
        if (err) reject(err);
        else resolve(inv!);
      };
      const check = (): void => {
        invocations().then((inv) => {
          if (pred(inv)) finish(null, inv);
        }, finish);
      };
      const timer = setTimeout(
        () => finish(new Error('pinentry log never reached the expected state')),
        timeoutMs,
      );
      watcher.on('change', check);
      watcher.on('error', finish);
      check();
    });
  }

  const env = { KEYTETHER_TEST_PINENTRY_SCRIPT: scriptFile, KEYTETHER_TEST_PINENTRY_LOG: logFile };
  async function standaloneProgram(): Promise<string> {
    const wrapper = join(dir, 'pinentry.sh');
    const exports = Object.entries(env)
      .map(([k, v]) => `export ${k}='${v}'`)
      .join('\n');
    await writeFile(
      wrapper,
      `#!/bin/sh\n${exports}\nexec '${process.execPath}' '${SCRIPTED_PINENTRY}' "$@"\n`,
    );
    await chmod(wrapper, 0o700);
    return wrapper;
  }

  return {
    program: SCRIPTED_PINENTRY,
    waitFor,
    env,
    standaloneProgram,
    dir,
    invocations,
    calls: async () => (await invocations()).map((i) => i.calls),
    cleanup: () => rm(dir, { recursive: true, force: true }),
  };
}
