// The relay as a fastify app: HTTP routes (health, metrics) in an encapsulated plugin, and the
// WebSocket endpoints /v1/holder and /v1/facade on the same server's 'upgrade' event, handled
// by a RelayHub that shares the app's logger.

import type { IncomingMessage } from 'node:http';
import type { Server as HttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import Fastify, {
  type FastifyInstance,
  type FastifyPluginAsync,
  type FastifyServerOptions,
} from 'fastify';
import { DEFAULT_LIMITS, type RelayLimits } from './limits.js';
import { createMetrics, type RelayMetrics } from './metrics.js';
import { RelayHub } from './hub.js';
import { TrustedProxies } from './client-address.js';
import type { z } from 'zod';
import type { HealthSchema } from './openapi.js';
import { checkTlsPair, replaceCertificate, type CertificateSummary, type TlsPair } from './tls.js';

export { CloseCode } from './hub.js';
export { DEFAULT_LIMITS, type RelayLimits } from './limits.js';
export type { CertificateSummary, TlsPair } from './tls.js';

export interface RelayOptions {
  /** fastify/pino logger options; default: JSON lines at level info on stderr. */
  logger?: FastifyServerOptions['logger'];
  /** Serve https:// (and wss://) with this PEM certificate and key. */
  https?: TlsPair;
  limits?: Partial<RelayLimits>;
  /**
   * Reverse proxies (addresses or CIDR ranges) whose X-Forwarded-For is believed for the client's
   * address (per-address limits, logs, the peer the holder sees). Default: none.
   */
  trustProxy?: readonly string[];
  /**
   * `redis://…`: run as one of several instances sharing holders through this Redis (holder
   * presence, streams carried to the instance a holder is connected to). Without it the relay
   * is one process, as always.
   */
  redis?: string;
}

const routes: FastifyPluginAsync<{ metrics: RelayMetrics; hub: RelayHub }> = async (
  app,
  { metrics, hub },
) => {
  app.get('/healthz', async (_req, reply): Promise<z.infer<typeof HealthSchema>> => {
    if (!hub.cluster) return { ok: true };
    // An instance without Redis cannot reach holders on the others: take it out of rotation.
    if (await hub.cluster.ping()) return { ok: true, redis: 'up' };
    reply.code(503);
    return { ok: false, redis: 'unreachable' };
  });
  // A WebSocket upgrade never reaches these ('upgrade' is handled below); a plain request, such
  // as someone checking the URL with curl, learns what the endpoint is instead of a bare 404.
  for (const url of ['/v1/holder', '/v1/facade']) {
    app.get(url, async (_req, reply) =>
      reply
        .code(426)
        .header('upgrade', 'websocket')
        .header('connection', 'upgrade')
        .send({
          statusCode: 426,
          error: 'Upgrade Required',
          message: `${url} is a WebSocket endpoint: keytether connects to it with wss:// or ws://`,
        }),
    );
  }
  app.get('/metrics', async (_req, reply) => {
    reply.type(metrics.registry.contentType);
    return metrics.registry.metrics();
  });
};

interface RelayState {
  hub: RelayHub;
  limits: RelayLimits;
  metrics: RelayMetrics;
  tls: boolean;
}

const relays = new WeakMap<FastifyInstance, RelayState>();

/**
 * A relay, not yet listening. `app.inject()` works on it; `listenRelay` starts it. Throws an
 * Error with a one-sentence message when `https` is not a usable certificate and key.
 */
export function buildRelay(opts: RelayOptions = {}): FastifyInstance {
  const limits: RelayLimits = { ...DEFAULT_LIMITS, ...opts.limits };
  const logger = opts.logger ?? { level: 'info', stream: process.stderr };
  const metrics = createMetrics(opts.https !== undefined);
  if (opts.https) metrics.certificateNotAfter.set(checkTlsPair(opts.https).notAfter / 1000);
  // Node's own slowloris guard: a connection whose request head is not complete in time (idle
  // or dribbling, the upgrade included) is answered 408 and closed. Node checks every
  // `connectionsCheckingInterval`, so the cut comes between the deadline and one interval later.
  const deadline = limits.headersDeadlineMs;
  const timeouts = {
    headersTimeout: deadline,
    requestTimeout: deadline,
    connectionsCheckingInterval: Math.max(50, Math.min(1000, Math.floor(deadline / 4))),
  };
  const clientErrorHandler = function (
    this: FastifyInstance,
    err: Error & { code?: string },
    socket: Duplex,
  ): void {
    const timedOut = err.code === 'ERR_HTTP_REQUEST_TIMEOUT';
    if (timedOut) {
      metrics.refusals.inc({ reason: 'headers_timeout' });
      this.log.info(
        { reason: 'request head not complete in time', deadlineMs: deadline },
        'refused',
      );
    }
    if (socket.writable) {
      socket.end(
        timedOut
          ? 'HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n'
          : 'HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n',
      );
    }
    socket.destroy();
  };
  // With `https` fastify's instance type changes to an https.Server; the relay only uses what
  // both servers have in common ('upgrade', address()).
  const app = (opts.https
    ? Fastify({ logger, clientErrorHandler, https: { ...opts.https, ...timeouts } })
    : Fastify({ logger, clientErrorHandler, http: timeouts })) as unknown as FastifyInstance;
  const hub = new RelayHub(
    app.log,
    limits,
    metrics,
    new TrustedProxies(opts.trustProxy ?? []),
    opts.redis,
  );
  relays.set(app, { hub, limits, metrics, tls: opts.https !== undefined });
  app.register(routes, { metrics, hub });
  app.server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) =>
    hub.handleUpgrade(req, socket, head),
  );
  // app.close() waits for every connection, upgraded ones too, so those must end first.
  app.addHook('preClose', async () => hub.closeAll());
  return app;
}

