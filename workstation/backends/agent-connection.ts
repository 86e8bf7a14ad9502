// The only way keytether talks to the workstation's gpg-agent: an AssuanClient behind an
// allow-list. Commands that could hand out secret material or change key storage (EXPORT_KEY,
// KEYWRAP_KEY, GET_PASSPHRASE, PRESET_PASSPHRASE, …) are refused here, before a byte is written,
// and every command that is sent is reported to an optional observer (tests prove with it that
// nothing else ever reaches the agent).
//
// One operation's commands can be pipelined: gpg-agent (libassuan) reads command lines one at a
// time and answers each before reading the next, so writing them all at once and reading the
// replies in order is the same conversation with one round trip instead of one per command.

import net from 'node:net';
import { Duplex } from 'node:stream';
import { AssuanClient, MAX_OUT_LINE_BYTES } from '../../protocol/assuan/index.js';
import type { TransactOptions, TransactResult } from '../../protocol/assuan/index.js';
import { ErrorCode, GpgError, toGpgError } from '../../protocol/gpg-error.js';

export const ALLOWED_AGENT_COMMANDS: ReadonlySet<string> = new Set([
  'RESET',
  'OPTION',
  'GETINFO',
  'HAVEKEY',
  'KEYINFO',
  'READKEY',
  'SIGKEY',
  'SETKEY',
  'SETKEYDESC',
  'SETHASH',
  'PKSIGN',
  'PKDECRYPT',
]);

export type AgentSocketKind = 'normal' | 'extra';

/**
 * Called with every command line just before it is written (never for refused ones), and which
 * connection it goes on (numbered from 1 in the order they were opened, per process).
 */
export type CommandObserver = (socket: AgentSocketKind, line: string, connection: number) => void;

/** One command of a pipeline and how its reply is read. */
export interface PipelineStep {
  command: string;
  opts?: TransactOptions;
}

const CONNECT_TIMEOUT_MS = 10_000;
const MAX_PIPELINE_STEPS = 16;

/**
 * The stream the AssuanClient talks through: the agent's socket, with a way to write command lines
 * ahead of the client. When the client then writes one of them (to read its reply), that write is
 * dropped; a write that is not the expected line means the two are out of step, and the
 * connection is destroyed. (A net.Socket subclass cannot do this: connect() resets `write`.)
 */
class PipelinedStream extends Duplex {
  readonly #sock: net.Socket;
  readonly #ahead: string[] = [];

  constructor(sock: net.Socket) {
    super({ decodeStrings: false });
    this.#sock = sock;
    sock.on('data', (chunk: Buffer) => {
      if (!this.push(chunk)) sock.pause();
    });
    sock.on('end', () => this.push(null));
    // Errors end the connection; the client sees a close either way.
    sock.on('error', () => sock.destroy());
    sock.on('close', () => this.destroy());
  }

  get pendingAhead(): number {
    return this.#ahead.length;
  }

  sendAhead(lines: string[]): void {
    // Written past this stream's own queue, so that queue must be empty for the order to hold.
    if (this.writableLength > 0 || this.#ahead.length > 0) {
      throw new GpgError(ErrorCode.ASS_GENERAL, 'connection busy');
    }
    this.#ahead.push(...lines);
    this.#sock.write(lines.join(''));
  }

  override _read(): void {
    this.#sock.resume();
  }

  override _write(
    chunk: string | Buffer,
    encoding: BufferEncoding,
    done: (err?: Error | null) => void,
  ): void {
    if (this.#ahead.length === 0) {
      // The callback waits for the socket, so that a caller wiping the buffer afterwards (an
      // INQUIRE answer) does not wipe bytes still queued to be sent.
      this.#sock.write(chunk, encoding, (err) => done(err));
      return;
    }
    const expected = this.#ahead.shift();
    if (chunk !== expected) {
      this.#ahead.length = 0;
      done(new Error('pipelined command out of step'));
      return;
    }
    done();
  }

  override _final(done: (err?: Error | null) => void): void {
    this.#sock.end();
    done();
  }

  override _destroy(err: Error | null, done: (err?: Error | null) => void): void {
    this.#sock.destroy();
    done(err);
  }
}

let connections = 0;

export class AgentConnection {
  #replies = 0;
  #broken = false;
  readonly id = ++connections;

  private constructor(
    private readonly client: AssuanClient,
    private readonly sock: PipelinedStream,
    readonly kind: AgentSocketKind,
    private readonly observe: CommandObserver | undefined,
  ) {}

