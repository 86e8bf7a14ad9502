// The page's audit and keys sections: the audit log read through the same query `keytether audit
// list/summary` uses (filters parsed by the same parser, so the page and the CLI refuse the same
// input), and the unlocked keys of the agent's status with "lock now", the control request
// `keytether lock` sends.

import path from 'node:path';
import type { FastifyInstance } from 'fastify';
import { parseAuditFilter, type AuditFilterText } from '../audit/filter.js';
import { queryAuditLog } from '../audit/query.js';
import { requestStatus } from '../control/control.js';
import { requestLock } from '../control/lock.js';
import { CSRF_HEADER, type WebGuard } from './guard.js';

/** Records a page shows at once; the counts cover every match. */
const PAGE_RECORDS = 200;
const FILTER_FIELDS = ['key', 'host', 'token', 'decision', 'since', 'until'] as const;

export function recordRoutes(app: FastifyInstance, o: { guard: WebGuard; home: string }): void {
  const sessionOf = (req: unknown) => (req as { session?: string }).session!;

  app.get('/api/audit', async (req, reply) => {
    const q = req.query as Record<string, unknown>;
    const text: AuditFilterText = {};
    for (const f of FILTER_FIELDS) {
      const v = q[f];
      if (typeof v === 'string' && v !== '') text[f] = v;
    }
    let filter;
    try {
      filter = parseAuditFilter(text);
    } catch (e) {
      // The parser's sentences name CLI flags (--since …); the page's fields have those names.
      return reply.code(400).send({ error: (e as Error).message });
    }
    try {
      const r = await queryAuditLog(path.join(o.home, 'audit.jsonl'), {
        filter,
        limit: PAGE_RECORDS,
      });
      return {
        records: r.records.reverse(),
        matched: r.matched,
        total: r.total,
        days: r.days,
        chain: r.chain,
      };
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') {
        return { records: [], matched: 0, total: 0, days: [], chain: { ok: true, records: 0 } };
      }
      return reply.code(500).send({ error: 'the audit log could not be read' });
    }
  });

  app.get('/api/keys', async (_req, reply) => {
    const doc = await requestStatus(o.home).catch(() => undefined);
    if (!doc) return reply.code(503).send({ error: 'the agent did not answer its control socket' });
    return doc.unlocked;
  });

  app.post('/api/keys/lock', async (req, reply) => {
    const token = req.headers[CSRF_HEADER];
    if (typeof token !== 'string' || !o.guard.spend(token, sessionOf(req))) {
      return reply.code(403).send({ error: 'this action was used already or has no token' });
    }
    const which = (req.body as { keygrip?: unknown } | undefined)?.keygrip;
    if (which !== 'all' && (typeof which !== 'string' || !/^[0-9A-F]{40}$/.test(which))) {
      return reply.code(400).send({ error: 'name a keygrip or all' });
    }
    const locked = await requestLock(o.home, which).catch(() => undefined);
    if (!locked)
      return reply.code(503).send({ error: 'the agent did not answer its control socket' });
    return { locked };
  });
}
