// keytether relay: routes facades to holders over WebSockets. It holds no secrets; it checks the
// signed public part of tokens and holders' identity keys, then passes bytes through.

import { readFile } from 'node:fs/promises';
import type { Command } from 'commander';
import { buildRelay, listenRelay, shutdownRelay } from '../../server/relay/index.js';
import { UsageError, UserError } from '../../system/user-error.js';
import { action, collect, examples } from '../program.js';
import { TrustedProxies } from '../../server/relay/client-address.js';

interface RelayFlags {
  listen: string;
  tlsCert?: string;
  tlsKey?: string;
  trustProxy?: string[];
}

/** `HOST:PORT`, `[V6]:PORT`; port 0 lets the system pick one. */
export function parseListen(text: string): { host: string; port: number } {
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([^:[\]\s]+)):(\d{1,5})$/.exec(text);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) {
    throw new UsageError(`--listen '${text.slice(0, 100)}' is not HOST:PORT (e.g. 127.0.0.1:7878)`);
  }
  return { host: (m[1] ?? m[2]) as string, port };
}

async function readPem(flag: string, file: string): Promise<Buffer> {
  try {
    return await readFile(file);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? 'unreadable';
    throw new UserError(
      `cannot read ${flag} ${file} (${code}); check the path and its permissions`,
    );
  }
}

function waitForSignal(): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    const on = (sig: NodeJS.Signals) => {
      process.off('SIGTERM', on);
      process.off('SIGINT', on);
      resolve(sig);
    };
    process.on('SIGTERM', on);
    process.on('SIGINT', on);
  });
}

export function register(program: Command): void {
  program
    .command('relay')
    .addHelpText(
      'after',
      examples(
        'keytether relay --listen 127.0.0.1:0',
        'keytether relay --listen 0.0.0.0:7878 --tls-cert relay.crt --tls-key relay.key',
      ),
    )
    .description('run the relay; prints "listening: <base URL>"')
    .option('--listen <host:port>', 'address to listen on (port 0 picks one)', '127.0.0.1:7878')
    .option('--tls-cert <file>', 'TLS certificate (PEM)')
    .option('--tls-key <file>', 'TLS private key (PEM)')
    .option(
      '--trust-proxy <addr>',
      'a reverse proxy (address or CIDR) whose X-Forwarded-For names the client (repeatable)',
      collect,
    )
    .action(
      action(async (flags: RelayFlags) => {
        const { host, port } = parseListen(flags.listen);
        const trustProxy = flags.trustProxy ?? [];
        try {
          new TrustedProxies(trustProxy);
        } catch (e) {
          throw new UsageError(`--trust-proxy: ${(e as Error).message}`);
        }
        if ((flags.tlsCert === undefined) !== (flags.tlsKey === undefined)) {
          throw new UsageError('--tls-cert and --tls-key must be given together');
        }
        let https: { cert: Buffer; key: Buffer } | undefined;
        if (flags.tlsCert !== undefined && flags.tlsKey !== undefined) {
          https = {
            cert: await readPem('--tls-cert', flags.tlsCert),
            key: await readPem('--tls-key', flags.tlsKey),
          };
        }
        let app;
        try {
          app = buildRelay({ ...(https ? { https } : {}), trustProxy });
        } catch {
          throw new UserError('the TLS certificate or key is not valid PEM, or they do not match');
        } finally {
          https?.key.fill(0);
        }
        let url: string;
        // Signals that arrive while starting still mean "stop"; listen for them from here on.
        const signal = waitForSignal();
        try {
          url = await listenRelay(app, host, port);
        } catch (e) {
          await app.close();
          const code = (e as NodeJS.ErrnoException).code ?? 'failed';
          throw new UserError(
            `cannot listen on ${flags.listen} (${code}); choose another address with --listen`,
          );
        }
        process.stdout.write(`listening: ${url}\n`);
        await signal;
        await shutdownRelay(app);
      }),
    );
}
