// The server half of Assuan, serving one connection over a Duplex it is handed, with the
// standard commands libassuan provides to every server (reference §1.3).

import type { Duplex } from 'node:stream';
import { ErrorCode, GpgError } from '../gpg-error.js';
import {
  MAX_OUT_LINE_BYTES,
  decodeDataLine,
  encodeData,
  oneLine,
  parseCommandLine,
  parseOptionArgs,
} from './codec.js';
import { MAX_LINE_BYTES } from './line-reader.js';
import { CLOSED, LineSource, DEFAULT_MAX_QUEUED_BYTES } from './line-source.js';

export interface AssuanCommandContext {
  readonly command: string;
  readonly args: string;
  sendStatus(keyword: string, ...args: string[]): void;
  sendData(data: Uint8Array | string): void;
  sendComment(text: string): void;
  /** Sends `INQUIRE <keyword>[ args]`, collects D lines until END; CAN → GpgError ASS_CANCELED;
   *  more than maxLength bytes → ASS_TOO_MUCH_DATA (after draining to END); other command → ASS_UNEXPECTED_CMD. */
  inquire(keyword: string, opts: { maxLength: number; args?: string }): Promise<Buffer>;
  readonly signal: AbortSignal;
}

export type AssuanHandler = (ctx: AssuanCommandContext) => void | string | Promise<void | string>;

export interface AssuanServerOptions {
  commands: Record<string, AssuanHandler>;
  greeting?: string;
  peerPid?: number;
  onOption?: (name: string, value: string | undefined) => void | Promise<void>;
  onReset?: () => void;
  onError?: (err: unknown, command: string) => void;
  /** Bytes accepted before a LF (a CR included); default 1001 as libassuan. */
  maxLineBytes?: number;
  /** Unread input queued before the stream is paused; default 64 KiB. */
  maxQueuedBytes?: number;
  /** Deadlines on a peer that owes us bytes (slowloris); none by default. */
  deadlines?: ClientDeadlines;
  /** One sentence when a deadline cut the connection, for the caller's log. */
  onCut?: (sentence: string) => void;
}

/**
 * How long a client may keep us waiting for what it owes: its first command (and an inquiry's
 * answer) within `idleMs`, and each line within `lineMs` of its first byte. Nothing limits a
 * client waiting for our answer (a confirmation may take minutes), nor one idle between
 * commands after its first (gpg hashes a large file between SETHASH's neighbours).
 */
export interface ClientDeadlines {
  idleMs: number;
  lineMs: number;
}

const DEFAULT_GREETING = 'Pleased to meet you';
// Standard commands a table entry cannot replace: they carry the session's framing and hooks.
const FIXED_BUILTINS = ['NOP', 'OPTION', 'BYE', 'RESET', 'HELP'];
const OVERRIDABLE_BUILTINS = ['CANCEL', 'AUTH', 'END', 'INPUT', 'OUTPUT'];

class ConnectionClosed extends Error {}

/** Serves one connection; resolves when the peer closes (EOF/BYE). Never rejects. */
export async function serveAssuan(stream: Duplex, opts: AssuanServerOptions): Promise<void> {
  try {
    await new Session(stream, opts).run();
  } catch (e) {
    safeReport(opts, e, '');
  }
}

function safeReport(opts: AssuanServerOptions, err: unknown, command: string): void {
  try {
    opts.onError?.(err, command);
  } catch {
    // A failing logger must not take the connection down.
  }
}

class Session {
  private readonly source: LineSource;
  private readonly abort = new AbortController();
  private readonly commands = new Map<string, AssuanHandler>();
  private inquiring = false;

  constructor(
    private readonly stream: Duplex,
    private readonly opts: AssuanServerOptions,
  ) {
    for (const [name, handler] of Object.entries(opts.commands)) {
      this.commands.set(name.toUpperCase(), handler);
    }
    this.source = new LineSource(stream, {
      maxLineBytes: opts.maxLineBytes ?? MAX_LINE_BYTES,
      maxQueuedBytes: opts.maxQueuedBytes ?? DEFAULT_MAX_QUEUED_BYTES,
      ...(opts.deadlines
        ? { lineDeadlineMs: opts.deadlines.lineMs, onOverdue: (s: string) => this.cut(s) }
        : {}),
    });
    // A half-close (EOF) only means "no more commands": like gpg-agent, the queued ones still run
    // and get their replies. Only a closed or failed stream cancels the command in progress.
    void this.source.whenClosed.then(() =>
      this.abort.abort(new GpgError(ErrorCode.ASS_GENERAL, 'connection closed')),
    );
  }

