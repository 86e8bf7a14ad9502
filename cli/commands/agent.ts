// keytether agent: the holder in the foreground, serving the gpg-agent protocol on a local socket
// so that local gpg, and OpenSSH `RemoteForward` of that socket, use keytether's keys.

import { Option, type Command } from 'commander';
import path from 'node:path';
import type { Socket } from 'node:net';
import { ContentStore, serveAgent } from '../../protocol/agent/index.js';
import { serveSshAgent } from '../../protocol/ssh-agent/index.js';
import { ConfigError, loadConfig, mergeFlags } from '../../workstation/home/config.js';
import type { Config, ConfigFlags } from '../../workstation/home/config.js';
import { auditFailureLine, operationLine } from '../../workstation/audit/operation-line.js';
import { listenUnix } from '../../workstation/holder/local-socket.js';
import { requesterWithPeer } from '../../system/peer-process.js';
import { openHolderRuntime } from '../../workstation/holder/runtime.js';
import { startControlServer } from '../../workstation/control/control.js';
import { RelayUrlError, startRelayClients } from '../../workstation/relay/client.js';
import { UsageError, UserError } from '../../system/user-error.js';
import { loadRelayTrust, RELAY_CA_HELP, RELAY_FINGERPRINT_HELP } from '../relay-trust.js';
import { action, collect, examples, packageVersion, resolveHome } from '../program.js';
import { startWebServer, type WebServer } from '../../workstation/web/server.js';
import { webOptions, webPlan, type WebFlags } from './agent-web.js';

interface AgentFlags extends ConfigFlags, WebFlags {
  socket?: string;
  gnupgHome?: string;
  insecure?: boolean;
  relayCa?: string;
  relayFingerprint?: string;
  /** false with --no-ssh-agent. */
  sshAgent?: boolean;
}

/** Loads config.toml plus flags; a bad flag is a usage error, a bad file a plain failure. */
export async function loadHolderConfig(
  home: string,
  configFile: string | undefined,
  flags: ConfigFlags,
): Promise<Config> {
  try {
    return mergeFlags(await loadConfig(home, configFile), flags);
  } catch (e) {
    if (e instanceof ConfigError)
      throw e.flag ? new UsageError(e.message) : new UserError(e.message, e.problems);
    throw e;
  }
}

