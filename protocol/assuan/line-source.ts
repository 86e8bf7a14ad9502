// Pulls Assuan lines from a Duplex one at a time, so that commands run strictly in order, while
// keeping input bounded: once too much unread input is queued the stream is paused until the
// consumer catches up.

import type { Duplex } from 'node:stream';
import { LineReader, MAX_LINE_BYTES, type LineEvent } from './line-reader.js';

export const DEFAULT_MAX_QUEUED_BYTES = 64 * 1024;

/** What {@link LineSource.raceClose} resolves with when the stream closed first. */
export const CLOSED: unique symbol = Symbol('closed');

export interface LineSourceOptions {
  maxLineBytes?: number;
  maxQueuedBytes?: number;
  /** Called once when the readable side ends or the stream closes/fails. */
  onEnd?: () => void;
  /**
   * A line whose first byte has arrived must be complete within this many ms, or `onOverdue`
   * is called (once): a peer dribbling bytes owes us the rest. Not counted while the stream is
   * paused because we are behind. Default: no deadline.
   */
  lineDeadlineMs?: number;
  /** A deadline passed (see lineDeadlineMs and next's waitMs); SENTENCE says which. */
  onOverdue?: (sentence: string) => void;
}

export class LineSource {
  private readonly reader: LineReader;
  private readonly maxQueuedBytes: number;
  private readonly queue: LineEvent[] = [];
  private head = 0;
  private queuedBytesCount = 0;
  private paused = false;
  private eofSeen = false;
  private closedSeen = false;
  private waiter: (() => void) | null = null;
  private readonly onEnd: (() => void) | undefined;
  private readonly lineDeadlineMs: number | undefined;
  private readonly onOverdue: ((sentence: string) => void) | undefined;
  private lineTimer: NodeJS.Timeout | undefined;
  private waitTimer: NodeJS.Timeout | undefined;
  private overdue = false;
  private readonly closeListeners = new Set<() => void>();
  private endNotified = false;
  /** Resolves when the stream has closed or failed (not on a mere half-close). */
  readonly whenClosed: Promise<void>;
  private resolveClosed!: () => void;

  constructor(
    private readonly stream: Duplex,
    opts: LineSourceOptions = {},
  ) {
    this.reader = new LineReader(opts.maxLineBytes ?? MAX_LINE_BYTES);
    this.maxQueuedBytes = Math.max(opts.maxQueuedBytes ?? DEFAULT_MAX_QUEUED_BYTES, 1);
    this.onEnd = opts.onEnd;
    this.lineDeadlineMs = opts.lineDeadlineMs;
    this.onOverdue = opts.onOverdue;
    this.whenClosed = new Promise((resolve) => (this.resolveClosed = resolve));
    stream.on('data', this.onData);
    stream.on('end', this.onEof);
    stream.on('close', this.onClose);
    // An error listener must stay attached for the life of the stream, or a late EPIPE would
    // crash the process.
    stream.on('error', this.onClose);
    if (stream.readableEnded) this.onEof();
    if (stream.destroyed) this.onClose();
  }

  /** True once no more input will arrive (EOF, close or error). */
  get ended(): boolean {
    return this.eofSeen || this.closedSeen;
  }

  /** True once the stream closed or failed; nothing can be written any more. */
  get closed(): boolean {
    return this.closedSeen;
  }

  get queuedBytes(): number {
    return this.queuedBytesCount;
  }

  get isPaused(): boolean {
    return this.paused;
  }

  /**
   * The next line event, or null once the input has ended and everything queued was taken.
   * With WAIT (the peer owes us a line now: the first command, an inquiry's answer), `onOverdue`
   * is called when no complete line arrived within `ms`.
   */
  async next(wait?: { ms: number; what: string }): Promise<LineEvent | null> {
    for (;;) {
      const ev = this.take();
      if (ev) {
        this.clearWait();
        return ev;
      }
      if (this.ended) {
        this.clearWait();
        return null;
      }
      if (wait && !this.waitTimer && this.onOverdue) {
        const { ms, what } = wait;
        this.waitTimer = setTimeout(() => this.fire(`no ${what} within ${seconds(ms)}`), ms);
      }
      await new Promise<void>((resolve) => (this.waiter = resolve));
    }
  }

