// The control socket's approval requests, for `keytether approve`, `keytether deny` and
// `keytether open`: the command line is one more channel of the broker, answered the same way as
// the pinentry and the page, and `open` gets the page's URL with a fresh one-time secret.
//   `approvals`             → `OK <pid>\n`, a JSON array of PendingApproval, `\n`, EOF.
//   `approve <id> [<ms>]`   → `OK <pid>\n` once the answer is taken (remembered for <ms>).
//   `deny <id>`             → `OK <pid>\n`.
//   `web url`               → `OK <pid>\n<url>\n`, the page's URL with a new secret.

import type net from 'node:net';
import type { ApprovalBroker } from '../approvals/broker.js';

export interface ApprovalControl {
  broker?: ApprovalBroker | undefined;
  web?: { freshUrl(): string } | undefined;
}

const ID = /^[0-9a-f]{12}$/;
const MS = /^[1-9]\d{0,9}$/;

/** Handles WORDS when they are an approval request; false when they are not one. */
export function serveApprovalRequest(
  words: string[],
  sock: net.Socket,
  o: ApprovalControl,
  refuse: (sock: net.Socket, why: string) => void,
): boolean {
  const [verb, arg, ms] = words;
  if (verb === 'web' && arg === 'url' && words.length === 2) {
    if (!o.web) refuse(sock, 'this agent serves no approval page; start it with --web');
    else sock.end(`OK ${process.pid}\n${o.web.freshUrl()}\n`);
    return true;
  }
  if (verb !== 'approvals' && verb !== 'approve' && verb !== 'deny') return false;
  const broker = o.broker;
  if (!broker) {
    refuse(sock, 'this holder takes no answers to confirmations here');
    return true;
  }
  if (verb === 'approvals' && words.length === 1) {
    sock.end(`OK ${process.pid}\n${JSON.stringify(broker.pending())}\n`);
    return true;
  }
  const well =
    arg !== undefined &&
    ID.test(arg) &&
    (verb === 'approve'
      ? words.length === 2 || (words.length === 3 && MS.test(ms!))
      : words.length === 2);
  if (!well) {
    refuse(sock, `malformed ${verb} request; expected "${verb} <id>"`);
    return true;
  }
  const taken = broker.answer(arg, {
    approved: verb === 'approve',
    channel: 'command line',
    ...(ms !== undefined ? { rememberMs: Number(ms) } : {}),
  });
  if (!taken) refuse(sock, `no request ${arg} is waiting; keytether approve lists those that are`);
  else sock.end(`OK ${process.pid}\n`);
  return true;
}
