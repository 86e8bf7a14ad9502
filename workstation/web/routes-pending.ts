// The page's pending-requests section: the list, live over server-sent events, and the answer.
// Each listed request carries a token for this session and this request only, spent on first
// use: a replayed or forged answer is refused before the broker hears of it.

import type { FastifyInstance } from 'fastify';
import type { ServerResponse } from 'node:http';
import { z } from 'zod';
import type { ApprovalBroker, PendingApproval } from '../approvals/broker.js';
import type { WebGuard } from './guard.js';
import { SECURITY_HEADERS } from './headers.js';

const MAX_STREAMS = 16;
const HEARTBEAT_MS = 15_000;

const Answer = z.strictObject({
  token: z.string().max(64),
  decision: z.enum(['approve', 'deny']),
  /** "Approve for N minutes for this key and host". */
  forMinutes: z.number().int().min(1).max(1440).optional(),
});

interface Stream {
  session: string;
  res: ServerResponse;
  /** The token this stream was given for each request it lists. */
  tokens: Map<string, string>;
}

export function pendingRoutes(
  app: FastifyInstance,
  o: { broker: ApprovalBroker; guard: WebGuard },
): { close(): void } {
  const streams = new Set<Stream>();
  const listFor = (s: Stream): (PendingApproval & { token: string })[] =>
    o.broker.pending().map((r) => {
      let token = s.tokens.get(r.id);
      if (token === undefined) {
        token = o.guard.token(s.session, r.id);
        s.tokens.set(r.id, token);
      }
      return { ...r, token };
    });
  const push = (s: Stream) => {
    s.res.write(`event: pending\ndata: ${JSON.stringify(listFor(s))}\n\n`);
  };
  const stop = o.broker.subscribe((e) => {
    if (e.kind === 'withdrawn') {
      o.guard.forgetRequest(e.id);
      for (const s of streams) s.tokens.delete(e.id);
    }
    for (const s of streams) push(s);
  });
  const heartbeat = setInterval(() => {
    for (const s of streams) s.res.write(': keep-alive\n\n');
  }, HEARTBEAT_MS);
  heartbeat.unref();

  app.get('/api/events', (req, reply) => {
    if (streams.size >= MAX_STREAMS) {
      return reply.code(503).send({ error: `more than ${MAX_STREAMS} pages open at once` });
    }
    const session = (req as { session?: string }).session!;
    reply.hijack();
    const res = reply.raw;
    res.writeHead(200, {
      ...SECURITY_HEADERS,
      'content-type': 'text/event-stream; charset=utf-8',
      connection: 'keep-alive',
    });
    const s: Stream = { session, res, tokens: new Map() };
    streams.add(s);
    req.raw.on('close', () => streams.delete(s));
    push(s);
    return reply;
  });

  app.post('/api/pending/:id/answer', async (req, reply) => {
    const session = (req as { session?: string }).session!;
    const id = String((req.params as { id: string }).id);
    const parsed = Answer.safeParse(req.body);
    if (!parsed.success) return reply.code(400).send({ error: 'malformed answer' });
    const a = parsed.data;
    if (!o.guard.spend(a.token, session, id)) {
      return reply
        .code(403)
        .send({ error: 'this answer was used already or is not for this request' });
    }
    const ok = o.broker.answer(id, {
      approved: a.decision === 'approve',
      channel: 'web page',
      ...(a.decision === 'approve' && a.forMinutes ? { rememberMs: a.forMinutes * 60_000 } : {}),
    });
    if (!ok) return reply.code(409).send({ error: 'this request is no longer waiting' });
    return { ok: true };
  });

  return {
    close() {
      stop();
      clearInterval(heartbeat);
      for (const s of streams) s.res.end();
      streams.clear();
    },
  };
}