export function register(program: Command): void {
  const pageFlags = webOptions();
  program
    .command('agent')
    .addHelpText(
      'after',
      examples(
        'keytether agent',
        "keytether agent --relay https://relay.example:7878 --policy 'front=ssh,op=decrypt,action=confirm'",
      ),
    )
    .description('run the key holder in the foreground and serve the gpg-agent protocol')
    .option(
      '--socket <path>',
      'serve the gpg-agent protocol here (default $KEYTETHER_HOME/S.gpg-agent)',
    )
    .option(
      '--no-ssh-agent',
      "serve no ssh-agent socket (default: $KEYTETHER_HOME/S.ssh-agent, printed as 'ssh-agent: SOCKET')",
    )
    .option(
      '--relay <url>',
      'connect out to this relay (repeatable; instances of one relay: URL,URL,…)',
      collect,
    )
    .option('--insecure', 'allow an unencrypted ws:// or http:// relay that is not on loopback')
    .option('--relay-ca <file>', `${RELAY_CA_HELP}; applies to every --relay`)
    .option('--relay-fingerprint <sha256>', `${RELAY_FINGERPRINT_HELP}; applies to every --relay`)
    .option('--pinentry-program <path>', 'pinentry to ask for passphrases and confirmations')
    .option(
      '--pinentry-timeout <duration>',
      'give up on an unanswered pinentry after this long (default 60s)',
    )
    .option(
      '--default-cache-ttl <duration>',
      'forget an unlocked key after this long unused (default 600s)',
    )
    .option(
      '--max-cache-ttl <duration>',
      'forget an unlocked key after this long at most (default 7200s)',
    )
    .option(
      '--policy <rule>',
      "a policy rule, e.g. 'front=ssh,op=decrypt,action=confirm' (repeatable)",
      collect,
    )
    .option(
      '--audit-sync <mode>',
      'write: audit records reach the kernel before a result is sent (default); fsync: the disk',
    )
    .addOption(
      new Option('--backend <backend>', 'where the keys live').choices([
        'builtin',
        'gpg-agent',
        'auto',
      ]),
    )
    .option(
      '--gnupg-home <dir>',
      'GnuPG home of the gpg-agent back end (default $GNUPGHOME or ~/.gnupg)',
    )
    .option(
      '--ssh-agent-backend <socket>',
      "also offer this ssh-agent's keys for SSH signatures (SSH_AUTH_SOCK: that variable's)",
    )
    .addOption(pageFlags.web)
    .addOption(pageFlags.listen)
    .addOption(pageFlags.cert)
    .addOption(pageFlags.key)
    .action(
      action(async (flags: AgentFlags, cmd: Command) => {
        const globals = cmd.optsWithGlobals() as { home?: string; config?: string };
        const home = resolveHome(globals);
        const config = await loadHolderConfig(home, globals.config, flags);
        // Before the runtime opens, so a bad file or pin is the only thing that happens.
        const trust = await loadRelayTrust({
          ...(flags.relayCa !== undefined
            ? { ca: { value: flags.relayCa, name: '--relay-ca' } }
            : {}),
          ...(flags.relayFingerprint !== undefined
            ? { fingerprint: { value: flags.relayFingerprint, name: '--relay-fingerprint' } }
            : {}),
        });
        const webAt = await webPlan(flags);
        const rt = await openHolderRuntime(
          home,
          config,
          flags.gnupgHome !== undefined ? { gnupgHome: path.resolve(flags.gnupgHome) } : {},
        );
        const socketPath = path.resolve(config.socket ?? path.join(home, 'S.gpg-agent'));
        const open = new Set<Socket>();
        let server;
        const content = new ContentStore();
        try {
          server = await listenUnix(socketPath, (sock) => {
            open.add(sock);
            sock.on('close', () => open.delete(sock));
            sock.on('error', () => sock.destroy());
            void serveAgent(sock, {
              holder: rt.holder,
              // The workstation's own gpg, named by the kernel: pid, command and parents.
              requester: () => requesterWithPeer({ front: 'local' }, sock, undefined),
              content,
              onCut: (why) =>
                process.stderr.write(`keytether: cut a client of ${socketPath}: ${why}\n`),
            });
          });
        } catch (e) {
          await rt.close();
          throw e;
        }
        // The same holder as an ssh-agent for local ssh, git and ssh-add (SSH_AUTH_SOCK).
        const sshSocketPath = path.join(home, 'S.ssh-agent');
        let sshServer: Awaited<ReturnType<typeof listenUnix>> | undefined;
        if (flags.sshAgent !== false) {
          sshServer = await listenUnix(sshSocketPath, (sock) => {
            open.add(sock);
            sock.on('close', () => open.delete(sock));
            sock.on('error', () => sock.destroy());
            let who: ReturnType<typeof requesterWithPeer> | undefined;
            void serveSshAgent(sock, {
              holder: rt.holder,
              requester: () => (who ??= requesterWithPeer({ front: 'local' }, sock, undefined)),
            }).finally(() => sock.destroy());
          }).catch(async (e: unknown) => {
            server.close();
            await rt.close();
            throw e;
          });
        }
        const closeSsh = () =>
          new Promise<void>((resolve) =>
            sshServer ? sshServer.close(() => resolve()) : resolve(),
          );
        // Relays come after the local socket, so `ready:` never waits for a slow network.
        const relays = await startRelayClients(rt, config.relay, {
          software: `keytether/${packageVersion()}`,
          insecure: flags.insecure ?? false,
          trust,
          log: (line) => process.stderr.write(`${line}\n`),
        }).catch(async (e: unknown) => {
          server.close();
          await closeSsh();
          await rt.close();
          throw e instanceof RelayUrlError ? new UsageError(e.message) : e;
        });
        let web: WebServer | undefined;
        // The control socket lets `keytether status`, `ssh`, `approve` and `open` use this holder.
        const control = await (async () => {
          if (webAt) {
            web = await startWebServer({
              broker: rt.broker,
              home,
              ...webAt,
              tokens: {
                config,
                version: packageVersion(),
                ...(flags.gnupgHome !== undefined
                  ? { gnupgHome: path.resolve(flags.gnupgHome) }
                  : {}),
              },
            }).catch((e: unknown) => {
              throw new UserError(
                `cannot serve the approval page on ${webAt.host}:${webAt.port}: ${(e as Error).message}`,
              );
            });
          }
          return startControlServer(rt, {
            home,
            agentSocket: socketPath,
            version: packageVersion(),
            relays,
            web,
          });
        })().catch(async (e: unknown) => {
          await web?.close();
          server.close();
          await closeSsh();
          await relays.close();
          await rt.close();
          throw e;
        });
        if (web) process.stderr.write(`web: ${web.freshUrl()}\n`);
        process.stdout.write(`ready: ${socketPath}\n`);
        if (sshServer) process.stdout.write(`ssh-agent: ${sshSocketPath}\n`);
        const stopLines = rt.audit.onRecorded((rec) =>
          process.stderr.write(`${operationLine(rec)}\n`),
        );
        const stopFailures = rt.audit.onWriteFailed((e) =>
          process.stderr.write(`${auditFailureLine(e)}\n`),
        );
        // Serving gpg-agent's keys to remote fronts is the default (auto): say so once, with the
        // way out, rather than let a user find out from the audit log.
        const gpgAgent = rt.gpgAgent;
        if (gpgAgent) {
          void gpgAgent
            .inventory()
            .then((inv) => {
              if (inv.keys.length === 0) return;
              process.stderr.write(
                `serving ${inv.keys.length} key${inv.keys.length === 1 ? '' : 's'} of the gpg-agent in ${gpgAgent.dirs.homedir} too (--backend builtin serves keytether's own keys only)\n`,
              );
            })
            .catch(() => undefined);
        }
        await new Promise<void>((resolve) => {
          const stop = () => resolve();
          process.once('SIGINT', stop);
          process.once('SIGTERM', stop);
          process.once('SIGHUP', stop);
        });
        stopLines();
        stopFailures();
        await web?.close();
        await control.close();
        await Promise.all([
          new Promise<void>((resolve) => {
            server.close(() => resolve());
            for (const s of open) s.destroy();
          }),
          closeSsh(),
        ]);
        await relays.close();
        await rt.close();
        return 0;
      }),
    );
}
