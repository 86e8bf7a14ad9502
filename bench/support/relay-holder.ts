// A holder in its own process for bench/relay.ts, built from the same library calls as
// `keytether agent --backend builtin --relay URL` (no local socket, no control socket: both sit
// idle in the CLI and cost nothing per operation). Bench-only: `--unsealed` makes it serve relayed
// streams without the sealed channel, through the BENCH_UNSEALED symbol that no keytether flag,
// config or environment variable can produce, so that sealed and unsealed run in the same shape.
//   node relay-holder.js --home DIR --relay URL [--unsealed] [--unlimited]
// Prints `ready: <hid>` once the relay accepted the holder; exits cleanly on SIGTERM (so that
// `node --cpu-prof` writes its profile).

import { parseArgs } from 'node:util';
import { DEFAULT_CONFIG } from '../../workstation/home/config.js';
import { limitsFromFile } from '../../workstation/home/limits-config.js';
import { loadOrCreateIdentity } from '../../workstation/home/identity.js';
import { BENCH_UNSEALED, startRelayClient } from '../../workstation/relay/client.js';
import { openHolderRuntime } from '../../workstation/holder/runtime.js';
import { loadSealCredentials } from '../../workstation/relay/seal.js';
import { TokenRegistry } from '../../workstation/tokens/tokens.js';
import { installWsCounters } from './ws-counters.js';

installWsCounters();

const { values } = parseArgs({
  options: {
    home: { type: 'string' },
    relay: { type: 'string' },
    unsealed: { type: 'boolean', default: false },
    // The holder's per-token and per-key rates raised out of the way, for throughput benches.
    unlimited: { type: 'boolean', default: false },
  },
  strict: true,
});
if (!values.home || !values.relay) {
  process.stderr.write('usage: relay-holder.js --home DIR --relay URL [--unsealed]\n');
  process.exit(2);
}
const home = values.home;

const stopped = new Promise<void>((resolve) => process.once('SIGTERM', () => resolve()));
const unlimited = limitsFromFile({
  'token-rate': 1e6,
  'token-burst': 1e6,
  'key-rate': 1e6,
  'key-burst': 1e6,
});
const rt = await openHolderRuntime(home, {
  ...DEFAULT_CONFIG,
  backend: 'builtin',
  ...(values.unlimited ? { limits: unlimited } : {}),
});
const identity = await loadOrCreateIdentity(home);
const tokens = await TokenRegistry.open(home, { identity });
const client = startRelayClient({
  url: values.relay,
  holder: rt.holder,
  identity,
  tokens,
  audit: rt.audit,
  seal: await loadSealCredentials(home),
  checkSecret: (tid, hash) => tokens.admits(tid, hash),
  software: 'keytether/bench',
  log: (line) => process.stderr.write(`${line}\n`),
  onConnected: (hid) => process.stdout.write(`ready: ${hid}\n`),
  ...(values.unsealed ? { benchUnsealed: BENCH_UNSEALED } : {}),
});
await stopped;
await client.close();
await tokens.close();
await rt.close();
process.exit();
