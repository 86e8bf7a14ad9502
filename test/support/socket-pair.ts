// Two connected ends of a real unix socket (a tunnel's transport in tests); destroyed at teardown.

import type { Test } from 'tap';
import { once } from 'node:events';
import { createServer, connect, type Socket } from 'node:net';
import path from 'node:path';
import type { KeyHolder } from '../../protocol/keyholder.js';
import { serveTunnel, tunnelClient, type TunnelClient } from '../../protocol/tunnel/index.js';
import { inventoryWatcher } from '../../workstation/holder/holder.js';

export async function socketPair(t: Test, dir: string, name = 'tun'): Promise<[Socket, Socket]> {
  const p = path.join(dir, name);
  const server = createServer();
  server.listen(p);
  await once(server, 'listening');
  const accepted = once(server, 'connection') as Promise<[Socket]>;
  const client = connect(p);
  const [serverEnd] = await accepted;
  await once(client, 'connect');
  t.teardown(() => {
    client.destroy();
    serverEnd.destroy();
    server.close();
  });
  return [serverEnd, client];
}

/**
 * HOLDER served over a real unix socket pair in DIR, its inventory changes pushed; the facade's
 * tunnel client is returned before its handshake (await `ready` yourself) and closed at teardown.
 */
export async function tunnelTo(
  t: Test,
  holder: KeyHolder,
  dir: string,
  software = 'keytether/test',
): Promise<TunnelClient> {
  const [serverEnd, clientEnd] = await socketPair(t, dir);
  const watch = inventoryWatcher(holder);
  serveTunnel(holder, serverEnd, { software, ...(watch ? { onInventoryChange: watch } : {}) });
  const tunnel = tunnelClient(clientEnd, { software });
  t.teardown(() => tunnel.close());
  return tunnel;
}
