// The gpg-agent back end: serves the keys (and smartcards) the workstation's own gpg-agent holds,
// without moving them. The inventory comes from the agent's normal socket (KEYINFO --list; the
// extra socket refuses to enumerate) joined with the public keyring; every private-key operation
// goes through the agent's extra (restricted) socket, so gpg-agent applies its own remote-request
// rules: its pinentry says the request is remote, its passphrase cache for remote use is separate,
// and `Confirm: restricted` keys ask. keytether's policy and audit run before anything is sent.

import { stat } from 'node:fs/promises';
import path from 'node:path';
import * as openpgp from 'openpgp';
import { ErrorCode, GpgError, toGpgError } from '../../protocol/gpg-error.js';
import type { Certificate, DecryptResult, Inventory, KeyEntry } from '../../protocol/keyholder.js';
import { publicKeySexp } from '../../protocol/keygrip.js';
import { parseSexp } from '../../protocol/sexp.js';
import { describePart } from '../keystore/key-part.js';
import { AgentConnection, type CommandObserver } from './agent-connection.js';
import type { Backend, KeyOperator, OpenContext } from './backend.js';
import {
  agentDirs,
  exportPublicKeys,
  launchAgent,
  type AgentDirs,
  type GnupgTools,
} from './gpg-tools.js';
import { parseKeyInfoArgs, type AgentKeyInfo } from './keyinfo.js';
import { plusPercentEscape, requesterPrefixedText } from './requester-text.js';

export interface GpgAgentBackendOptions {
  /** GNUPGHOME of the workstation's gpg; default: the environment's. */
  gnupgHome?: string;
  gpg?: string;
  gpgconf?: string;
  /** Start gpg-agent if it is not running, and fail if it still cannot be reached. */
  requireAgent?: boolean;
  /** The inventory is re-read at least this often, and whenever the keyring changes. */
  refreshMs?: number;
  /** Test hook: sees every command line sent to gpg-agent. */
  onCommand?: CommandObserver;
}

const DEFAULT_REFRESH_MS = 5_000;
const MAX_IDLE_CONNECTIONS = 4;
const QUERY_TIMEOUT_MS = 10_000;
// Larger than any sig-val or decrypted value of a supported key.
const MAX_RESULT_BYTES = 64 * 1024;

const EMPTY: Inventory = Object.freeze({ keys: [], certificates: [] }) as Inventory;

export class GpgAgentBackend implements Backend {
  readonly name = 'gpg-agent';
  readonly dirs: AgentDirs;
  readonly #tools: GnupgTools;
  readonly #opts: GpgAgentBackendOptions;
  readonly #idle: AgentConnection[] = [];
  #inventory: Inventory | undefined;
  #stamp = '';
  #readAt = 0;
  #refreshing: Promise<Inventory> | undefined;
  #closed = false;

