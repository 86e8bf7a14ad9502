// Reaching the agent's control socket: its path, the one request line each side sends first,
// and the client's connect-and-ask (see workstation/control/control.ts for the protocol).

import net from 'node:net';
import { checkSocketPlace } from '../../system/unix-socket.js';
import fs from 'node:fs/promises';
import path from 'node:path';
import { UserError } from '../../system/user-error.js';

export const CONTROL_SOCKET_NAME = 'S.keytether';
const MAX_LINE_BYTES = 512;
export const REQUEST_TIMEOUT_MS = 10_000;
export const MAX_HOST_CHARS = 255;

export function controlSocketPath(home: string): string {
  return path.join(home, CONTROL_SOCKET_NAME);
}

export class ControlProtocolError extends Error {
  /** The peer did not finish its line in time (rather than sending a bad one). */
  readonly overdue: boolean;
  constructor(message: string, overdue = false) {
    super(message);
    this.overdue = overdue;
  }
}

/**
 * Reads the first LF-terminated line, then leaves the socket paused with whatever followed it
 * pushed back, so the next reader (the tunnel) starts exactly after the line.
 */
export function readLine(sock: net.Socket, timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    let buf = Buffer.alloc(0);
    const finish = (err: Error | undefined, line?: string, rest?: Buffer): void => {
      clearTimeout(timer);
      sock.off('data', onData);
      sock.off('end', onEnd);
      sock.off('close', onEnd);
      sock.off('error', onError);
      if (err) {
        reject(err);
        return;
      }
      sock.pause();
      if (rest && rest.length > 0) sock.unshift(rest);
      resolve(line!);
    };
    const onData = (chunk: Buffer): void => {
      buf = Buffer.concat([buf, chunk]);
      const nl = buf.indexOf(0x0a);
      if (nl < 0 ? buf.length > MAX_LINE_BYTES : nl > MAX_LINE_BYTES) {
        finish(new ControlProtocolError(`the first line is longer than ${MAX_LINE_BYTES} bytes`));
        return;
      }
      if (nl < 0) return;
      const text = buf.subarray(0, nl).toString('latin1');
      if (!/^[\x20-\x7e]*$/.test(text)) {
        finish(new ControlProtocolError('the first line is not printable ASCII'));
        return;
      }
      finish(undefined, text, buf.subarray(nl + 1));
    };
    const onEnd = (): void => finish(new ControlProtocolError('the connection closed'));
    const onError = (e: Error): void => finish(e);
    const timer = setTimeout(
      () => finish(new ControlProtocolError(`no complete line within ${timeoutMs / 1000} s`, true)),
      timeoutMs,
    );
    timer.unref();
    sock.on('data', onData);
    sock.on('end', onEnd);
    sock.on('close', onEnd);
    sock.on('error', onError);
    sock.resume();
  });
}

interface ControlConnection {
  sock: net.Socket;
  pid: number;
}

function noAgentCode(e: unknown): boolean {
  const code = (e as NodeJS.ErrnoException).code;
  return code === 'ENOENT' || code === 'ECONNREFUSED';
}

/**
 * Connects and sends REQUEST; resolves with the socket positioned after the `OK <pid>` line, or
 * undefined when no agent listens for HOME. Other failures are UserErrors (one sentence).
 */
export async function request(
  home: string,
  line: string,
  timeoutMs: number,
): Promise<ControlConnection | undefined> {
  const p = controlSocketPath(home);
  try {
    await fs.lstat(p);
  } catch (e) {
    if (noAgentCode(e)) return undefined;
    throw new UserError(`cannot reach the keytether agent at ${p}: ${(e as Error).message}`);
  }
  // Requests (and a tunnel's signatures) must only ever go to an agent of this user.
  await checkSocketPlace(p);
  const sock = net.connect(p);
  try {
    await new Promise<void>((resolve, reject) => {
      sock.once('connect', resolve);
      sock.once('error', reject);
    });
  } catch (e) {
    sock.destroy();
    if (noAgentCode(e)) return undefined;
    throw new UserError(`cannot reach the keytether agent at ${p}: ${(e as Error).message}`);
  }
  sock.on('error', () => {});
  sock.write(`${line}\n`);
  let reply: string;
  try {
    reply = await readLine(sock, timeoutMs);
  } catch (e) {
    sock.destroy();
    throw new UserError(
      `the keytether agent at ${p} did not answer (${(e as Error).message}); restart it`,
    );
  }
  const ok = /^OK ([1-9]\d{0,9})$/.exec(reply);
  if (!ok) {
    sock.destroy();
    const err = /^ERR (.{1,300})$/.exec(reply);
    throw new UserError(
      err
        ? `the keytether agent at ${p} refused the request: ${err[1]}`
        : `${p} does not speak the keytether control protocol; is it from another version? restart the agent`,
    );
  }
  return { sock, pid: Number(ok[1]) };
}

/** How one kind of answer reads when it cannot be read (each keeps its own sentence). */
export interface AnswerWords {
  maxBytes: number;
  timeoutMs: number;
  /** Why, when the answer does not end in time / grows past maxBytes. */
  late: string;
  long: string;
  /** The whole sentence for WHY. */
  sentence: (why: string) => string;
}

/** The rest of a control answer, up to the agent's EOF, bounded in size and time. */
export function readAnswer(sock: net.Socket, w: AnswerWords): Promise<string> {
  return new Promise<string>((resolve, reject) => {
    const parts: Buffer[] = [];
    let size = 0;
    const timer = setTimeout(() => fail(w.late), w.timeoutMs);
    timer.unref();
    function fail(why: string): void {
      clearTimeout(timer);
      sock.destroy();
      reject(new UserError(w.sentence(why)));
    }
    sock.on('data', (d: Buffer) => {
      size += d.length;
      if (size > w.maxBytes) fail(w.long);
      else parts.push(d);
    });
    sock.on('end', () => {
      clearTimeout(timer);
      resolve(Buffer.concat(parts).toString('utf8'));
    });
    sock.resume();
  });
}
