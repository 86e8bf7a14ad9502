// Asking the workstation's user through a stock pinentry program, the way gpg-agent does it
// (reference/gpg-agent-protocol.md §7): one child process per request, Assuan over its
// stdin/stdout, one pinentry on screen at a time.

import { spawn, type ChildProcessByStdio } from 'node:child_process';
import { basename } from 'node:path';
import { Duplex, type Readable, type Writable } from 'node:stream';
import { AssuanClient } from '../../protocol/assuan/index.js';
import { DIALOG_ROWS } from './dialog-fit.js';
import { ErrorCode, GpgError } from '../../protocol/gpg-error.js';
import { descriptionCommand, failureText, optionValue, textCommand } from './pinentry-lines.js';
import { pinentryLock } from './pinentry-lock.js';

export interface PinentryOptions {
  /** Program name (looked up in PATH) or path; default 'pinentry'. */
  program?: string;
  /** Deadline for one whole pinentry interaction; default 60000; 0 = none. */
  timeoutMs?: number;
  /**
   * The workstation's environment. The child gets it as its environment; DISPLAY becomes
   * `--display`, GPG_TTY/TERM/LC_* become OPTIONs. Default process.env.
   */
  env?: NodeJS.ProcessEnv;
  title?: string;
}

export interface PassphraseRequest {
  keygrip: string;
  /** Full text to show, plain (not escaped); control characters are neutralised. */
  description: string;
  prompt?: string;
  /** Error line above the entry field, e.g. 'Bad Passphrase (try 2 of 3)'. */
  error?: string;
}

export interface ConfirmRequest {
  description: string;
  okLabel?: string;
  cancelLabel?: string;
}

/** What the holder needs from a pinentry; lets it take something other than a child process. */
export interface PassphraseAsker {
  getPassphrase(req: PassphraseRequest, signal?: AbortSignal): Promise<Buffer>;
  confirm(req: ConfirmRequest, signal?: AbortSignal): Promise<boolean>;
}

const DEFAULT_TIMEOUT_MS = 60_000;
// gpg-agent caps passphrases at 255 bytes; allow more for pasted ones but keep a bound.
const MAX_PASSPHRASE_BYTES = 1024;
// Time a pinentry gets to exit on its own (after BYE or stdin EOF, or after SIGTERM so curses can
// restore the terminal) before it is killed harder.
const EXIT_GRACE_MS = 1000;

const CANCEL_CODES: ReadonlySet<number> = new Set([
  ErrorCode.CANCELED,
  ErrorCode.ASS_CANCELED,
  ErrorCode.FULLY_CANCELED,
]);

function codeOf(e: unknown): number {
  return e instanceof GpgError ? e.code : ErrorCode.GENERAL;
}

type Child = ChildProcessByStdio<Writable, Readable, null>;

interface ExitInfo {
  code: number | null;
  signal: NodeJS.Signals | null;
  spawnError?: string;
}

/** Thrown inside a session when the deadline or the caller's signal ends it. */
class SessionEnded extends Error {
  constructor(readonly reason: 'timeout' | 'abort') {
    super(reason);
  }
}

export class Pinentry implements PassphraseAsker {
  private readonly program: string;
  private readonly timeoutMs: number;
  private readonly env: NodeJS.ProcessEnv;
  private readonly title: string | undefined;

  constructor(opts: PinentryOptions = {}) {
    this.program = opts.program ?? 'pinentry';
    this.timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.env = opts.env ?? process.env;
    this.title = opts.title;
  }

  /**
   * Runs the pinentry once and returns the passphrase in a fresh Buffer the caller must zero.
   * Cancel → CANCELED; deadline → TIMEOUT; pinentry unusable → NO_PIN_ENTRY.
   */
  async getPassphrase(req: PassphraseRequest, signal?: AbortSignal): Promise<Buffer> {
    return this.session(signal, async (run) => {
      if (/^[0-9A-Fa-f]{40}$/.test(req.keygrip)) {
        await run(`SETKEYINFO n/${req.keygrip.toUpperCase()}`, {
          tolerate: [ErrorCode.ASS_UNKNOWN_CMD, ErrorCode.NOT_IMPLEMENTED],
        });
      }
      await run(descriptionCommand(req.description, DIALOG_ROWS.passphrase));
      await run(textCommand('SETPROMPT', req.prompt ?? 'Passphrase:'));
      if (req.error) await run(textCommand('SETERROR', req.error));
      const reply = await run('GETPIN', { maxDataBytes: MAX_PASSPHRASE_BYTES });
      // Hand out a buffer of our own (not a slice of the client's pool) and wipe the original.
      const pass = Buffer.alloc(reply.length);
      reply.copy(pass);
      reply.fill(0);
      return pass;
    });
  }

