// The page's overview sections: connected fronts and relays (the agent's status document, read
// through its control socket like `keytether status`) and the tokens this holder issued (the
// registry `keytether token` uses; revoking needs a single-use token like every change).

import type { FastifyInstance } from 'fastify';
import { requestStatus } from '../control/control.js';
import { TokenRegistry } from '../tokens/tokens.js';
import type { WebGuard } from './guard.js';

export const CSRF_HEADER = 'x-keytether-csrf';

async function withRegistry<T>(home: string, f: (r: TokenRegistry) => Promise<T>): Promise<T> {
  const registry = await TokenRegistry.open(home);
  try {
    return await f(registry);
  } finally {
    await registry.close();
  }
}

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

  app.get('/api/tokens', async () =>
    withRegistry(o.home, async (r) =>
      (await r.list()).map((t) => ({
        id: t.id,
        keys: t.keys,
        ops: t.ops,
        expires: t.expires,
        uses: t.uses,
        maxUses: t.maxUses,
        label: t.label,
        revoked: t.revoked,
      })),
    ),
  );

  app.post('/api/tokens/:id/revoke', async (req, reply) => {
    const token = req.headers[CSRF_HEADER];
    if (typeof token !== 'string' || !o.guard.spend(token, sessionOf(req))) {
      return reply.code(403).send({ error: 'this action was used already or has no token' });
    }
    const id = String((req.params as { id: string }).id);
    if (!/^ktt_[0-9a-f]{16}$/.test(id)) return reply.code(400).send({ error: 'not a token id' });
    const done = await withRegistry(o.home, (r) => r.revoke(id));
    if (!done) return reply.code(404).send({ error: `no token ${id} was issued by this holder` });
    return { ok: true };
  });
}
