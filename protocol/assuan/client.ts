// The client half of Assuan (what gpg and gpg-agent do towards an agent or a pinentry), over a
// Duplex it is handed. Transactions are strictly sequential on the wire.

import type { Duplex } from 'node:stream';
import { ErrorCode, GpgError, toGpgError } from '../gpg-error.js';
import { MAX_OUT_LINE_BYTES, encodeData, parseResponseLine } from './codec.js';
import { LineSource } from './line-source.js';

export interface TransactOptions {
  onStatus?: (keyword: string, args: string) => void;
  /** Answer an INQUIRE: return bytes (sent as D lines + END) or null (sent as CAN). */
  onInquire?: (keyword: string, args: string) => Promise<Uint8Array | null> | Uint8Array | null;
  maxDataBytes?: number;
  timeoutMs?: number;
  signal?: AbortSignal;
}

export interface TransactResult {
  data: Buffer;
  status: { keyword: string; args: string }[];
  okText: string;
}

const DEFAULT_CONNECT_TIMEOUT_MS = 10_000;
const DEFAULT_MAX_DATA_BYTES = 1024 * 1024;
// Status lines are kept for the result; bound them like the data.
const MAX_STATUS_LINES = 4096;

function closedError(): GpgError {
  return new GpgError(ErrorCode.ASS_GENERAL, 'connection closed');
}

/** Rejects on timeout or abort; `cancel` must be called when the guarded work is over. */
class Deadline {
  readonly promise: Promise<never>;
  private timer: NodeJS.Timeout | undefined;
  private signal: AbortSignal | undefined;
  private onAbort: (() => void) | undefined;
  fired: GpgError | undefined;

  constructor(timeoutMs: number | undefined, signal: AbortSignal | undefined, what: string) {
    this.promise = new Promise<never>((_, reject) => {
      const fire = (err: GpgError) => {
        this.fired ??= err;
        reject(this.fired);
      };
      if (timeoutMs !== undefined && Number.isFinite(timeoutMs)) {
        this.timer = setTimeout(
          () => fire(new GpgError(ErrorCode.TIMEOUT, `no reply to ${what}`)),
          Math.max(0, timeoutMs),
        );
      }
      if (signal) {
        this.signal = signal;
        this.onAbort = () => fire(new GpgError(ErrorCode.CANCELED));
        if (signal.aborted) this.onAbort();
        else signal.addEventListener('abort', this.onAbort, { once: true });
      }
    });
    this.promise.catch(() => undefined);
  }

  race<T>(p: Promise<T>): Promise<T> {
    return Promise.race([p, this.promise]);
  }

  cancel(): void {
    if (this.timer) clearTimeout(this.timer);
    if (this.signal && this.onAbort) this.signal.removeEventListener('abort', this.onAbort);
  }
}

export class AssuanClient {
  private closedFlag = false;
  private busy = false;
  private chain: Promise<unknown> = Promise.resolve();

  private constructor(
    private readonly stream: Duplex,
    private readonly source: LineSource,
    readonly greeting: string,
  ) {}

  /** Reads the greeting (first non-comment line must be OK) within timeoutMs (default 10 s). */
  static async connect(stream: Duplex, opts: { timeoutMs?: number } = {}): Promise<AssuanClient> {
    let client: AssuanClient | undefined;
    const source = new LineSource(stream, {
      onEnd: () => {
        if (client) client.closedFlag = true;
      },
    });
    const deadline = new Deadline(
      opts.timeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS,
      undefined,
      'connect',
    );
    try {
      for (;;) {
        const ev = await deadline.race(source.next());
        if (!ev) throw new GpgError(ErrorCode.ASS_GENERAL, 'connection closed before greeting');
        if (ev.type !== 'line') throw new GpgError(ErrorCode.ASS_GENERAL, 'malformed greeting');
        const r = parseResponseLine(ev.line);
        if (r.type === 'COMMENT') continue;
        if (r.type !== 'OK')
          throw new GpgError(ErrorCode.ASS_GENERAL, 'server did not greet with OK');
        client = new AssuanClient(stream, source, r.text);
        if (source.ended) client.closedFlag = true;
        return client;
      }
    } catch (e) {
      source.detach();
      stream.destroy();
      throw toGpgError(e);
    } finally {
      deadline.cancel();
    }
  }

  get closed(): boolean {
    return this.closedFlag;
  }

  /** Sends one command line and collects D/S until OK/ERR; ERR → throws GpgError. Queued. */
  transact(command: string, opts: TransactOptions = {}): Promise<TransactResult> {
    const run = this.chain.then(() => this.run(command, opts));
    this.chain = run.catch(() => undefined);
    return run;
  }

  /** Sends BYE best-effort and ends the stream (destroys it if a transaction is in flight). */
  close(): void {
    if (this.closedFlag && (this.stream.destroyed || this.stream.writableEnded)) return;
    this.closedFlag = true;
    if (this.busy) {
      this.stream.destroy();
      return;
    }
    if (!this.stream.destroyed && !this.stream.writableEnded) {
      this.stream.write('BYE\n');
      this.stream.end();
    }
  }