  static async open(
    socketPath: string,
    kind: AgentSocketKind,
    observe?: CommandObserver,
  ): Promise<AgentConnection> {
    const sock = await new Promise<net.Socket>((resolve, reject) => {
      const s = net.createConnection(socketPath);
      const timer = setTimeout(() => {
        s.destroy();
        reject(new GpgError(ErrorCode.NO_AGENT, 'gpg-agent did not accept the connection'));
      }, CONNECT_TIMEOUT_MS);
      s.once('connect', () => {
        clearTimeout(timer);
        s.off('error', onError);
        resolve(s);
      });
      const onError = () => {
        clearTimeout(timer);
        reject(new GpgError(ErrorCode.NO_AGENT, `cannot connect to gpg-agent (${kind} socket)`));
      };
      s.once('error', onError);
    });
    const stream = new PipelinedStream(sock);
    const client = await AssuanClient.connect(stream, { timeoutMs: CONNECT_TIMEOUT_MS });
    return new AgentConnection(client, stream, kind, observe);
  }

  get closed(): boolean {
    // The client learns of a destroy only a tick later; the pool must not take it back before.
    return this.#broken || this.client.closed;
  }

  /** Replies (OK or ERR) read on this connection so far. */
  get replies(): number {
    return this.#replies;
  }

  transact(command: string, opts: TransactOptions = {}): Promise<TransactResult> {
    const refused = this.#refuse(command);
    if (refused) return Promise.reject(refused);
    this.observe?.(this.kind, command, this.id);
    return this.#read(command, opts);
  }

  /**
   * Writes every step's command in one go, then reads the replies in order. Every reply is read
   * even after an ERR (so the connection stays usable), later INQUIREs are then answered with
   * CAN, and the first ERR is what this rejects with. Nothing is sent if any command is refused.
   */
  async pipeline(steps: PipelineStep[]): Promise<TransactResult[]> {
    if (steps.length === 0 || steps.length > MAX_PIPELINE_STEPS) {
      throw new GpgError(ErrorCode.INV_VALUE, 'bad pipeline length');
    }
    for (const s of steps) {
      const refused = this.#refuse(s.command);
      if (refused) throw refused;
      // The client would refuse these without reading a reply, which would put it out of step.
      if (/[\r\n]/.test(s.command) || Buffer.byteLength(s.command) > MAX_OUT_LINE_BYTES) {
        throw new GpgError(ErrorCode.ASS_LINE_TOO_LONG);
      }
      if (s.opts?.signal?.aborted) throw new GpgError(ErrorCode.CANCELED);
    }
    if (this.closed) throw new GpgError(ErrorCode.ASS_GENERAL, 'connection closed');
    for (const s of steps) this.observe?.(this.kind, s.command, this.id);
    this.sock.sendAhead(steps.map((s) => `${s.command}\n`));

    const results: TransactResult[] = [];
    let first: GpgError | undefined;
    try {
      for (const s of steps) {
        const opts: TransactOptions = { ...s.opts };
        if (first && opts.onInquire) opts.onInquire = () => null;
        try {
          results.push(await this.#read(s.command, opts));
        } catch (e) {
          first ??= toGpgError(e);
          // Out of step (a reply never read) or gone: later replies cannot be matched any more.
          if (this.closed || this.sock.pendingAhead > steps.length - 1 - results.length) break;
          results.push(EMPTY_RESULT);
        }
      }
    } finally {
      if (this.sock.pendingAhead > 0) {
        // Some reply was never read (cancelled, timed out): the connection cannot be reused.
        this.#broken = true;
        this.sock.destroy();
      }
    }
    if (first) {
      for (const r of results) r.data.fill(0);
      throw first;
    }
    return results;
  }

  close(): void {
    this.client.close();
  }

  #refuse(command: string): GpgError | undefined {
    const word = (command.split(/[ \t]/, 1)[0] ?? '').toUpperCase();
    if (ALLOWED_AGENT_COMMANDS.has(word)) return undefined;
    return new GpgError(
      ErrorCode.FORBIDDEN,
      `keytether never sends ${word.slice(0, 20)} to gpg-agent`,
    );
  }

  async #read(command: string, opts: TransactOptions): Promise<TransactResult> {
    try {
      const r = await this.client.transact(command, opts);
      this.#replies++;
      return r;
    } catch (e) {
      if (!this.client.closed) this.#replies++;
      throw e;
    }
  }
}

const EMPTY_RESULT: TransactResult = Object.freeze({
  data: Buffer.alloc(0),
  status: [],
  okText: '',
}) as TransactResult;
