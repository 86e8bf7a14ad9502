// The approval page, served by fastify from the holder: `keytether agent --web`. Loopback only
// unless the agent was given a certificate; every request passes the guard (exact Host, own
// Origin for changes, a session from the one-time secret) before any route sees it. Each section
// of the page has its own routes module, a client of the same broker, status and token registry
// that `keytether approve`, `status` and `token` use.

import Fastify, { type FastifyInstance, type FastifyReply } from 'fastify';
import { isIP } from 'node:net';
import type { AddressInfo } from 'node:net';
import type { ApprovalBroker } from '../approvals/broker.js';
import { loadAssets } from './assets.js';
import { SESSION_COOKIE, WebGuard } from './guard.js';
import { pendingRoutes } from './routes-pending.js';
import { overviewRoutes } from './routes-overview.js';
import { recordRoutes } from './routes-records.js';
import { tokenRoutes, type TokenIssuing } from './routes-tokens.js';
import { notifier } from './notify.js';
import { SECURITY_HEADERS } from './headers.js';

export interface WebServerOptions {
  broker: ApprovalBroker;
  /** KEYTETHER_HOME: the control socket (status) and the token registry are found there. */
  home: string;
  host: string;
  /** 0 = any free port. */
  port: number;
  tls?: { cert: Buffer; key: Buffer };
  /** How the token form issues tokens (the agent's config); without it the form is refused. */
  tokens?: TokenIssuing;
  /** Desktop notifications for new requests (notify-send where present); default on. */
  notify?: boolean;
}

export interface WebServer {
  /** `http://127.0.0.1:PORT/` — the page without a secret. */
  readonly base: string;
  /** The page's URL with a fresh one-time secret in the fragment. */
  freshUrl(): string;
  close(): Promise<void>;
}

const BODY_LIMIT = 16 * 1024;

export function isLoopback(host: string): boolean {
  return host === '::1' || (isIP(host) === 4 && host.startsWith('127.'));
}

function forbidden(reply: FastifyReply, why: string): FastifyReply {
  return reply.code(403).type('text/plain; charset=utf-8').send(`forbidden: ${why}\n`);
}

export async function startWebServer(o: WebServerOptions): Promise<WebServer> {
  const assets = loadAssets();
  const app: FastifyInstance = Fastify({
    logger: false,
    bodyLimit: BODY_LIMIT,
    ...(o.tls ? { https: { cert: o.tls.cert, key: o.tls.key } } : {}),
  }) as unknown as FastifyInstance;
  const guard = new WebGuard();

  app.addHook('onSend', async (_req, reply, payload) => {
    for (const [k, v] of Object.entries(SECURITY_HEADERS)) reply.header(k, v);
    return payload;
  });
  app.addHook('onRequest', async (req, reply) => {
    if (!guard.hostOk(req.headers.host)) return forbidden(reply, 'wrong Host');
    if (req.method !== 'GET' && req.method !== 'HEAD' && !guard.originOk(req.headers.origin)) {
      return forbidden(reply, 'foreign Origin');
    }
    const url = req.url.split('?')[0]!;
    if (url.startsWith('/api/') && url !== '/api/session') {
      const session = guard.session(req.headers.cookie);
      if (session === undefined)
        return forbidden(reply, 'no session; open the link the agent printed');
      (req as { session?: string }).session = session;
    }
    return undefined;
  });

  app.get('/*', async (req, reply) => {
    const asset = assets.get(req.url.split('?')[0]!);
    if (!asset) return reply.code(404).type('text/plain').send('not found\n');
    return reply.type(asset.type).send(asset.body);
  });

  app.post('/api/session', async (req, reply) => {
    const body = req.body as { secret?: unknown } | undefined;
    const secret = typeof body?.secret === 'string' && body.secret.length <= 64 ? body.secret : '';
    const session = guard.exchange(secret);
    if (session === undefined) {
      return forbidden(reply, 'this link was used already; run "keytether open" for a new one');
    }
    const secure = o.tls ? '; Secure' : '';
    reply.header(
      'set-cookie',
      `${SESSION_COOKIE}=${session}; HttpOnly; SameSite=Strict; Path=/${secure}`,
    );
    return { ok: true };
  });

  const pending = pendingRoutes(app, { broker: o.broker, guard });
  overviewRoutes(app, { guard, home: o.home });
  recordRoutes(app, { guard, home: o.home });
  tokenRoutes(app, { guard, home: o.home, ...(o.tokens ? { issuing: o.tokens } : {}) });
  try {
    await app.listen({ host: o.host, port: o.port });
  } catch (e) {
    pending.close();
    throw e;
  }
  const port = (app.server.address() as AddressInfo).port;
  const hostPart = o.host.includes(':') ? `[${o.host}]` : o.host;
  const origin = `${o.tls ? 'https' : 'http'}://${hostPart}:${port}`;
  guard.bind(`${hostPart}:${port}`, origin);

  const notify = o.notify === false ? undefined : notifier(`${origin}/`);
  const stopNotify = notify
    ? o.broker.subscribe((e) => {
        if (e.kind === 'offered') notify(e.request);
      })
    : undefined;
  o.broker.enablePages();

  return {
    base: `${origin}/`,
    freshUrl: () => `${origin}/#${guard.newSecret()}`,
    async close() {
      stopNotify?.();
      pending.close();
      await app.close();
    },
  };
}
