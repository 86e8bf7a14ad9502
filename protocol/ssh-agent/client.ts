// The client side of the ssh-agent protocol, for using the workstation's own ssh-agent (OpenSSH's,
// gpg-agent's enable-ssh-support socket, a hardware token's agent) as a key back end. It only
// lists and signs: the holder never adds, removes or locks keys in someone else's agent.
// One request at a time, in order, as the protocol requires of a connection.

import type { Duplex } from 'node:stream';
import { frame, MessageReader, MSG, SshReader, sshString, sshUint32, WireError } from './wire.js';

export interface AgentIdentity {
  blob: Buffer;
  comment: string;
}

/** The most identities read from one answer: more is not an agent anyone runs. */
const MAX_IDENTITIES = 1024;

export class SshAgentClient {
  readonly #stream: Duplex;
  readonly #reader = new MessageReader();
  #waiting: { resolve: (m: { type: number; body: Buffer }) => void; reject: (e: Error) => void }[] =
    [];
  #queue: Promise<unknown> = Promise.resolve();
  #failed: Error | undefined;

  constructor(stream: Duplex) {
    this.#stream = stream;
    stream.on('data', (chunk: Buffer) => {
      for (const m of this.#reader.push(chunk)) {
        if (m.kind === 'oversize') {
          this.#fail(new WireError('the ssh-agent sent a message over the size limit'));
          return;
        }
        this.#waiting.shift()?.resolve(m);
      }
    });
    const gone = (): void => this.#fail(new WireError('the ssh-agent closed the connection'));
    stream.on('close', gone);
    stream.on('end', gone);
    stream.on('error', (e) => this.#fail(new WireError(`ssh-agent connection: ${e.message}`)));
  }

  #fail(e: Error): void {
    this.#failed ??= e;
    for (const w of this.#waiting.splice(0)) w.reject(this.#failed);
    this.#stream.destroy();
  }

  /** Sends one message and resolves with the reply; TIMEOUTMS bounds the wait. */
  #request(msg: Buffer, timeoutMs: number): Promise<{ type: number; body: Buffer }> {
    const next = this.#queue.then(
      () =>
        new Promise<{ type: number; body: Buffer }>((resolve, reject) => {
          if (this.#failed) return reject(this.#failed);
          const timer = setTimeout(() => {
            this.#fail(new WireError(`the ssh-agent did not answer within ${timeoutMs} ms`));
          }, timeoutMs);
          this.#waiting.push({
            resolve: (m) => {
              clearTimeout(timer);
              resolve(m);
            },
            reject: (e) => {
              clearTimeout(timer);
              reject(e);
            },
          });
          this.#stream.write(msg);
        }),
    );
    this.#queue = next.catch(() => undefined);
    return next;
  }

  async identities(timeoutMs = 10_000): Promise<AgentIdentity[]> {
    const m = await this.#request(frame(MSG.REQUEST_IDENTITIES), timeoutMs);
    if (m.type !== MSG.IDENTITIES_ANSWER) throw new WireError('the ssh-agent refused to list keys');
    const r = new SshReader(m.body);
    const n = r.uint32();
    if (n > MAX_IDENTITIES) throw new WireError('the ssh-agent lists too many keys');
    const out: AgentIdentity[] = [];
    for (let i = 0; i < n; i++) {
      const blob = Buffer.from(r.string());
      const comment = r.string().toString('utf8');
      out.push({ blob, comment });
    }
    r.end();
    return out;
  }

  /** The signature blob (`string type, string sig`) the agent made over DATA with the key BLOB. */
  async sign(
    blob: Uint8Array,
    data: Uint8Array,
    flags: number,
    timeoutMs: number,
  ): Promise<Buffer> {
    const m = await this.#request(
      frame(MSG.SIGN_REQUEST, sshString(blob), sshString(data), sshUint32(flags)),
      timeoutMs,
    );
    if (m.type !== MSG.SIGN_RESPONSE) throw new WireError('the ssh-agent refused to sign');
    const r = new SshReader(m.body);
    const sig = Buffer.from(r.string());
    r.end();
    return sig;
  }

  close(): void {
    this.#stream.destroy();
  }
}