  private clearWait(): void {
    clearTimeout(this.waitTimer);
    this.waitTimer = undefined;
  }

  private fire(sentence: string): void {
    if (this.overdue || this.closedSeen) return;
    this.overdue = true;
    this.clearTimers();
    this.onOverdue?.(sentence);
  }

  private clearTimers(): void {
    this.clearWait();
    clearTimeout(this.lineTimer);
    this.lineTimer = undefined;
  }

  // Armed while a started line sits unfinished and we are reading; cleared when it completes.
  private watchPartialLine(): void {
    if (this.lineDeadlineMs === undefined || !this.onOverdue || this.overdue) return;
    const owed = this.reader.bufferedBytes > 0 && !this.paused && !this.ended;
    if (!owed) {
      clearTimeout(this.lineTimer);
      this.lineTimer = undefined;
    } else if (!this.lineTimer) {
      const ms = this.lineDeadlineMs;
      this.lineTimer = setTimeout(
        () => this.fire(`a command line was not finished within ${seconds(ms)} of its first byte`),
        ms,
      );
    }
  }

  /**
   * Settles like `p`, or with CLOSED as soon as the stream closes. Unlike Promise.race against a
   * long-lived promise, this leaves nothing behind per call on a connection that stays open.
   */
  raceClose<T>(p: Promise<T>): Promise<T | typeof CLOSED> {
    if (this.closedSeen) {
      p.catch(() => undefined);
      return Promise.resolve(CLOSED);
    }
    return new Promise((resolve, reject) => {
      const onClose = () => resolve(CLOSED);
      this.closeListeners.add(onClose);
      p.then(
        (v) => {
          this.closeListeners.delete(onClose);
          resolve(v);
        },
        (e: unknown) => {
          this.closeListeners.delete(onClose);
          reject(e);
        },
      );
    });
  }

  /** Stops listening for data (the error listener stays, see constructor). */
  detach(): void {
    this.clearTimers();
    this.stream.off('data', this.onData);
    this.stream.off('end', this.onEof);
  }

  private take(): LineEvent | undefined {
    if (this.head >= this.queue.length) return undefined;
    const ev = this.queue[this.head]!;
    this.queue[this.head++] = undefined as unknown as LineEvent;
    if (this.head > 1024 && this.head * 2 > this.queue.length) {
      this.queue.splice(0, this.head);
      this.head = 0;
    }
    this.queuedBytesCount -= eventBytes(ev);
    if (this.paused && this.queuedBytesCount <= this.maxQueuedBytes / 2 && !this.ended) {
      this.paused = false;
      this.stream.resume();
      this.watchPartialLine();
    }
    return ev;
  }

  private wake(): void {
    const w = this.waiter;
    this.waiter = null;
    w?.();
  }

  private enqueue(ev: LineEvent): void {
    this.queue.push(ev);
    this.queuedBytesCount += eventBytes(ev);
  }

  private readonly onData = (chunk: Buffer | string): void => {
    const bytes = typeof chunk === 'string' ? Buffer.from(chunk, 'utf8') : chunk;
    for (const ev of this.reader.push(bytes)) this.enqueue(ev);
    if (!this.paused && this.queuedBytesCount > this.maxQueuedBytes) {
      this.paused = true;
      this.stream.pause();
    }
    this.watchPartialLine();
    this.wake();
  };

  private readonly onEof = (): void => {
    if (this.eofSeen) return;
    this.eofSeen = true;
    const tail = this.reader.end();
    if (tail) this.enqueue(tail);
    this.notifyEnd();
    this.wake();
  };

  private readonly onClose = (): void => {
    if (this.closedSeen) return;
    this.closedSeen = true;
    this.notifyEnd();
    this.resolveClosed();
    for (const l of [...this.closeListeners]) l();
    this.closeListeners.clear();
    this.wake();
  };

  private notifyEnd(): void {
    this.clearTimers();
    if (this.endNotified) return;
    this.endNotified = true;
    this.onEnd?.();
  }
}

// The LF counts too, so a flood of empty lines is bounded like any other input.
function eventBytes(ev: LineEvent): number {
  return ev.type === 'line' ? ev.line.length + 1 : 1;
}

function seconds(ms: number): string {
  return ms % 1000 === 0 ? `${ms / 1000} s` : `${(ms / 1000).toFixed(1)} s`;
}