/** Starts listening; resolves to the base URL to print (`http://127.0.0.1:7878`). */
export async function listenRelay(
  app: FastifyInstance,
  host: string,
  port: number,
): Promise<string> {
  await relays.get(app)?.hub.cluster?.start();
  await app.listen({ host, port });
  const addr = app.server.address() as AddressInfo;
  const scheme = relays.get(app)?.tls ? 'https' : 'http';
  const h = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
  return `${scheme}://${h}:${addr.port}`;
}

/**
 * Serves the pair LOAD reads to new TLS connections from now on (SIGHUP after a certificate
 * renewal); open connections keep theirs. Rejects, and keeps serving the old pair, when LOAD
 * fails, the pair is not usable or the relay was started without TLS. LOAD's key buffer is zeroed
 * once used.
 */
export async function reloadRelayTls(
  app: FastifyInstance,
  load: () => Promise<{ cert: Buffer; key: Buffer }>,
): Promise<CertificateSummary> {
  const r = relays.get(app);
  if (!r?.tls)
    throw new Error('the relay was started without TLS; there is no certificate to reload');
  let pair: { cert: Buffer; key: Buffer } | undefined;
  let summary: CertificateSummary;
  try {
    pair = await load();
    summary = replaceCertificate(app.server as unknown as HttpsServer, pair);
  } catch (e) {
    r.metrics.tlsReloads.inc({ result: 'failed' });
    throw e;
  } finally {
    pair?.key.fill(0);
  }
  r.metrics.tlsReloads.inc({ result: 'ok' });
  r.metrics.certificateNotAfter.set(summary.notAfter / 1000);
  return summary;
}

/**
 * Graceful stop: refuses new connections, lets streams in flight finish for up to the drain
 * time (default: the limit `drainMs`, 10 s), then closes everything with 1001 and the server.
 */
export async function shutdownRelay(app: FastifyInstance, drainMs?: number): Promise<void> {
  const r = relays.get(app);
  if (r) await r.hub.shutdown(drainMs ?? r.limits.drainMs);
  await app.close();
  app.log.info('stopped');
}
