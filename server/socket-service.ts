// One served unix socket's life, the same for the gpg-agent and the ssh-agent sockets: each
// connection gets its protocol session, a peer that hangs up mid-request ends only its own
// session, and close() stops listening, drops open connections and removes the socket file.

import type net from 'node:net';
import { listenAt, removeSocket } from '../system/unix-socket.js';

export interface SocketService {
  readonly socketPath: string;
  /** Open connections right now. */
  readonly connections: number;
  close(): Promise<void>;
}

/** Listens at SOCKETPATH and runs SERVE for each connection until it ends. */
export async function serveSocket(
  socketPath: string,
  serve: (sock: net.Socket) => Promise<unknown>,
): Promise<SocketService> {
  const open = new Set<net.Socket>();
  let closing: Promise<void> | undefined;
  const server = await listenAt(socketPath, (sock) => {
    if (closing) {
      sock.destroy();
      return;
    }
    open.add(sock);
    sock.on('close', () => open.delete(sock));
    // A client that hangs up mid-command produces EPIPE/ECONNRESET; that ends only its session.
    sock.on('error', () => sock.destroy());
    serve(sock)
      .catch(() => {})
      .finally(() => sock.destroy());
  });
  return {
    socketPath,
    get connections() {
      return open.size;
    },
    close() {
      closing ??= (async () => {
        await new Promise<void>((resolve) => {
          server.close(() => resolve());
          for (const s of open) s.destroy();
        });
        // net.Server.close unlinks the path itself on Linux; this covers the other cases.
        await removeSocket(socketPath);
      })();
      return closing;
    },
  };
}
