// A relay in its own process, for measuring the relay alone (its RSS is not mixed with the
// bench's clients). Run as `node relay-process.js '<limits JSON>' [redis://…]`; prints
// `listening: <url>` and stops on SIGTERM. With a Redis URL it is one instance of several
// (`keytether relay --redis`).

import {
  buildRelay,
  listenRelay,
  shutdownRelay,
  type RelayLimits,
} from '../../server/relay/index.js';

const limits = JSON.parse(process.argv[2] ?? '{}') as Partial<RelayLimits>;
const redis = process.argv[3];
const app = buildRelay({ logger: false, limits, ...(redis ? { redis } : {}) });
const url = await listenRelay(app, '127.0.0.1', 0);
process.stdout.write(`listening: ${url}\n`);
await new Promise<void>((resolve) => process.once('SIGTERM', () => resolve()));
await shutdownRelay(app, 0);