  private constructor(tools: GnupgTools, dirs: AgentDirs, opts: GpgAgentBackendOptions) {
    this.#tools = tools;
    this.dirs = dirs;
    this.#opts = opts;
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

  async inventory(): Promise<Inventory> {
    const stamp = await this.#changeStamp();
    const fresh = Date.now() - this.#readAt < (this.#opts.refreshMs ?? DEFAULT_REFRESH_MS);
    if (this.#inventory && stamp === this.#stamp && fresh) return this.#inventory;
    this.#refreshing ??= this.#read(stamp).finally(() => (this.#refreshing = undefined));
    return this.#refreshing;
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
    return {
      sign: (hashAlgo, digest) =>
        this.#withConnection(async (conn) => {
          await conn.transact(`SIGKEY ${grip}`);
          await conn.transact(`SETKEYDESC ${desc}`);
          await conn.transact(
            `SETHASH ${hashAlgo} ${Buffer.from(digest).toString('hex').toUpperCase()}`,
          );
          const r = await conn.transact('PKSIGN', {
            onInquire: () => null,
            maxDataBytes: MAX_RESULT_BYTES,
            signal: ctx.signal,
          });
          return r.data;
        }),
      decrypt: (encVal) =>
        this.#withConnection(async (conn) => {
          await conn.transact(`SETKEY ${grip}`);
          await conn.transact(`SETKEYDESC ${desc}`);
          let padding: 0 | 1 | undefined;
          const r = await conn.transact('PKDECRYPT', {
            onInquire: (keyword) => (keyword === 'CIPHERTEXT' ? Buffer.from(encVal) : null),
            onStatus: (keyword, args) => {
              if (keyword === 'PADDING') padding = args.trim() === '0' ? 0 : 1;
            },
            maxDataBytes: MAX_RESULT_BYTES,
            signal: ctx.signal,
          });
          try {
            return decryptedValue(r.data, padding);
          } finally {
            r.data.fill(0);
          }
        }),
    };
  }

  async close(): Promise<void> {
    this.#closed = true;
    for (const c of this.#idle.splice(0)) c.close();
  }

  /**
   * One operation on an extra-socket connection from the pool. A pooled connection the agent
   * has since dropped (agent restarted) fails at RESET, before anything of the request was
   * sent, and is then replaced once.
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
      try {
        await conn.transact('RESET', { timeoutMs: QUERY_TIMEOUT_MS });
      } catch (e) {
        conn.close();
        if (pooled && attempt === 0) continue;
        throw agentError(e, true);
      }
      try {
        const result = await work(conn);
        this.#release(conn);
        return result;
      } catch (e) {
        // An ERR from the agent leaves the connection usable; anything else closed it.
        this.#release(conn);
        throw agentError(e, conn.closed);
      }
    }
  }

  #release(conn: AgentConnection): void {
    if (this.#closed || conn.closed || this.#idle.length >= MAX_IDLE_CONNECTIONS) conn.close();
    else this.#idle.push(conn);
  }

  /** Changes of the keyring or the agent's key directory show in these modification times. */
  async #changeStamp(): Promise<string> {
    const home = this.dirs.homedir;
    const files = ['pubring.kbx', 'pubring.gpg', 'private-keys-v1.d'];
    const times = await Promise.all(
      files.map((f) =>
        stat(path.join(home, f)).then(
          (s) => `${s.mtimeMs}/${s.size}`,
          () => '-',
        ),
      ),
    );
    return times.join(',');
  }

  async #read(stamp: string): Promise<Inventory> {
    let inv: Inventory;
    try {
      const agentKeys = await this.#agentKeys();
      inv = agentKeys.size === 0 ? EMPTY : await this.#withCertificates(agentKeys);
    } catch {
      // An agent that is not running (yet) or a keyring gpg cannot read: no keys from here, and
      // the next refresh tries again.
      inv = EMPTY;
    }
    this.#inventory = inv;
    this.#stamp = stamp;
    this.#readAt = Date.now();
    return inv;
  }

  /** KEYINFO --list on the normal socket: all keys, card stubs included (works on 2.2 and 2.4). */
  async #agentKeys(): Promise<Map<string, AgentKeyInfo>> {
    const conn = await AgentConnection.open(this.dirs.agentSocket, 'normal', this.#opts.onCommand);
    try {
      const r = await conn.transact('KEYINFO --list', { timeoutMs: QUERY_TIMEOUT_MS });
      const out = new Map<string, AgentKeyInfo>();
      for (const s of r.status) {
        if (s.keyword !== 'KEYINFO') continue;
        const info = parseKeyInfoArgs(s.args);
        if (info && info.type !== '-' && !info.flags.includes('D')) out.set(info.keygrip, info);
      }
      return out;
    } finally {
      conn.close();
    }
  }

  async #withCertificates(agentKeys: Map<string, AgentKeyInfo>): Promise<Inventory> {
    const bytes = await exportPublicKeys(this.#tools);
    if (bytes.length === 0) return EMPTY;
    const certs = await openpgp.readKeys({ binaryKeys: bytes });
    const keys: KeyEntry[] = [];
    const certificates: Certificate[] = [];
    for (const cert of certs) {
      let any = false;
      for (const sub of [undefined, ...cert.getSubkeys()]) {
        const part = describePart(cert, sub);
        if (!part.keygrip || !part.publicKey) continue;
        const info = agentKeys.get(part.keygrip);
        if (!info) continue;
        any = true;
        const entry: KeyEntry = {
          keygrip: part.keygrip,
          fingerprint: part.fingerprint,
          primaryFingerprint: part.primaryFingerprint,
          algorithm: part.algorithm,
          usage: part.usage,
          publicKey: publicKeySexp(part.publicKey),
          protection: info.protection,
        };
        if (info.type === 'T') {
          entry.card = { serialNo: info.serialNo ?? '-', idStr: info.idStr ?? '-' };
        }
        keys.push(entry);
      }
      if (any) {
        certificates.push({
          fingerprint: cert.getFingerprint().toUpperCase(),
          userIds: cert.getUserIDs(),
          armored: cert.armor(),
        });
      }
    }
    return { keys, certificates };
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