  private cut(sentence: string): void {
    // gpg-agent has no such deadline, so no error code means it; Timeout reads right to gpg.
    this.writeError(new GpgError(ErrorCode.TIMEOUT, sentence));
    if (!this.stream.writableEnded) this.stream.end();
    // The peer may not read either: its socket goes now, not when it drains.
    setImmediate(() => this.stream.destroy());
    try {
      this.opts.onCut?.(sentence);
    } catch {
      // A failing logger must not keep the connection.
    }
  }

  private idleWait(what: string): { ms: number; what: string } | undefined {
    return this.opts.deadlines ? { ms: this.opts.deadlines.idleMs, what } : undefined;
  }

  async run(): Promise<void> {
    const greeting =
      this.opts.greeting ??
      (this.opts.peerPid !== undefined
        ? `${DEFAULT_GREETING}, process ${this.opts.peerPid}`
        : DEFAULT_GREETING);
    this.writeLine(`OK ${oneLine(greeting, MAX_OUT_LINE_BYTES - 3)}`);
    let first = true;
    for (;;) {
      if (this.source.closed) break;
      await this.waitForDrain();
      const ev = await this.source.next(first ? this.idleWait('command') : undefined);
      first = false;
      if (!ev || this.source.closed) break;
      if (ev.type === 'too-long') {
        // gpg-agent 2.2.40 (libassuan) drops the whole connection here without a reply; we answer
        // with the error its log shows and go on, so one bad line does not end a session.
        this.writeError(new GpgError(ErrorCode.ASS_LINE_TOO_LONG));
        continue;
      }
      if (ev.type === 'incomplete') {
        this.writeError(new GpgError(ErrorCode.ASS_INCOMPLETE_LINE));
        continue;
      }
      const parsed = parseCommandLine(ev.line);
      if (parsed.kind === 'ignore') continue;
      if (parsed.kind === 'error') {
        this.writeError(parsed.error);
        continue;
      }
      if (parsed.command === 'BYE') {
        this.writeLine('OK closing connection');
        break;
      }
      try {
        await this.dispatch(parsed.word, parsed.command, parsed.args);
      } catch (e) {
        if (e instanceof ConnectionClosed) break;
        throw e;
      }
    }
    this.finish();
  }

  private finish(): void {
    this.source.detach();
    this.abort.abort(new GpgError(ErrorCode.ASS_GENERAL, 'connection closed'));
    if (!this.stream.destroyed && !this.stream.writableEnded) this.stream.end();
  }

  private async waitForDrain(): Promise<void> {
    if (!this.stream.writableNeedDrain || this.source.closed) return;
    let onDrain!: () => void;
    const drained = new Promise<void>((resolve) => (onDrain = resolve));
    this.stream.once('drain', onDrain);
    await this.source.raceClose(drained);
    this.stream.off('drain', onDrain);
  }

  private writeLine(text: string): void {
    if (this.stream.destroyed || this.stream.writableEnded) return;
    this.stream.write(`${text}\n`);
  }

  private writeError(err: GpgError): void {
    this.writeLine(oneLine(err.toAssuan(), MAX_OUT_LINE_BYTES));
  }

  private async dispatch(word: string, command: string, args: string): Promise<void> {
    let result: void | string;
    try {
      result = await this.execute(word, command, args);
    } catch (e) {
      if (e instanceof ConnectionClosed) throw e;
      if (!(e instanceof GpgError)) safeReport(this.opts, e, command);
      this.writeError(e instanceof GpgError ? e : new GpgError(ErrorCode.GENERAL));
      return;
    }
    this.writeLine(
      typeof result === 'string' && result ? `OK ${oneLine(result, MAX_OUT_LINE_BYTES - 3)}` : 'OK',
    );
  }

  private async execute(word: string, command: string, args: string): Promise<void | string> {
    const handler = FIXED_BUILTINS.includes(command) ? undefined : this.commands.get(command);
    if (handler) return this.runHandler(handler, command, args);
    switch (command) {
      case 'NOP':
        return;
      case 'RESET':
        this.opts.onReset?.();
        return;
      case 'OPTION': {
        const opt = parseOptionArgs(args);
        if (opt instanceof GpgError) throw opt;
        await this.opts.onOption?.(opt.name, opt.value);
        return;
      }
      case 'HELP':
        return this.help(args);
      case 'END':
      case 'CANCEL':
      case 'AUTH':
      case 'INPUT':
      case 'OUTPUT':
        throw new GpgError(ErrorCode.NOT_IMPLEMENTED);
    }
    // libassuan routes `D ` (exact case) to its data-line handler, which is not implemented;
    // gpg-agent 2.2.40 answers Not implemented for it but Unknown command for `d `/`CAN`.
    if (word === 'D') throw new GpgError(ErrorCode.NOT_IMPLEMENTED);
    throw new GpgError(ErrorCode.ASS_UNKNOWN_CMD);
  }

