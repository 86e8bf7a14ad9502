// The server-side gpg-agent: a unix socket where stock gpg looks for its agent, served by the one
// Assuan agent (protocol/agent) over a KeyHolder that is normally a tunnel client. Everything
// chatty is answered from the holder's pushed inventory; PKSIGN/PKDECRYPT become one tunnel
// request each. This module owns the listener and its connections, nothing else.

import { hostname, userInfo } from 'node:os';
import { ContentStore, serveAgent, type AgentEvent } from '../protocol/agent/index.js';
import type { ClientDeadlines } from '../protocol/assuan/index.js';
import type { KeyHolder, Requester } from '../protocol/keyholder.js';
import { requesterWithPeer, type PeerLookupOptions } from '../system/peer-process.js';
import { collectCommitObjects } from './commit-objects.js';
import { payloadFileReader } from './payload-file.js';
import { serveSocket, type SocketService } from './socket-service.js';

export interface FacadeOptions {
  /** A free path (absent, or a stale socket already removed). */
  socketPath: string;
  holder: KeyHolder;
  /** Which front the requests arrive through; default `ssh`. */
  front?: Requester['front'];
  onEvent?: (e: AgentEvent) => void;
  /** How the process behind each connection is found; `false` skips the lookup. */
  peerLookup?: PeerLookupOptions | false;
  /** Where `keytether git-sign` was written: its shell half leaves payload files there. */
  payloadDir?: string;
  /** Deadlines on clients that owe us bytes; default AGENT_CLIENT_DEADLINES. */
  deadlines?: ClientDeadlines;
  /** Where a line about a cut client goes; default stderr. */
  log?: (line: string) => void;
}

/** Stops listening, drops open connections and removes the socket file on close(). */
export type Facade = SocketService;

/** Who runs gpg here, as far as this process can tell without asking the kernel per peer. */
export function localRequester(front: Requester['front']): Requester {
  const r: Requester = { front };
  try {
    r.host = hostname();
  } catch {
    // No hostname is not a reason to refuse service.
  }
  try {
    const u = userInfo();
    r.user = u.username;
    if (u.uid >= 0) r.uid = u.uid;
  } catch {
    // Containers without a passwd entry for the uid.
  }
  return r;
}

export async function startFacade(opts: FacadeOptions): Promise<Facade> {
  const requester = localRequester(opts.front ?? 'ssh');
  // `keytether git-sign` hands the payload over on one connection, gpg signs on another.
  const content = new ContentStore({
    collectObjects: collectCommitObjects,
    ...(opts.payloadDir !== undefined
      ? { readPayloadFile: payloadFileReader(opts.payloadDir) }
      : {}),
  });
  const log = opts.log ?? ((line: string) => process.stderr.write(`${line}\n`));

  return serveSocket(opts.socketPath, (sock) =>
    serveAgent(sock, {
      holder: opts.holder,
      // Looked up once the connection names a key, awaited only when a request goes out.
      requester: () => requesterWithPeer(requester, sock, opts.peerLookup),
      content,
      ...(opts.onEvent ? { onEvent: opts.onEvent } : {}),
      ...(opts.deadlines ? { deadlines: opts.deadlines } : {}),
      onCut: (why) => log(`keytether: cut a client of ${opts.socketPath}: ${why}`),
    }),
  );
}
