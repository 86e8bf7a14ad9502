// Two connected ends of a real unix socket (a tunnel's transport in tests); destroyed at teardown.

import type { Test } from 'tap';
import { once } from 'node:events';
import { createServer, connect, type Socket } from 'node:net';
import path from 'node:path';

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
