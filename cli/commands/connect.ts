// keytether connect: a facade fed through a relay, optionally wrapped around one command that gets
// a private GNUPGHOME (the CI use: `keytether connect --relay URL -- git tag -s v1 -m v1`).

import type { Command } from 'commander';
import { parseToken } from '../../protocol/token.js';
import { runConnect } from '../../server/connect.js';
import { UsageError } from '../../system/user-error.js';
import { loadRelayTrust, RELAY_CA_HELP, RELAY_FINGERPRINT_HELP } from '../relay-trust.js';
import { action, examples, packageVersion } from '../program.js';

interface ConnectFlags {
  relay?: string;
  token?: string;
  socket?: string;
  insecure?: boolean;
  relayCa?: string;
  relayFingerprint?: string;
  /** false with --no-ssh-agent. */
  sshAgent?: boolean;
}

export function register(program: Command): void {
  program
    .command('connect')
    .addHelpText(
      'after',
      examples(
        'KEYTETHER_TOKEN=kt1.… keytether connect --relay https://relay.example:7878 -- git tag -s v1.0 -m v1.0',
        'keytether connect --relay https://relay.example:7878 --token "$KEYTETHER_TOKEN"',
      ),
    )
    .description('run a facade fed through a relay; with "-- CMD", run CMD against it')
    .argument('[command...]', 'command to run with a private GNUPGHOME (after --)')
    .option(
      '--relay <url>',
      'relay URL as the relay printed it (default env KEYTETHER_RELAY, else the URL the token was issued for)',
    )
    .option('--token <token>', 'token (default env KEYTETHER_TOKEN)')
    .option('--socket <path>', "socket to serve (default: 'gpgconf --list-dirs agent-socket')")
    .option(
      '--no-ssh-agent',
      "serve no ssh-agent socket (default: one beside the gpg socket, printed as 'ssh-agent: SOCKET' and SSH_AUTH_SOCK for CMD)",
    )
    .option('--insecure', 'allow an unencrypted ws:// or http:// relay that is not on loopback')
    .option('--relay-ca <file>', `${RELAY_CA_HELP} (env KEYTETHER_RELAY_CA)`)
    .option(
      '--relay-fingerprint <sha256>',
      `${RELAY_FINGERPRINT_HELP} (env KEYTETHER_RELAY_FINGERPRINT)`,
    )
    .action(
      action(async (command: string[], flags: ConnectFlags) => {
        const token = flags.token ?? process.env.KEYTETHER_TOKEN;
        if (!token) {
          throw new UsageError('no token: pass --token or set KEYTETHER_TOKEN');
        }
        const relay =
          optionOrEnv(flags.relay, '--relay', 'KEYTETHER_RELAY')?.value ?? tokenRelay(token);
        if (!relay) {
          throw new UsageError(
            'no relay: pass --relay URL or set KEYTETHER_RELAY (the token names none)',
          );
        }
        if (command.length > 0 && flags.socket !== undefined) {
          throw new UsageError(
            '--socket cannot be combined with a command; the command gets its own',
          );
        }
        const ca = optionOrEnv(flags.relayCa, '--relay-ca', 'KEYTETHER_RELAY_CA');
        const fingerprint = optionOrEnv(
          flags.relayFingerprint,
          '--relay-fingerprint',
          'KEYTETHER_RELAY_FINGERPRINT',
        );
        const trust = await loadRelayTrust({
          ...(ca ? { ca } : {}),
          ...(fingerprint ? { fingerprint } : {}),
        });
        return runConnect({
          relay,
          token,
          ...(flags.socket !== undefined ? { socket: flags.socket } : {}),
          ...(command.length > 0 ? { command } : {}),
          ...(flags.sshAgent === false ? { sshAgent: false } : {}),
          software: `keytether/${packageVersion()}`,
          insecure: flags.insecure ?? false,
          trust,
        });
      }),
    );
}

/** The relay URL the token was issued for: where its holder said to find it (a hint only). */
function tokenRelay(token: string): string | undefined {
  const parsed = parseToken(token);
  return parsed.ok ? parsed.token.payload.relay : undefined;
}

/** A flag, else a non-empty environment variable (CI sets those), named as the user gave it. */
function optionOrEnv(
  flag: string | undefined,
  flagName: string,
  envName: string,
): { value: string; name: string } | undefined {
  if (flag !== undefined) return { value: flag, name: flagName };
  const v = process.env[envName];
  if (v === undefined) return undefined;
  // A CI secret that is missing expands to "": that must not quietly mean "trust the system CAs".
  if (v.trim() === '') {
    throw new UsageError(`${envName} is set but empty; give it a value or unset it`);
  }
  return { value: v, name: envName };
}