  /** CONFIRM: true = OK, false = Cancel / "Not confirmed"; deadline → TIMEOUT. */
  async confirm(req: ConfirmRequest, signal?: AbortSignal): Promise<boolean> {
    return this.session(signal, async (run) => {
      await run(descriptionCommand(req.description, DIALOG_ROWS.confirm));
      if (req.okLabel) await run(textCommand('SETOK', req.okLabel));
      if (req.cancelLabel) await run(textCommand('SETCANCEL', req.cancelLabel));
      try {
        await run('CONFIRM');
        return true;
      } catch (e) {
        const code = codeOf(e);
        if (code === ErrorCode.NOT_CONFIRMED || CANCEL_CODES.has(code)) return false;
        throw e;
      }
    });
  }

  private childEnv(): NodeJS.ProcessEnv {
    return { ...this.env };
  }

  private async session<T>(
    signal: AbortSignal | undefined,
    body: (
      run: (cmd: string, o?: { tolerate?: number[]; maxDataBytes?: number }) => Promise<Buffer>,
    ) => Promise<T>,
  ): Promise<T> {
    const release = await pinentryLock.acquire(signal);
    try {
      return await this.runChild(signal, body);
    } finally {
      release();
    }
  }

  private async runChild<T>(
    callerSignal: AbortSignal | undefined,
    body: (
      run: (cmd: string, o?: { tolerate?: number[]; maxDataBytes?: number }) => Promise<Buffer>,
    ) => Promise<T>,
  ): Promise<T> {
    const ctl = new AbortController();
    let ended: SessionEnded | undefined;
    const end = (reason: 'timeout' | 'abort'): void => {
      if (ended) return;
      ended = new SessionEnded(reason);
      ctl.abort(ended);
    };
    const timer = this.timeoutMs > 0 ? setTimeout(() => end('timeout'), this.timeoutMs) : undefined;
    const onCallerAbort = (): void => end('abort');
    if (callerSignal?.aborted) end('abort');
    callerSignal?.addEventListener('abort', onCallerAbort, { once: true });
    const endedPromise = new Promise<never>((_, reject) => {
      ctl.signal.addEventListener('abort', () => reject(ended), { once: true });
    });
    endedPromise.catch(() => {});

    const env = this.childEnv();
    const display = optionValue(env.DISPLAY);
    const argv = display ? ['--display', display] : [];
    let child: Child;
    try {
      child = spawn(this.program, argv, {
        argv0: basename(this.program),
        stdio: ['pipe', 'pipe', 'ignore'],
        env,
      });
    } catch {
      clearTimeout(timer);
      callerSignal?.removeEventListener('abort', onCallerAbort);
      throw this.noPinentry('could not be started');
    }
    const exited = new Promise<ExitInfo>((resolve) => {
      child.once('exit', (code, sig) => resolve({ code, signal: sig }));
      child.once('error', (e: NodeJS.ErrnoException) => {
        // 'error' without a pid means the program never ran; 'exit' will not follow.
        if (child.pid === undefined)
          resolve({ code: null, signal: null, spawnError: e.code ?? '' });
      });
    });
    const spawnFailed = exited.then((x) => {
      if (x.spawnError !== undefined) throw new Error('spawn');
      return new Promise<never>(() => {});
    });
    spawnFailed.catch(() => {});
    // A pinentry that dies early makes writes fail with EPIPE; the read side reports it.
    child.stdin.on('error', () => {});
    child.stdout.on('error', () => {});
    const stream = Duplex.from({ readable: child.stdout, writable: child.stdin });
    stream.on('error', () => {});

    let client: AssuanClient | undefined;
    let killedByUs = false;
    let failure: unknown;
    let result: T | undefined;
    const race = <R>(p: Promise<R>): Promise<R> => Promise.race([p, endedPromise, spawnFailed]);
    const connectTimeout = this.timeoutMs > 0 ? this.timeoutMs : undefined;

    try {
      client = await race(AssuanClient.connect(stream, { timeoutMs: connectTimeout }));
      const c = client;
      const run = async (
        cmd: string,
        o: { tolerate?: number[]; maxDataBytes?: number } = {},
      ): Promise<Buffer> => {
        try {
          const r = await race(
            c.transact(cmd, {
              signal: ctl.signal,
              ...(o.maxDataBytes !== undefined ? { maxDataBytes: o.maxDataBytes } : {}),
            }),
          );
          return r.data;
        } catch (e) {
          if (e instanceof GpgError && o.tolerate?.includes(e.code)) return Buffer.alloc(0);
          throw e;
        }
      };
      await this.setUp(run, env);
      result = await body(run);
    } catch (e) {
      failure = e;
    }

    // Shut the child down and reap it, whatever happened above. close() sends BYE when the
    // connection is idle; a pinentry also exits on EOF.
    try {
      client?.close();
    } catch {
      // closing a broken connection is not an error worth reporting
    }
    if (!child.stdin.writableEnded) child.stdin.end();
    let grace: NodeJS.Timeout | undefined;
    let hard: NodeJS.Timeout | undefined;
    const terminate = (): void => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      killedByUs = true;
      child.kill('SIGTERM');
      hard = setTimeout(() => child.kill('SIGKILL'), EXIT_GRACE_MS);
    };
    if (ended) terminate();
    else grace = setTimeout(terminate, EXIT_GRACE_MS);
    const exit = await exited;
    clearTimeout(grace);
    clearTimeout(hard);
    clearTimeout(timer);
    callerSignal?.removeEventListener('abort', onCallerAbort);
    child.stdout.destroy();

