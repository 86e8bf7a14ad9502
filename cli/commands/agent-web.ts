// `keytether agent --web`: where the approval page listens, checked before anything starts.
// Loopback on a random port by default; any other address only with a certificate, because the
// session cookie and every approval would otherwise cross the network in the clear.

import { Option } from 'commander';
import { readFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import { UsageError, UserError } from '../../system/user-error.js';
import { isLoopback } from '../../workstation/web/server.js';

export interface WebFlags {
  web?: string | true;
  webListen?: string;
  webTlsCert?: string;
  webTlsKey?: string;
}

export interface WebPlan {
  host: string;
  port: number;
  tls?: { cert: Buffer; key: Buffer };
}

/** The agent's page flags, fresh for each program built, added to its command one by one. */
export const webOptions = () => ({
  web: new Option(
    '--web [addr]',
    "serve the approval page on this loopback address, random port (default 127.0.0.1; printed as 'web: URL')",
  ),
  listen: new Option(
    '--web-listen <addr:port>',
    'serve the approval page here instead (not loopback: needs TLS)',
  ),
  cert: new Option('--web-tls-cert <file>', "the approval page's TLS certificate (PEM)"),
  key: new Option('--web-tls-key <file>', "the approval page's TLS private key (PEM)"),
});

function hostPort(text: string): { host: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(text);
  const host = m?.[1] ?? m?.[2];
  const port = Number(m?.[3]);
  if (!m || !host || isIP(host) === 0 || port > 65535) {
    throw new UsageError(
      `--web-listen wants ADDR:PORT with an IP address, e.g. 127.0.0.1:7979 (got ${text.slice(0, 80)})`,
    );
  }
  return { host, port };
}

async function pem(file: string, flag: string): Promise<Buffer> {
  try {
    return await readFile(file);
  } catch (e) {
    throw new UserError(`cannot read ${flag} ${file}: ${(e as Error).message}`);
  }
}

/** Where the page listens, or undefined without --web/--web-listen. */
export async function webPlan(f: WebFlags): Promise<WebPlan | undefined> {
  const tlsGiven = f.webTlsCert !== undefined || f.webTlsKey !== undefined;
  if (f.web === undefined && f.webListen === undefined) {
    if (tlsGiven) throw new UsageError('--web-tls-cert and --web-tls-key go with --web-listen');
    return undefined;
  }
  if (f.web !== undefined && f.webListen !== undefined) {
    throw new UsageError('give --web or --web-listen, not both');
  }
  if ((f.webTlsCert === undefined) !== (f.webTlsKey === undefined)) {
    throw new UsageError('--web-tls-cert and --web-tls-key go together');
  }
  const where =
    f.webListen !== undefined
      ? hostPort(f.webListen)
      : { host: f.web === true ? '127.0.0.1' : f.web!, port: 0 };
  if (f.webListen === undefined && !isLoopback(where.host)) {
    throw new UsageError(
      `--web serves loopback addresses only (127.0.0.1, ::1); for ${where.host.slice(0, 80)} use --web-listen ADDR:PORT with --web-tls-cert and --web-tls-key`,
    );
  }
  if (!isLoopback(where.host) && !tlsGiven) {
    throw new UsageError(
      `refusing to serve the approval page on ${where.host} without TLS; give --web-tls-cert and --web-tls-key`,
    );
  }
  if (!tlsGiven) return where;
  return {
    ...where,
    tls: {
      cert: await pem(f.webTlsCert!, '--web-tls-cert'),
      key: await pem(f.webTlsKey!, '--web-tls-key'),
    },
  };
}
