// keytether ssh [USER@]HOST: forwards the holder to HOST over SSH. Borrows the running
// `keytether agent`'s holder through its control socket when there is one, else runs a holder
// in-process; connects like OpenSSH would (ssh_config, known_hosts, agent, identity files), starts
// `keytether serve --stdio` there and carries the tunnel until Ctrl-C or the link ends.

import { Option, type Command } from 'commander';
import path from 'node:path';
import type { KeyHolder } from '../../protocol/keyholder.js';
import type { ConfigFlags } from '../../workstation/home/config.js';
import {
  openAgentTunnel,
  requestStatus,
  startControlServer,
  type ControlServer,
  type FrontStatus,
} from '../../workstation/control/control.js';
import { auditFailureLine, operationLine } from '../../workstation/audit/operation-line.js';
import { openHolderRuntime } from '../../workstation/holder/runtime.js';
import { resolveSshTarget } from '../../workstation/ssh/config.js';
import { connectSsh } from '../../workstation/ssh/connect.js';
import type { UnlockedIdentities } from '../../workstation/ssh/identity-agent.js';
import { pinentryAskPassphrase } from '../../workstation/ssh/identity-passphrase.js';
import { runRemoteCommand } from '../../workstation/ssh/remote-command.js';
import { runSshSession } from '../../workstation/ssh/session.js';
import { keepLinked } from '../../workstation/ssh/reconnect.js';
import { UsageError, UserError } from '../../system/user-error.js';
import {
  action,
  collect,
  examples,
  packageVersion,
  positiveIntArg,
  resolveHome,
} from '../program.js';
import { loadHolderConfig } from './agent.js';

interface SshFlags extends ConfigFlags {
  port?: number;
  jump?: string;
  identity?: string[];
  option?: string[];
  remoteSocket?: string;
  remoteCommand: string;
  acceptNew?: boolean;
  importKeys?: boolean;
  replace?: boolean;
  reconnect?: boolean;
  /** false with --no-agent. */
  agent?: boolean;
  /** false with --no-ssh-agent. */
  sshAgent?: boolean;
  gnupgHome?: string;
}

// Options that shape an in-process holder; a running agent has its own.
const IN_PROCESS_OPTIONS = [
  'relay',
  'pinentryProgram',
  'pinentryTimeout',
  'defaultCacheTtl',
  'maxCacheTtl',
  'policy',
  'backend',
  'gnupgHome',
] as const;

// Of those, the ones `keytether ssh` itself also uses to ask SSH identity passphrases.
const SSH_IDENTITY_OPTIONS: readonly string[] = ['pinentryProgram', 'pinentryTimeout'];

/** How long the server keeps the socket for a workstation that lost its link (--reconnect). */
const LINGER_MS = 10 * 60_000;

