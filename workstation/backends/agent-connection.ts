// The only way keytether talks to the workstation's gpg-agent: an AssuanClient behind an
// allow-list. Commands that could hand out secret material or change key storage (EXPORT_KEY,
// KEYWRAP_KEY, GET_PASSPHRASE, PRESET_PASSPHRASE, …) are refused here, before a byte is written,
// and every command that is sent is reported to an optional observer (tests prove with it that
// nothing else ever reaches the agent).

import net from 'node:net';
import { AssuanClient } from '../../protocol/assuan/index.js';
import type { TransactOptions, TransactResult } from '../../protocol/assuan/index.js';
import { ErrorCode, GpgError } from '../../protocol/gpg-error.js';

export const ALLOWED_AGENT_COMMANDS: ReadonlySet<string> = new Set([
  'RESET',
  'OPTION',
  'GETINFO',
  'HAVEKEY',
  'KEYINFO',
  'READKEY',
  'SIGKEY',
  'SETKEY',
  'SETKEYDESC',
  'SETHASH',
  'PKSIGN',
  'PKDECRYPT',
]);

export type AgentSocketKind = 'normal' | 'extra';

/** Called with every command line just before it is written (never for refused ones). */
export type CommandObserver = (socket: AgentSocketKind, line: string) => void;

const CONNECT_TIMEOUT_MS = 10_000;

export class AgentConnection {
  private constructor(
    private readonly client: AssuanClient,
    readonly kind: AgentSocketKind,
    private readonly observe: CommandObserver | undefined,
  ) {}

  static async open(
    socketPath: string,
    kind: AgentSocketKind,
    observe?: CommandObserver,
  ): Promise<AgentConnection> {
    const sock = await new Promise<net.Socket>((resolve, reject) => {
      const s = net.createConnection(socketPath);
      const timer = setTimeout(() => {
        s.destroy();
        reject(new GpgError(ErrorCode.NO_AGENT, 'gpg-agent did not accept the connection'));
      }, CONNECT_TIMEOUT_MS);
      s.once('connect', () => {
        clearTimeout(timer);
        s.off('error', onError);
        // Late socket errors surface as a closed connection in the client.
        s.on('error', () => s.destroy());
        resolve(s);
      });
      const onError = () => {
        clearTimeout(timer);
        reject(new GpgError(ErrorCode.NO_AGENT, `cannot connect to gpg-agent (${kind} socket)`));
      };
      s.once('error', onError);
    });
    const client = await AssuanClient.connect(sock, { timeoutMs: CONNECT_TIMEOUT_MS });
    return new AgentConnection(client, kind, observe);
  }

  get closed(): boolean {
    return this.client.closed;
  }

  transact(command: string, opts: TransactOptions = {}): Promise<TransactResult> {
    const word = (command.split(/[ \t]/, 1)[0] ?? '').toUpperCase();
    if (!ALLOWED_AGENT_COMMANDS.has(word)) {
      return Promise.reject(
        new GpgError(
          ErrorCode.FORBIDDEN,
          `keytether never sends ${word.slice(0, 20)} to gpg-agent`,
        ),
      );
    }
    this.observe?.(this.kind, command);
    return this.client.transact(command, opts);
  }

  close(): void {
    this.client.close();
  }
}