  private help(args: string): void {
    const names = [...FIXED_BUILTINS, ...OVERRIDABLE_BUILTINS];
    for (const name of this.commands.keys()) if (!names.includes(name)) names.push(name);
    const wanted = args.trim().toUpperCase();
    if (wanted) {
      if (!names.includes(wanted)) throw new GpgError(ErrorCode.NOT_FOUND);
      this.writeLine(`# ${wanted}`);
      return;
    }
    for (const name of names) this.writeLine(`# ${name}`);
  }

  private async runHandler(
    handler: AssuanHandler,
    command: string,
    args: string,
  ): Promise<void | string> {
    let active = true;
    const guard = () => {
      if (!active) throw new GpgError(ErrorCode.ASS_GENERAL, 'command already finished');
    };
    const ctx: AssuanCommandContext = {
      command,
      args,
      signal: this.abort.signal,
      sendStatus: (keyword, ...rest) => {
        guard();
        const text = [keyword, ...rest].join(' ');
        this.writeLine(`S ${oneLine(text, MAX_OUT_LINE_BYTES - 2)}`);
      },
      sendData: (data) => {
        guard();
        const bytes = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
        const lines = encodeData(bytes);
        if (lines.length > 0 && !this.stream.destroyed && !this.stream.writableEnded) {
          this.stream.write(lines);
        }
      },
      sendComment: (text) => {
        guard();
        this.writeLine(`# ${oneLine(text, MAX_OUT_LINE_BYTES - 2)}`);
      },
      inquire: async (keyword, o) => {
        guard();
        return this.inquire(keyword, o.maxLength, o.args);
      },
    };
    try {
      // A handler that ignores ctx.signal must not keep a dead connection's session alive.
      const result = await this.source.raceClose((async () => handler(ctx))());
      if (result === CLOSED) throw new ConnectionClosed();
      return result;
    } finally {
      active = false;
    }
  }

  private async inquire(keyword: string, maxLength: number, args?: string): Promise<Buffer> {
    if (this.inquiring) throw new GpgError(ErrorCode.ASS_GENERAL, 'nested inquiry');
    if (!/^[!-~]+$/.test(keyword)) throw new GpgError(ErrorCode.ASS_PARAMETER, 'bad keyword');
    this.inquiring = true;
    const chunks: Buffer[] = [];
    let total = 0;
    let failure: GpgError | undefined;
    const wipe = () => {
      for (const c of chunks) c.fill(0);
      chunks.length = 0;
    };
    try {
      this.writeLine(oneLine(`INQUIRE ${keyword}${args ? ` ${args}` : ''}`, MAX_OUT_LINE_BYTES));
      for (;;) {
        const ev = await this.source.next(this.idleWait(`answer to INQUIRE ${keyword}`));
        if (!ev || this.source.closed)
          throw new GpgError(ErrorCode.ASS_GENERAL, 'connection closed');
        if (ev.type === 'too-long') {
          // Keep reading to END so the client's remaining D lines are not taken as commands.
          failure ??= new GpgError(ErrorCode.ASS_LINE_TOO_LONG);
          continue;
        }
        if (ev.type === 'incomplete') throw new GpgError(ErrorCode.ASS_INCOMPLETE_LINE);
        const line = ev.line;
        if (line.length === 0 || line[0] === 0x23) continue;
        if (line[0] === 0x44 && (line.length === 1 || line[1] === 0x20)) {
          if (maxLength <= 0) throw new GpgError(ErrorCode.ASS_UNEXPECTED_CMD);
          if (failure) continue;
          const data = decodeDataLine(line.subarray(2));
          total += data.length;
          if (total > maxLength) {
            data.fill(0);
            wipe();
            failure = new GpgError(ErrorCode.ASS_TOO_MUCH_DATA);
            continue;
          }
          chunks.push(data);
          continue;
        }
        const word = line.toString('latin1', 0, Math.min(line.length, 4)).toUpperCase();
        if (word === 'END' || word.startsWith('END ')) {
          if (failure) throw failure;
          const result = Buffer.concat(chunks, total);
          wipe();
          return result;
        }
        if (word === 'CAN' || word.startsWith('CAN ')) throw new GpgError(ErrorCode.ASS_CANCELED);
        throw new GpgError(ErrorCode.ASS_UNEXPECTED_CMD);
      }
    } catch (e) {
      wipe();
      throw e;
    } finally {
      this.inquiring = false;
    }
  }
}
