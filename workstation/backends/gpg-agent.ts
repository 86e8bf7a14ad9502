// The gpg-agent back end: serves the keys (and smartcards) the workstation's own gpg-agent holds,
// without moving them. The inventory comes from the agent's normal socket (gpg-agent-keys.ts:
// KEYINFO --list, as the extra socket refuses to enumerate) joined with the public keyring; every
// private-key operation goes through the agent's extra (restricted) socket, so gpg-agent applies
// its own remote-request rules: its pinentry says the request is remote, its passphrase cache for
// remote use is separate, and `Confirm: restricted` keys ask. keytether's policy and audit run
// before anything is sent.

import { ErrorCode, GpgError, toGpgError } from '../../protocol/gpg-error.js';
import type { DecryptResult, Inventory, KeyEntry } from '../../protocol/keyholder.js';
import { parseSexp } from '../../protocol/sexp.js';
import { AgentConnection, type CommandObserver, type PipelineStep } from './agent-connection.js';
import { AgentKeyList, QUERY_TIMEOUT_MS } from './gpg-agent-keys.js';
import { noPromptError, type Backend, type KeyOperator, type OpenContext } from './backend.js';
import { agentDirs, launchAgent, type AgentDirs, type GnupgTools } from './gpg-tools.js';
import { parseKeyInfoArgs } from './keyinfo.js';
import { plusPercentEscape, requesterPrefixedText } from './requester-text.js';

export interface GpgAgentBackendOptions {
  /** GNUPGHOME of the workstation's gpg; default: the environment's. */
  gnupgHome?: string;
  gpg?: string;
  gpgconf?: string;
  /** Start gpg-agent if it is not running, and fail if it still cannot be reached. */
  requireAgent?: boolean;
  /**
   * Touch gpg-agent only while its GNUPGHOME holds a secret key (private-keys-v1.d has a key
   * file): for a home without keys nothing is connected to or started, not even a
   * socket-activated agent. Keys that appear later are picked up by the next refresh, and the
   * agent is then started if it is not running. (`backend = "auto"`.)
   */
  onlyWithKeys?: boolean;
  /** The inventory is re-read at least this often, and after the keyring changes. */
  refreshMs?: number;
  /** How often the keyring is checked for changes (default 1 s). */
  changeCheckMs?: number;
  /** Test hook: sees every command line sent to gpg-agent. */
  onCommand?: CommandObserver;
  /** Test hook: sees the key specifications of every public-keyring export. */
  onExport?: (specs: string[]) => void;
}

const MAX_IDLE_CONNECTIONS = 4;
// Larger than any sig-val or decrypted value of a supported key.
const MAX_RESULT_BYTES = 64 * 1024;

/** gpg-agent 2.4's INQUIRE_MAXLEN for TBSDATA. */
const MAX_TBS_BYTES = 2048;
/**
 * libgcrypt hash id → digest length, the algorithms gpg signs with. Anything else is refused here:
 * a SETHASH the agent rejects would still leave PKSIGN in the pipeline to run (and maybe prompt).
 */
const DIGEST_LENGTH_BY_ALGO: ReadonlyMap<number, number> = new Map([
  [1, 16],
  [2, 20],
  [3, 20],
  [8, 32],
  [9, 48],
  [10, 64],
  [11, 28],
]);
/**
 * Every operation starts with RESET, in the same write as the rest (no extra round trip). Without
 * it gpg-agent keeps the previous operation's SIGKEY and SETHASH, and a command that failed
 * mid-pipeline would leave PKSIGN signing with the previous request's key or digest (seen with
 * 2.2.40 and 2.4.7). After RESET nothing of another request is left: a failed SIGKEY/SETKEY
 * leaves no key, so PKSIGN/PKDECRYPT fail; a SETHASH the agent refuses (an algorithm it lacks;
 * lengths are checked here first) leaves an empty digest, and the first ERR still wins.
 */
const RESET_FIRST: PipelineStep[] = [{ command: 'RESET', opts: { timeoutMs: QUERY_TIMEOUT_MS } }];

export class GpgAgentBackend implements Backend {
  readonly name = 'gpg-agent';
  readonly dirs: AgentDirs;
  readonly #tools: GnupgTools;
  readonly #opts: GpgAgentBackendOptions;
  readonly #idle: AgentConnection[] = [];
  readonly #keys: AgentKeyList;
  #closed = false;

  private constructor(tools: GnupgTools, dirs: AgentDirs, opts: GpgAgentBackendOptions) {
    this.#tools = tools;
    this.dirs = dirs;
    this.#opts = opts;
    this.#keys = new AgentKeyList(tools, dirs, opts);
  }