function optionFlag(name: string): string {
  return `--${name.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;
}

export function register(program: Command): void {
  program
    .command('ssh')
    .addHelpText(
      'after',
      examples(
        'keytether ssh build@ci.example.com',
        'keytether ssh build@ci.example.com -- git tag -s v1.2 -m v1.2',
      ),
    )
    .description(
      'forward the holder to HOST over SSH until interrupted or the connection ends (or COMMAND does)',
    )
    .argument('<destination>', '[USER@]HOST')
    .argument(
      '[command...]',
      'after --: run this on HOST once gpg can use the socket (SSH_AUTH_SOCK set too), then end with its exit status',
    )
    .option('-p, --port <port>', 'SSH port', positiveIntArg)
    .option(
      '-J, --jump <hops>',
      '[user@]host[:port][,...]: go through these jump hosts, each logged in to on its own (ProxyJump; none: directly)',
    )
    .option(
      '-i, --identity <file>',
      'SSH identity file (repeatable); an encrypted one is unlocked through the pinentry',
      collect,
    )
    .option('-o, --option <name=value>', 'ssh_config option (repeatable)', collect)
    .option(
      '--remote-socket <path>',
      "socket on HOST (default: what 'gpgconf --list-dirs agent-socket' prints there)",
    )
    .option('--remote-command <cmd>', 'how to run keytether on HOST', 'keytether')
    .option('--accept-new', 'trust an unknown host key, then record it')
    .option('--import-keys', "import the holder's public keys into HOST's keyring")
    .option(
      '--replace',
      "stop a gpg-agent running on HOST's socket (gpgconf --kill gpg-agent) and serve it instead",
    )
    .option(
      '--reconnect',
      "when the link drops, connect again with backoff and print 'reconnected: SOCKET'; gpg on HOST fails at once meanwhile",
    )
    .option(
      '--no-ssh-agent',
      "serve no ssh-agent socket on HOST (default: one, printed as 'ssh-agent: SOCKET')",
    )
    .option(
      '--no-agent',
      'run a holder in-process even when a keytether agent is running on this workstation',
    )
    .addOption(new Option('--socket <path>').hideHelp())
    .option(
      '--relay <url>',
      'in-process holder: also connect out to this relay (repeatable)',
      collect,
    )
    .option(
      '--pinentry-program <path>',
      'pinentry for SSH identity passphrases, and for the in-process holder',
    )
    .option(
      '--pinentry-timeout <duration>',
      'in-process holder: give up on an unanswered pinentry after this long (default 60s)',
    )
    .option(
      '--default-cache-ttl <duration>',
      'in-process holder: forget an unlocked key after this long unused (default 600s)',
    )
    .option(
      '--max-cache-ttl <duration>',
      'in-process holder: forget an unlocked key after this long at most (default 7200s)',
    )
    .option(
      '--policy <rule>',
      "in-process holder: a policy rule, e.g. 'front=ssh,op=decrypt,action=confirm' (repeatable)",
      collect,
    )
    .addOption(
      new Option('--backend <backend>', 'in-process holder: where the keys live').choices([
        'builtin',
        'gpg-agent',
        'auto',
      ]),
    )
    .option(
      '--gnupg-home <dir>',
      'in-process holder: GnuPG home of the gpg-agent back end (default $GNUPGHOME or ~/.gnupg)',
    )
    .action(
      action(async (destination: string, command: string[], flags: SshFlags, cmd: Command) => {
        // `ssh HOST CMD` works without it, but here a stray word must not run on a server.
        let root: Command = cmd;
        while (root.parent) root = root.parent;
        if (
          command.length > 0 &&
          !(root as unknown as { rawArgs: string[] }).rawArgs.includes('--')
        ) {
          throw new UsageError(
            `'${command[0]!.slice(0, 40)}' follows the destination; to run a command on it, put it after --: keytether ssh ${destination.slice(0, 80)} -- CMD`,
          );
        }
        if (command.length > 0 && flags.reconnect) {
          throw new UsageError(
            '--reconnect keeps a link up until interrupted, and a command ends it: use one of them',
          );
        }
        if (flags.socket !== undefined) {
          throw new UserError(
            'reusing a running keytether agent (--socket) is not available yet; run without --socket',
          );
        }
        const globals = cmd.optsWithGlobals() as { home?: string; config?: string };
        const home = resolveHome(globals);
        const config = await loadHolderConfig(home, globals.config, flags);
        // Resolved before anything is opened so that a bad -o or host is a plain usage error.
        const target = resolveSshTarget({
          target: destination,
          ...(flags.port !== undefined ? { port: flags.port } : {}),
          identities: flags.identity ?? [],
          options: flags.option ?? [],
          ...(flags.jump !== undefined ? { jump: flags.jump } : {}),
        });
        const notice = (s: string) => process.stderr.write(`keytether ssh: ${s}\n`);
        const software = `keytether/${packageVersion()}`;

        // A running agent is preferred: its passphrase cache, policy and audit chain then cover
        // this session too, and two processes never append to one audit log.
        const agent =
          flags.agent === false
            ? undefined
            : await openAgentTunnel(home, target.host, { software });
        let holder: KeyHolder;
        let release: () => Promise<void>;
        // The in-process holder's SSH session as `keytether status` lists it, once it is up.
        let session: FrontStatus | undefined;
        if (agent) {
          // Another `keytether ssh`'s holder also answers here; this session then lasts only as
          // long as that one, which the user should know before it surprises them.
          const owner = (
            await requestStatus(home, { version: packageVersion() }).catch(() => undefined)
          )?.command;
          notice(
            owner === undefined
              ? `using the running keytether agent (pid ${agent.pid})`
              : `using the holder of '${owner}' (pid ${agent.pid}); this session ends when that one does — start 'keytether agent' to give every session one lasting holder`,
          );
          const notForGpg = IN_PROCESS_OPTIONS.filter((o) => cmd.getOptionValueSource(o) === 'cli');
          if (notForGpg.length > 0) {
            // The pinentry options still unlock this session's encrypted SSH identity files.
            const stillUsed = notForGpg.filter((o) => SSH_IDENTITY_OPTIONS.includes(o));
            const still =
              stillUsed.length === 0
                ? ''
                : ` (${stillUsed.map(optionFlag).join(', ')} still ${stillUsed.length === 1 ? 'applies' : 'apply'} to SSH identity passphrases)`;
            notice(
              `the running agent's own settings apply to gpg's requests, not ${notForGpg.map(optionFlag).join(', ')}${still}; pass --no-agent to use them for gpg too`,
            );
          }
          holder = agent.holder;
          release = async () => agent.holder.close('the SSH session ended');
        } else {
          if (flags.agent === false) {
            const running = await requestStatus(home, { version: packageVersion() });
            if (running) {
              // Two processes appending to one audit log would fork its hash chain.
              throw new UserError(
                `a keytether agent is already running for ${home} (pid ${running.pid}); drop --no-agent to use it, or give this session its own --home`,
              );
            }
          }
          if (config.relay.length > 0) {
            throw new UserError('--relay is not available yet; run keytether ssh without it');
          }
          const rt = await openHolderRuntime(
            home,
            config,
            flags.gnupgHome !== undefined ? { gnupgHome: path.resolve(flags.gnupgHome) } : {},
          );
          holder = rt.holder;
          // The in-process holder is this terminal's: one line per operation, as the agent does.
          const stopLines = rt.audit.onRecorded((rec) => {
            if (session && rec.front === 'ssh') session.requests++;
            process.stderr.write(`${operationLine(rec)}\n`);
          });
          const stopFailures = rt.audit.onWriteFailed((e) =>
            process.stderr.write(`${auditFailureLine(e)}\n`),
          );
          // `keytether status` asks the home's control socket, which nobody serves while no
          // agent runs: this holder answers there for as long as its session lasts.
          const control: ControlServer | undefined = await startControlServer(rt, {
            home,
            version: packageVersion(),
            command: `keytether ssh ${target.host}`,
            fronts: () => (session ? [{ ...session }] : []),
          }).catch((e: unknown) => {
            notice(`keytether status will not show this session: ${(e as Error).message}`);
            return undefined;
          });
          release = async () => {
            await control?.close();
            stopLines();
            stopFailures();
            await rt.close();
          };
        }
        for (const s of target.unsupported) notice(s);

        const stop = new AbortController();
        const onSignal = () => stop.abort();
        const signals: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];
        for (const s of signals) process.on(s, onSignal);

        let readyCount = 0;
        // With a command, stdout is the command's; keytether's own lines go to stderr.
        const lineOut = command.length > 0 ? process.stderr : process.stdout;
        let commandRun: Promise<void> | undefined;
        let commandStatus = 0;
        let commandError: unknown;
        let sshAgentPath: string | undefined;
        const unlocked: UnlockedIdentities = new Map();
        const once = async () => {
          const client = await connectSsh(target, {
            ...(flags.acceptNew ? { acceptNew: true } : {}),
            askPassphrase: pinentryAskPassphrase({
              program: config.pinentryProgram,
              timeoutMs: config.pinentryTimeoutMs,
            }),
            unlocked,
            onNotice: notice,
          });
          try {
            await runSshSession({
              holder,
              client,
              host: target.host,
              remoteCommand: flags.remoteCommand,
              ...(flags.remoteSocket !== undefined ? { remoteSocket: flags.remoteSocket } : {}),
              // The keys were imported when the first link came up; a reconnect is kept quick.
              importKeys: (flags.importKeys ?? false) && readyCount === 0,
              replace: flags.replace ?? false,
              ...(flags.sshAgent === false ? { sshAgent: false } : {}),
              ...(flags.reconnect ? { lingerMs: LINGER_MS } : {}),
              software,
              onReady: (p) => {
                if (command.length > 0 && commandRun === undefined) {
                  commandRun = runRemoteCommand(client, command, {
                    sshAgent: flags.sshAgent !== false,
                  }).then(
                    (code) => {
                      commandStatus = code;
                      stop.abort();
                    },
                    (e: unknown) => {
                      commandError = e;
                      stop.abort();
                    },
                  );
                }
                session ??= {
                  front: 'ssh',
                  host: target.host,
                  since: new Date().toISOString(),
                  requests: 0,
                };
                // A script waits for one `ready:`; a resumed link is news, not a new start.
                lineOut.write(`${readyCount++ === 0 ? 'ready' : 'reconnected'}: ${p}\n`);
              },
              onSshAgent: (p) => {
                // Said again only when a reconnected link serves it elsewhere.
                if (p !== sshAgentPath) lineOut.write(`ssh-agent: ${p}\n`);
                sshAgentPath = p;
              },
              onRemoteLine: (l) => process.stderr.write(`${target.host}: ${l}\n`),
              signal: stop.signal,
              ...(agent
                ? {
                    holderClosed: agent.holder.closed,
                    onInventoryChange: (changed: () => void) =>
                      agent.holder.on('inventory', () => changed()),
                  }
                : {}),
            });
          } finally {
            client.end();
          }
        };
        try {
          if (flags.reconnect) {
            await keepLinked({
              once,
              readyCount: () => readyCount,
              signal: stop.signal,
              onNotice: notice,
            });
          } else {
            await once();
          }
          await commandRun;
          if (commandError !== undefined) throw commandError;
          return commandStatus;
        } finally {
          for (const s of signals) process.off(s, onSignal);
          await release();
        }
      }),
    );
}
