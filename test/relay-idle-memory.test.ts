// What keeps an idle holder cheap in the relay (`npm run bench -- load` measures about 11 KiB of
// RSS per authenticated idle holder, goal ≤ 20 KiB): no WebSocket compression, whatever a peer
// offers. permessage-deflate would give every connection its own zlib streams (a 32 KiB window
// each way plus deflate's buffers), several times the whole budget, and any client may ask.

import { generateKeyPairSync, sign } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import t from 'tap';
import { WebSocket } from 'ws';
import { relayAuthMessage } from '../protocol/relay/identity.js';
import { buildRelay, listenRelay } from '../server/relay/index.js';

const app = buildRelay({ logger: false });
const base = (await listenRelay(app, '127.0.0.1', 0)).replace(/^http/, 'ws');
t.teardown(() => app.close());

interface Opened {
  ws: WebSocket;
  /** The 101 response. */
  res: IncomingMessage;
  /** Text messages from the relay, each in turn; rejects once the relay closed. */
  next(): Promise<Record<string, unknown>>;
}

/** Opens PATH offering permessage-deflate. */
function offeringDeflate(path: string): Promise<Opened> {
  const ws = new WebSocket(base + path, { perMessageDeflate: true });
  ws.on('error', () => {});
  // Listening from the start: the relay's challenge may arrive with the 101 itself.
  const queue: Record<string, unknown>[] = [];
  const waiting: { resolve: (m: Record<string, unknown>) => void; reject: (e: Error) => void }[] =
    [];
  let closed: Error | undefined;
  ws.on('message', (data) => {
    const m = JSON.parse(String(data)) as Record<string, unknown>;
    const w = waiting.shift();
    if (w) w.resolve(m);
    else queue.push(m);
  });
  ws.on('close', (code) => {
    closed = new Error(`the relay closed the connection (${code})`);
    for (const w of waiting.splice(0)) w.reject(closed);
  });
  const next = () =>
    queue.length > 0
      ? Promise.resolve(queue.shift()!)
      : closed
        ? Promise.reject(closed)
        : new Promise<Record<string, unknown>>((resolve, reject) =>
            waiting.push({ resolve, reject }),
          );
  return new Promise((resolve, reject) => {
    let res: IncomingMessage | undefined;
    ws.once('upgrade', (r) => (res = r));
    ws.once('open', () => resolve({ ws, res: res!, next }));
    ws.once('close', (code) => reject(new Error(`closed (${code}) before open`)));
  });
}

t.test('a holder that offers permessage-deflate is served without it', async (t) => {
  const { ws, res, next } = await offeringDeflate('/v1/holder');
  t.teardown(() => ws.terminate());
  t.equal(res.headers['sec-websocket-extensions'], undefined, 'the 101 accepts no extension');
  t.equal(ws.extensions, '', 'no extension in use');
  // And it authenticates that way, as every holder does before it goes idle.
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  const hpk = publicKey.export({ format: 'jwk' }).x!;
  const challenge = await next();
  t.equal(challenge.type, 'challenge');
  const sig = sign(null, relayAuthMessage(challenge.nonce as string), privateKey);
  ws.send(JSON.stringify({ type: 'auth', hpk, sig: sig.toString('base64url') }));
  t.equal((await next()).type, 'ok', 'authenticated without compression');
});

t.test('a facade that offers permessage-deflate is served without it', async (t) => {
  const { ws, res } = await offeringDeflate('/v1/facade');
  t.teardown(() => ws.terminate());
  t.equal(res.headers['sec-websocket-extensions'], undefined, 'the 101 accepts no extension');
  t.equal(ws.extensions, '', 'no extension in use');
});
