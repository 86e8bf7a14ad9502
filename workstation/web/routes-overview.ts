// The page's overview: connected fronts and relays (the agent's status document, read through
// its control socket like `keytether status`), and the single-use tokens every change needs.

import type { FastifyInstance } from 'fastify';
import { requestStatus } from '../control/control.js';
import type { WebGuard } from './guard.js';

export function overviewRoutes(app: FastifyInstance, o: { guard: WebGuard; home: string }): void {
  const sessionOf = (req: unknown) => (req as { session?: string }).session!;

  app.get('/api/csrf', async (req) => ({ token: o.guard.token(sessionOf(req)) }));

  app.get('/api/status', async (_req, reply) => {
    const doc = await requestStatus(o.home).catch(() => undefined);
    if (!doc) return reply.code(503).send({ error: 'the agent did not answer its control socket' });
    return {
      pid: doc.pid,
      version: doc.version,
      startedAt: doc.startedAt,
      fronts: doc.fronts,
      relays: doc.relays,
    };
  });
}
