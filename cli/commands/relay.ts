// keytether relay: routes facades to holders over WebSockets. It holds no secrets; it checks the
// signed public part of tokens and holders' identity keys, then passes bytes through.

import { readFile } from 'node:fs/promises';
import type { Command } from 'commander';
import type { FastifyInstance } from 'fastify';
import {
  buildRelay,
  listenRelay,
  reloadRelayTls,
  shutdownRelay,
} from '../../server/relay/index.js';
import { UsageError, UserError } from '../../system/user-error.js';
import { action, collect, examples, packageVersion } from '../program.js';
import { relayOpenApi } from '../../server/relay/openapi.js';
import { TrustedProxies } from '../../server/relay/client-address.js';

interface RelayFlags {
  listen: string;
  tlsCert?: string;
  tlsKey?: string;
  trustProxy?: string[];
  openapi?: boolean;
  redis?: string;
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

/**
 * SIGHUP: read the certificate and key files again and serve them to new connections (what
 * certbot's deploy hook or `systemctl reload` asks for). Without TLS there is nothing to reload,
 * but the signal must still not kill the relay, as Node's default action would.
 */
function reloadOnHangup(app: FastifyInstance, files?: { cert: string; key: string }): () => void {
  let busy = false;
  // A SIGHUP during a reload may be for files renewed after this reload read them: run once more.
  let again = false;
  const onHup = (): void => {
    if (!files) {
      app.log.info('SIGHUP: the relay serves no TLS, nothing to reload');
      return;
    }
    if (busy) {
      again = true;
      return;
    }
    busy = true;
    void reloadRelayTls(app, async () => ({
      cert: await readPem('--tls-cert', files.cert),
      key: await readPem('--tls-key', files.key),
    }))
      .then(
        (c) =>
          app.log.info(
            {
              subject: c.subject,
              notAfter: new Date(c.notAfter).toISOString(),
              fingerprint: c.fingerprint,
            },
            'tls certificate reloaded',
          ),
        (e: Error) =>
          app.log.warn(
            { reason: e.message },
            'tls reload failed; still serving the previous certificate',
          ),
      )
      .finally(() => {
        busy = false;
        if (again) {
          again = false;
          onHup();
        }
      });
  };
  process.on('SIGHUP', onHup);
  return () => process.off('SIGHUP', onHup);
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
    .option('--tls-cert <file>', 'TLS certificate (PEM); SIGHUP re-reads it and --tls-key')
    .option('--tls-key <file>', 'TLS private key (PEM)')
    .option(
      '--trust-proxy <addr>',
      'a reverse proxy (address or CIDR) whose X-Forwarded-For names the client (repeatable)',
      collect,
    )
    .option(
      '--redis <url>',
      'share holders with other relay instances through this Redis (redis://host:6379)',
    )
    .option('--openapi', "print the OpenAPI 3.1 document of the relay's HTTP routes and exit")
    .action(
      action(async (flags: RelayFlags) => {
        if (flags.openapi) {
          process.stdout.write(`${JSON.stringify(relayOpenApi(packageVersion()), null, 2)}\n`);
          return;
        }
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
        if (flags.redis !== undefined && !/^rediss?:\/\/[^\s]+$/.test(flags.redis)) {
          // Not echoed: a Redis URL may carry a password.
          throw new UsageError('--redis must be a Redis URL (redis://HOST:6379 or rediss://…)');
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
          app = buildRelay({
            ...(https ? { https } : {}),
            trustProxy,
            ...(flags.redis !== undefined ? { redis: flags.redis } : {}),
          });
        } catch (e) {
          throw new UserError(`${(e as Error).message}; check --tls-cert and --tls-key`);
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
        const stopReloading = reloadOnHangup(
          app,
          flags.tlsCert !== undefined && flags.tlsKey !== undefined
            ? { cert: flags.tlsCert, key: flags.tlsKey }
            : undefined,
        );
        process.stdout.write(`listening: ${url}\n`);
        await signal;
        stopReloading();
        await shutdownRelay(app);
      }),
    );
}
