// The container's HEALTHCHECK: exit 0 when the relay in this container answers /healthz, 1 when
// not, within 3 s. It checks liveness, not trust: on https it accepts any certificate, and it only
// ever talks to the address it is given (default: the image's own listening port on loopback).

import { get as httpGet } from 'node:http';
import { get as httpsGet } from 'node:https';

const url = new URL(process.env.KEYTETHER_RELAY_HEALTH_URL ?? 'http://127.0.0.1:7878/healthz');
const get = url.protocol === 'https:' ? httpsGet : httpGet;
const req = get(url, { rejectUnauthorized: false, timeout: 3000 }, (res) => {
  res.resume();
  if (res.statusCode === 200) process.exit(0);
  process.stderr.write(`unhealthy: ${url.origin}/healthz answered ${res.statusCode}\n`);
  process.exit(1);
});
req.on('timeout', () => req.destroy(new Error('no answer in 3 s')));
req.on('error', (e) => {
  process.stderr.write(`unhealthy: ${url.origin}/healthz: ${e.message}\n`);
  process.exit(1);
});