    if (exit.spawnError !== undefined) {
      throw this.noPinentry(
        exit.spawnError === 'ENOENT'
          ? 'was not found'
          : `could not be started (${exit.spawnError || 'unknown error'})`,
      );
    }
    if (ended?.reason === 'timeout') {
      throw new GpgError(
        ErrorCode.TIMEOUT,
        `no answer from the pinentry within ${this.timeoutMs} ms`,
      );
    }
    if (ended?.reason === 'abort') throw new GpgError(ErrorCode.CANCELED);
    if (failure === undefined) return result as T;

    const code = codeOf(failure);
    if (CANCEL_CODES.has(code)) throw new GpgError(ErrorCode.CANCELED);
    if (code === ErrorCode.TIMEOUT) throw new GpgError(ErrorCode.TIMEOUT, 'the pinentry timed out');
    if (failure instanceof GpgError && failure.code === ErrorCode.NO_PIN_ENTRY) throw failure;
    if (!killedByUs && (exit.signal !== null || (exit.code !== null && exit.code !== 0))) {
      const how = exit.signal ? `signal ${exit.signal}` : `status ${exit.code}`;
      throw this.noPinentry(`exited unexpectedly (${how})`);
    }
    throw this.noPinentry(failureText(code));
  }

  private async setUp(
    run: (cmd: string, o?: { tolerate?: number[] }) => Promise<Buffer>,
    env: NodeJS.ProcessEnv,
  ): Promise<void> {
    const anyError = { tolerate: Object.values(ErrorCode) as number[] };
    await run('OPTION grab', anyError);
    const tty = optionValue(env.GPG_TTY);
    const term = optionValue(env.TERM);
    const ctype = optionValue(env.LC_ALL || env.LC_CTYPE || env.LANG);
    const messages = optionValue(env.LC_ALL || env.LC_MESSAGES || env.LANG);
    // gpg-agent treats failures of these four as fatal: the pinentry could not use that terminal.
    if (tty) await run(`OPTION ttyname=${tty}`);
    if (term) await run(`OPTION ttytype=${term}`);
    if (ctype) await run(`OPTION lc-ctype=${ctype}`);
    if (messages) await run(`OPTION lc-messages=${messages}`);
    if (this.timeoutMs > 0) {
      await run(`SETTIMEOUT ${Math.max(1, Math.ceil(this.timeoutMs / 1000))}`, anyError);
    }
    if (this.title) await run(textCommand('SETTITLE', this.title), anyError);
  }

  private noPinentry(what: string): GpgError {
    return new GpgError(ErrorCode.NO_PIN_ENTRY, `pinentry program "${this.program}" ${what}`);
  }
}

/**
 * Asks for a passphrase until `tryUnlock` accepts it, like gpg-agent: up to `tries` attempts, with
 * "Bad Passphrase (try N of M)" shown on retries. `tryUnlock` must reject with a GpgError
 * BAD_PASSPHRASE for a wrong passphrase; any other rejection ends the loop at once. Each
 * passphrase buffer is zeroed after its try.
 */
export async function askUntilUnlocked<T>(
  pinentry: PassphraseAsker,
  req: PassphraseRequest,
  tryUnlock: (pass: Buffer) => Promise<T>,
  tries = 3,
  signal?: AbortSignal,
): Promise<T> {
  for (let attempt = 1; attempt <= tries; attempt++) {
    const error = attempt > 1 ? `Bad Passphrase (try ${attempt} of ${tries})` : req.error;
    const pass = await pinentry.getPassphrase({ ...req, ...(error ? { error } : {}) }, signal);
    try {
      return await tryUnlock(pass);
    } catch (e) {
      if (codeOf(e) !== ErrorCode.BAD_PASSPHRASE) throw e;
    } finally {
      pass.fill(0);
    }
  }
  throw new GpgError(ErrorCode.BAD_PASSPHRASE, `wrong passphrase ${tries} times`);
}
