// The holder's own gpg-agent socket (and control socket): the shared unix-socket rules, with the
// sentence a holder says about a live listener on its path.

import type net from 'node:net';
import { listenReplacingStale } from '../../system/unix-socket.js';

export { probeSocket, type SocketState } from '../../system/unix-socket.js';

/** Listens on `p`, replacing a stale socket file of this user's; refuses a live one. */
export function listenUnix(
  p: string,
  onConnection: (sock: net.Socket) => void,
): Promise<net.Server> {
  return listenReplacingStale(
    p,
    onConnection,
    `another agent is already listening on ${p}; stop it (for gpg-agent: gpgconf --kill gpg-agent) or choose another path with --socket`,
  );
}