  /**
   * Finds the agent's sockets. With `requireAgent` also starts the agent and checks it answers;
   * otherwise an unreachable agent just means an empty inventory until it appears.
   */
  static async open(opts: GpgAgentBackendOptions = {}): Promise<GpgAgentBackend> {
    const tools: GnupgTools = {
      gpg: opts.gpg ?? 'gpg',
      gpgconf: opts.gpgconf ?? 'gpgconf',
      home: opts.gnupgHome,
      ...(opts.onExport ? { onExport: opts.onExport } : {}),
    };
    const dirs = await agentDirs(tools);
    const backend = new GpgAgentBackend(tools, dirs, opts);
    if (opts.requireAgent) {
      await launchAgent(tools);
      const conn = await AgentConnection.open(dirs.extraSocket, 'extra', opts.onCommand);
      conn.close();
    }
    return backend;
  }

  inventory(): Promise<Inventory> {
    return this.#keys.inventory();
  }

  async open(entry: KeyEntry, ctx: OpenContext): Promise<KeyOperator> {
    const desc = plusPercentEscape(
      requesterPrefixedText(
        ctx.requester,
        ctx.description,
        `Please enter the passphrase to unlock the key\n${entry.fingerprint}`,
      ),
    );
    const grip = entry.keygrip.toUpperCase();
    if (!/^[0-9A-F]{40}$/.test(grip)) throw new GpgError(ErrorCode.NO_SECKEY);
    if (ctx.pinentryMode) await this.#refuseIfPrompting(grip, ctx.pinentryMode);
    return {
      sign: (hashAlgo, digest) => {
        // gpg-agent's own SETHASH rule, checked here so that SETHASH cannot fail in the pipeline.
        if (DIGEST_LENGTH_BY_ALGO.get(hashAlgo) !== digest.length) {
          return Promise.reject(new GpgError(ErrorCode.ASS_PARAMETER, 'unsupported hash'));
        }
        const hex = Buffer.from(digest).toString('hex').toUpperCase();
        return this.#withConnection(async (conn) => {
          const r = await conn.pipeline([
            ...RESET_FIRST,
            { command: `SIGKEY ${grip}`, opts: { timeoutMs: QUERY_TIMEOUT_MS } },
            { command: `SETKEYDESC ${desc}`, opts: { timeoutMs: QUERY_TIMEOUT_MS } },
            { command: `SETHASH ${hashAlgo} ${hex}`, opts: { timeoutMs: QUERY_TIMEOUT_MS } },
            {
              command: 'PKSIGN',
              opts: { onInquire: () => null, maxDataBytes: MAX_RESULT_BYTES, signal: ctx.signal },
            },
          ]);
          return r[r.length - 1]!.data;
        });
      },
      ...(entry.algorithm === 'ed25519'
        ? { signMessage: (data: Uint8Array) => this.#signMessage(grip, desc, data, ctx.signal) }
        : {}),
      decrypt: (encVal) =>
        this.#withConnection(async (conn) => {
          let padding: 0 | 1 | undefined;
          const r = await conn.pipeline([
            ...RESET_FIRST,
            { command: `SETKEY ${grip}`, opts: { timeoutMs: QUERY_TIMEOUT_MS } },
            { command: `SETKEYDESC ${desc}`, opts: { timeoutMs: QUERY_TIMEOUT_MS } },
            {
              command: 'PKDECRYPT',
              opts: {
                onInquire: (keyword) => (keyword === 'CIPHERTEXT' ? Buffer.from(encVal) : null),
                onStatus: (keyword, args) => {
                  if (keyword === 'PADDING') padding = args.trim() === '0' ? 0 : 1;
                },
                maxDataBytes: MAX_RESULT_BYTES,
                signal: ctx.signal,
              },
            },
          ]);
          const data = r[r.length - 1]!.data;
          try {
            return decryptedValue(data, padding);
          } finally {
            data.fill(0);
          }
        }),
    };
  }

  /**
   * PureEdDSA over a whole message (an SSH signature): gpg-agent 2.3+ takes it with
   * `SETHASH --inquire` and asks for it as TBSDATA. PKSIGN goes in a second write: pipelined
   * behind the inquiring SETHASH, libassuan would read it as the inquiry's answer.
   */
  #signMessage(
    grip: string,
    desc: string,
    data: Uint8Array,
    signal: AbortSignal | undefined,
  ): Promise<Uint8Array> {
    if (data.length > MAX_TBS_BYTES) {
      return Promise.reject(
        new GpgError(ErrorCode.INV_LENGTH, `gpg-agent signs at most ${MAX_TBS_BYTES} bytes whole`),
      );
    }
    return this.#withConnection(async (conn) => {
      try {
        await conn.pipeline([
          ...RESET_FIRST,
          { command: `SIGKEY ${grip}`, opts: { timeoutMs: QUERY_TIMEOUT_MS } },
          { command: `SETKEYDESC ${desc}`, opts: { timeoutMs: QUERY_TIMEOUT_MS } },
          {
            command: 'SETHASH --inquire',
            opts: {
              timeoutMs: QUERY_TIMEOUT_MS,
              onInquire: (keyword) => (keyword === 'TBSDATA' ? Buffer.from(data) : null),
            },
          },
        ]);
      } catch (e) {
        const err = toGpgError(e);
        // gpg-agent 2.2 has no `SETHASH --inquire` and says "Unsupported algorithm".
        if (err.code === ErrorCode.UNSUPPORTED_ALGORITHM) {
          throw new GpgError(
            ErrorCode.NOT_SUPPORTED,
            "the workstation's gpg-agent cannot make Ed25519 SSH signatures (gpg-agent 2.3 or later can); use a newer GnuPG or import the key into keytether's own store",
          );
        }
        throw err;
      }
      const r = await conn.pipeline([
        {
          command: 'PKSIGN',
          opts: { onInquire: () => null, maxDataBytes: MAX_RESULT_BYTES, signal },
        },
      ]);
      return r[r.length - 1]!.data;
    });
  }
  /**
   * The extra socket refuses `OPTION pinentry-mode` (and KEYINFO), so the agent cannot be told
   * not to prompt; instead a key it would prompt for (protected and not cached, on a card, or
   * marked confirm) is refused here, as the normal socket describes it, before the agent is asked.
   */
  async #refuseIfPrompting(grip: string, mode: 'cancel' | 'error'): Promise<void> {
    let line: string | undefined;
    try {
      const conn = await AgentConnection.open(
        this.dirs.agentSocket,
        'normal',
        this.#opts.onCommand,
      );
      try {
        const r = await conn.transact(`KEYINFO ${grip}`, { timeoutMs: QUERY_TIMEOUT_MS });
        line = r.status.find((s) => s.keyword === 'KEYINFO')?.args;
      } finally {
        conn.close();
      }
    } catch (e) {
      throw toGpgError(e);
    }
    const info = line !== undefined ? parseKeyInfoArgs(line) : undefined;
    const cached = line?.split(' ')[4] === '1'; // KEYINFO's fifth field: 1 when cached
    if (!info) return; // the operation itself then fails as the agent says
    if (info.type === 'T') throw noPromptError(mode, 'the smartcard key');
    if (info.flags.includes('c')) throw noPromptError(mode, 'confirming the key');
    if (info.protection !== '-' && !cached) throw noPromptError(mode, 'unlocking the key');
  }

  async close(): Promise<void> {
    this.#closed = true;
    for (const c of this.#idle.splice(0)) c.close();
  }

  /**
   * One operation on an extra-socket connection from the pool. A pooled connection the agent
   * has since dropped (agent restarted) fails before any reply was read, and is then replaced
   * once: nothing of the request can have been acted on.
   */
  async #withConnection<T>(work: (conn: AgentConnection) => Promise<T>): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      const pooled = this.#idle.pop();
      let conn: AgentConnection;
      try {
        conn =
          pooled && !pooled.closed
            ? pooled
            : await AgentConnection.open(this.dirs.extraSocket, 'extra', this.#opts.onCommand);
      } catch (e) {
        throw toGpgError(e);
      }
      const repliesBefore = conn.replies;
      try {
        const result = await work(conn);
        this.#release(conn);
        return result;
      } catch (e) {
        // An ERR from the agent leaves the connection usable (every reply was read); anything
        // else closed it.
        this.#release(conn);
        if (conn === pooled && attempt === 0 && conn.closed && conn.replies === repliesBefore) {
          continue;
        }
        throw agentError(e, conn.closed);
      }
    }
  }

  #release(conn: AgentConnection): void {
    if (this.#closed || conn.closed || this.#idle.length >= MAX_IDLE_CONNECTIONS) conn.close();
    else this.#idle.push(conn);
  }
}

/** gpg-agent's errors travel on with their own code and source; transport failures do not. */
function agentError(e: unknown, connectionLost: boolean): GpgError {
  const err = toGpgError(e);
  if (connectionLost && err.code === ErrorCode.ASS_GENERAL) {
    return new GpgError(ErrorCode.NO_AGENT, 'lost the connection to gpg-agent');
  }
  return err;
}

/** `(5:value<n>:<bytes>)` → the bytes (copied; the caller wipes DATA). */
function decryptedValue(data: Buffer, padding: 0 | 1 | undefined): DecryptResult {
  const parsed = parseSexp(data, { maxBytes: MAX_RESULT_BYTES, maxDepth: 4 });
  if (parsed.ok && Array.isArray(parsed.value)) {
    const [name, value] = parsed.value;
    if (
      Buffer.isBuffer(name) &&
      name.toString('latin1') === 'value' &&
      Buffer.isBuffer(value) &&
      parsed.value.length === 2
    ) {
      const out: DecryptResult = { value: Buffer.from(value) };
      value.fill(0);
      if (padding !== undefined) out.padding = padding;
      return out;
    }
  }
  throw new GpgError(ErrorCode.INV_DATA, 'gpg-agent returned no decrypted value');
}
