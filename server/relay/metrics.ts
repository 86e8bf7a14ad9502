// Prometheus metrics of one relay. Each relay has its own registry (not prom-client's global
// one) so several relays in one process, as in tests, do not collide.

import { Counter, Gauge, Histogram, Registry } from 'prom-client';

export type Role = 'holder' | 'facade';

export interface RelayMetrics {
  registry: Registry;
  connections: Gauge<'role'>;
  streams: Counter;
  requests: Counter;
  refusals: Counter<'reason'>;
  throttled: Counter;
  latency: Histogram;
  /** These two are absent from /metrics on a relay without TLS. */
  certificateNotAfter: Gauge;
  tlsReloads: Counter<'result'>;
}

/** TLS: whether the relay serves TLS; its certificate series exist only then. */
export function createMetrics(tls = false): RelayMetrics {
  const registry = new Registry();
  const tlsRegisters = tls ? [registry] : [];
  const tlsReloads = new Counter({
    name: 'keytether_relay_tls_reloads_total',
    help: 'TLS certificate reloads (SIGHUP) by result; a failed one keeps the old certificate',
    labelNames: ['result'],
    registers: tlsRegisters,
  });
  tlsReloads.inc({ result: 'ok' }, 0);
  tlsReloads.inc({ result: 'failed' }, 0);
  const connections = new Gauge({
    name: 'keytether_relay_connections',
    help: 'Open WebSocket connections by role',
    labelNames: ['role'],
    registers: [registry],
  });
  // Both roles appear from the start, so a dashboard sees 0 rather than no series.
  connections.set({ role: 'holder' }, 0);
  connections.set({ role: 'facade' }, 0);
  return {
    registry,
    connections,
    streams: new Counter({
      name: 'keytether_relay_streams_total',
      help: 'Facade streams routed to a holder',
      registers: [registry],
    }),
    requests: new Counter({
      name: 'keytether_relay_requests_total',
      help: 'Data messages forwarded from facades to holders',
      registers: [registry],
    }),
    refusals: new Counter({
      name: 'keytether_relay_refusals_total',
      help: 'Connections refused or closed by the relay, by reason',
      labelNames: ['reason'],
      registers: [registry],
    }),
    throttled: new Counter({
      name: 'keytether_relay_throttled_total',
      help: "Times a facade stream was slowed down for sending faster than its token's rate",
      registers: [registry],
    }),
    latency: new Histogram({
      name: 'keytether_relay_response_seconds',
      help: "Time from a facade's data message to the holder's next data message on that stream",
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers: [registry],
    }),
    certificateNotAfter: new Gauge({
      name: 'keytether_relay_tls_certificate_not_after_seconds',
      help: 'When the TLS certificate being served expires (Unix time); absent without TLS',
      registers: tlsRegisters,
    }),
    tlsReloads,
  };
}
