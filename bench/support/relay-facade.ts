// A facade in its own process for bench/relay.ts: what `keytether connect --socket PATH` runs
// (relay WebSocket, sealed channel, tunnel client, Assuan facade), without the reconnect loop.
// Bench-only: `--unsealed` runs the tunnel straight over the relay stream, to pair with
// `relay-holder.js --unsealed`; nothing in keytether's CLI, config or environment reaches this.
//   BENCH_RELAY_TOKEN=<token> node relay-facade.js --relay URL --socket PATH [--unsealed]
// The token comes in the environment, not argv, so that `ps` does not show its secret part.
// Prints `ready: <socket>` once gpg can connect; exits cleanly on SIGTERM (for --cpu-prof).

import { parseArgs } from 'node:util';
import { relayEndpoint } from '../../protocol/relay/endpoint.js';
import { parseToken } from '../../protocol/token.js';
import { tunnelClient } from '../../protocol/tunnel/index.js';
import { RelayHolder } from '../../server/relay-holder.js';
import { openFacadeSocket } from '../../server/facade-socket.js';
import { startFacade } from '../../server/facade.js';
import { sealFacadeStream } from '../../server/seal.js';
import { installWsCounters } from './ws-counters.js';

installWsCounters();

const { values } = parseArgs({
  options: {
    relay: { type: 'string' },
    socket: { type: 'string' },
    unsealed: { type: 'boolean', default: false },
  },
  strict: true,
});
const token = process.env.BENCH_RELAY_TOKEN;
delete process.env.BENCH_RELAY_TOKEN;
if (!values.relay || !values.socket || !token) {
  process.stderr.write(
    'usage: BENCH_RELAY_TOKEN=… relay-facade.js --relay URL --socket PATH [--unsealed]\n',
  );
  process.exit(2);
}

const stopped = new Promise<void>((resolve) => process.once('SIGTERM', () => resolve()));
const parsed = parseToken(token);
if (!parsed.ok) throw new Error(`bench token: ${parsed.error}`);
const { publicPart, hpk, secret } = parsed.token;
if (!secret) throw new Error('bench token: no secret part');
const endpoint = relayEndpoint(values.relay, 'facade');
if (!endpoint.ok) throw new Error(endpoint.error);
const stream = await openFacadeSocket(endpoint.url, publicPart);
const channel = values.unsealed
  ? stream
  : await sealFacadeStream(stream, {
      hpk,
      secret,
      closeReason: () => stream.closeInfo?.reason || undefined,
      onFailure: (reason) => stream.closeWith?.(reason),
    });
secret.fill(0);
const tunnel = tunnelClient(channel, { software: 'keytether/bench' });
const up = await Promise.race([tunnel.ready.then(() => null), tunnel.closed]);
if (up !== null) throw new Error(`the tunnel did not come up: ${up.reason}`);
// A bench whose tunnel drops mid-run must fail loudly, not measure NO_AGENT errors.
let stopping = false;
void tunnel.closed.then(({ reason }) => {
  if (stopping) return;
  process.stderr.write(`tunnel closed: ${reason}\n`);
  process.exitCode = 1;
});
const holder = new RelayHolder();
holder.set(tunnel);
const facade = await startFacade({ socketPath: values.socket, holder, front: 'relay' });
process.stdout.write(`ready: ${values.socket}\n`);
await stopped;
stopping = true;
tunnel.close('bench done');
await facade.close();
// The relay's WebSocket close handshake need not finish; the profile (if any) is written on exit.
process.exit();