  private write(data: string | Buffer, wipeAfter = false): void {
    if (this.stream.destroyed || this.stream.writableEnded) return;
    if (wipeAfter && Buffer.isBuffer(data)) this.stream.write(data, () => data.fill(0));
    else this.stream.write(data);
  }

  private async run(command: string, opts: TransactOptions): Promise<TransactResult> {
    if (this.closedFlag) throw closedError();
    if (/[\r\n]/.test(command)) throw new GpgError(ErrorCode.INV_VALUE, 'CR or LF in command');
    if (Buffer.byteLength(command, 'utf8') > MAX_OUT_LINE_BYTES) {
      throw new GpgError(ErrorCode.ASS_LINE_TOO_LONG);
    }
    if (opts.signal?.aborted) throw new GpgError(ErrorCode.CANCELED);
    const maxData = opts.maxDataBytes ?? DEFAULT_MAX_DATA_BYTES;
    const word = command.split(/[ \t]/, 1)[0] ?? '';
    const deadline = new Deadline(opts.timeoutMs, opts.signal, word);
    const data: Buffer[] = [];
    let dataBytes = 0;
    const status: { keyword: string; args: string }[] = [];
    let failure: GpgError | undefined;
    const wipe = () => {
      for (const d of data) d.fill(0);
      data.length = 0;
    };
    this.busy = true;
    try {
      this.write(`${command}\n`);
      for (;;) {
        const ev = await deadline.race(this.source.next());
        if (!ev) {
          this.closedFlag = true;
          throw closedError();
        }
        if (ev.type !== 'line') {
          // Lost framing: whatever follows cannot be matched to this command any more.
          throw this.protocolError(
            ev.type === 'too-long' ? ErrorCode.ASS_LINE_TOO_LONG : ErrorCode.ASS_INCOMPLETE_LINE,
          );
        }
        const r = parseResponseLine(ev.line);
        switch (r.type) {
          case 'COMMENT':
          case 'END':
            continue;
          case 'D':
            if (failure) continue;
            dataBytes += r.data.length;
            if (dataBytes > maxData) {
              r.data.fill(0);
              wipe();
              failure = new GpgError(ErrorCode.ASS_TOO_MUCH_DATA);
            } else {
              data.push(r.data);
            }
            continue;
          case 'S':
            if (status.length >= MAX_STATUS_LINES) {
              failure ??= new GpgError(ErrorCode.ASS_TOO_MUCH_DATA, 'too many status lines');
              continue;
            }
            status.push({ keyword: r.keyword, args: r.args });
            try {
              opts.onStatus?.(r.keyword, r.args);
            } catch (e) {
              failure ??= toGpgError(e);
            }
            continue;
          case 'INQUIRE': {
            const f = await this.answerInquiry(r.keyword, r.args, opts, deadline, failure);
            failure ??= f;
            continue;
          }
          case 'OK':
            if (failure) throw failure;
            {
              const out = Buffer.concat(data, dataBytes);
              // The pieces are decoded copies of the payload (a passphrase or session key).
              wipe();
              return { data: out, status, okText: r.text };
            }
          case 'ERR':
            throw failure ?? GpgError.fromValue(r.value, errDetail(r.text));
          case 'INVALID':
            throw this.protocolError(ErrorCode.ASS_GENERAL, 'invalid response line');
        }
      }
    } catch (e) {
      wipe();
      if (deadline.fired && e === deadline.fired) {
        this.closedFlag = true;
        this.stream.destroy();
      }
      throw toGpgError(e);
    } finally {
      this.busy = false;
      deadline.cancel();
    }
  }

  /** Answers one INQUIRE; returns the error that should fail the transaction, if any. */
  private async answerInquiry(
    keyword: string,
    args: string,
    opts: TransactOptions,
    deadline: Deadline,
    failure: GpgError | undefined,
  ): Promise<GpgError | undefined> {
    if (!opts.onInquire) {
      // libassuan: get out of inquire mode with END, then fail the command.
      this.write('END\n');
      return new GpgError(ErrorCode.ASS_NO_INQUIRE_CB);
    }
    if (failure) {
      this.write('CAN\n');
      return undefined;
    }
    let answer: Uint8Array | null;
    try {
      answer = await deadline.race(Promise.resolve().then(() => opts.onInquire!(keyword, args)));
    } catch (e) {
      if (deadline.fired && e === deadline.fired) throw e;
      this.write('CAN\n');
      return toGpgError(e);
    }
    if (answer === null) {
      this.write('CAN\n');
      return undefined;
    }
    const lines = encodeData(answer);
    const out = Buffer.concat([lines, Buffer.from('END\n')]);
    lines.fill(0);
    this.write(out, true);
    return undefined;
  }

  private protocolError(code: number, detail?: string): GpgError {
    this.closedFlag = true;
    this.stream.destroy();
    return new GpgError(code, detail);
  }
}

/**
 * The part of an ERR text worth keeping as detail: libassuan writes `<strerror> <<source>>[ -
 * detail]`, and repeating the first two in the detail would print them twice when relayed.
 */
function errDetail(text: string): string | undefined {
  const m = /^.*? <[^<>]*>(?: - (.*))?$/s.exec(text);
  if (m) return m[1] || undefined;
  return text || undefined;
}
