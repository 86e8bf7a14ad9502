// Which keys the workstation's gpg-agent holds, as the gpg-agent back end serves them: KEYINFO
// --list on the agent's normal socket joined with the public keyring, re-read when the keyring or
// the agent's key directory changes and at least every refreshMs, and cached in between because
// every request asks for it.

import { readdir, stat } from 'node:fs/promises';
import path from 'node:path';
import { VERSION_RE } from '../../protocol/agent/version.js';
import type { Inventory } from '../../protocol/keyholder.js';
import { agentInventory } from './agent-inventory.js';
import { AgentConnection, type CommandObserver } from './agent-connection.js';
import { launchAgent, type AgentDirs, type GnupgTools } from './gpg-tools.js';
import { parseKeyInfoArgs, type AgentKeyInfo } from './keyinfo.js';

export interface AgentKeyListOptions {
  requireAgent?: boolean | undefined;
  onlyWithKeys?: boolean | undefined;
  refreshMs?: number | undefined;
  changeCheckMs?: number | undefined;
  onCommand?: CommandObserver | undefined;
}

export const QUERY_TIMEOUT_MS = 10_000;
const DEFAULT_REFRESH_MS = 5_000;
// How often the keyring's modification times are looked at. Every request asks for the inventory
// (to find its key), and three stat calls per request cost more than the signature's round trip
// once the machine is busy; a key imported into GnuPG shows up within this long (the keystore
// checks its directory at the same rate).
const STAMP_CHECK_MS = 1_000;

const EMPTY: Inventory = Object.freeze({ keys: [], certificates: [] }) as Inventory;

export class AgentKeyList {
  readonly #tools: GnupgTools;
  readonly #dirs: AgentDirs;
  readonly #opts: AgentKeyListOptions;
  #inventory: Inventory | undefined;
  #stamp = '';
  #readAt = 0;
  #stampAt = 0;
  #refreshing: Promise<Inventory> | undefined;
  /**
   * The inventory last built from certificates, and what it was built from (keyring stamp and
   * the agent's KEYINFO lines). A periodic refresh only asks the agent (one KEYINFO --list); the
   * keyring is exported and parsed again only when either changed — parsing hundreds of
   * certificates takes the main thread for ~100 ms.
   */
  #built: { from: string; inv: Inventory } | undefined;

  constructor(tools: GnupgTools, dirs: AgentDirs, opts: AgentKeyListOptions) {
    this.#tools = tools;
    this.#dirs = dirs;
    this.#opts = opts;
  }

  async inventory(): Promise<Inventory> {
    const now = Date.now();
    const fresh = now - this.#readAt < (this.#opts.refreshMs ?? DEFAULT_REFRESH_MS);
    if (
      this.#inventory &&
      fresh &&
      now - this.#stampAt < (this.#opts.changeCheckMs ?? STAMP_CHECK_MS)
    )
      return this.#inventory;
    if (this.#refreshing) return this.#refreshing;
    const stamp = await this.#changeStamp();
    this.#stampAt = now;
    if (this.#inventory && stamp === this.#stamp && fresh) return this.#inventory;
    this.#refreshing ??= this.#read(stamp).finally(() => (this.#refreshing = undefined));
    return this.#refreshing;
  }

  /** Changes of the keyring or the agent's key directory show in these modification times. */
  async #changeStamp(): Promise<string> {
    const home = this.#dirs.homedir;
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
      if (this.#opts.onlyWithKeys && !(await this.#hasSecretKeys())) {
        inv = EMPTY;
        this.#setInventory(inv, stamp);
        return inv;
      }
      const { keys: agentKeys, version } = await this.#agentKeys();
      const from = `${stamp}\n${[...agentKeys.values()]
        .map((k) => JSON.stringify(k))
        .sort()
        .join('\n')}`;
      if (agentKeys.size === 0) inv = EMPTY;
      else if (this.#built?.from === from) inv = this.#built.inv;
      else {
        inv = await this.#withCertificates(agentKeys);
        this.#built = { from, inv };
      }
      if (version !== undefined) inv = { ...inv, agentVersion: version };
    } catch {
      // An agent that is not running (yet) or a keyring gpg cannot read: no keys from here, and
      // the next refresh tries again.
      inv = EMPTY;
    }
    this.#setInventory(inv, stamp);
    return inv;
  }

  #setInventory(inv: Inventory, stamp: string): void {
    this.#inventory = inv;
    this.#stamp = stamp;
    this.#readAt = Date.now();
  }

  /** A `*.key` file in private-keys-v1.d: a key on disk or a smartcard stub. */
  async #hasSecretKeys(): Promise<boolean> {
    try {
      const names = await readdir(path.join(this.#dirs.homedir, 'private-keys-v1.d'));
      return names.some((n) => n.endsWith('.key'));
    } catch {
      return false;
    }
  }

  /**
   * KEYINFO --list on the normal socket: all keys, card stubs included (works on 2.2 and 2.4);
   * and the agent's version, which facades report to gpg when it is newer than their own.
   */
  async #agentKeys(): Promise<{ keys: Map<string, AgentKeyInfo>; version: string | undefined }> {
    let conn: AgentConnection;
    try {
      conn = await AgentConnection.open(this.#dirs.agentSocket, 'normal', this.#opts.onCommand);
    } catch (e) {
      // Not running (any more): start it as gpg would, when there are keys to serve.
      if (!this.#opts.requireAgent && !this.#opts.onlyWithKeys) throw e;
      await launchAgent(this.#tools);
      conn = await AgentConnection.open(this.#dirs.agentSocket, 'normal', this.#opts.onCommand);
    }
    try {
      const r = await conn.transact('KEYINFO --list', { timeoutMs: QUERY_TIMEOUT_MS });
      const out = new Map<string, AgentKeyInfo>();
      for (const s of r.status) {
        if (s.keyword !== 'KEYINFO') continue;
        const info = parseKeyInfoArgs(s.args);
        if (info && info.type !== '-' && !info.flags.includes('D')) out.set(info.keygrip, info);
      }
      let version: string | undefined;
      try {
        const v = await conn.transact('GETINFO version', { timeoutMs: QUERY_TIMEOUT_MS });
        const text = v.data.toString('latin1').trim();
        if (VERSION_RE.test(text)) version = text;
      } catch {
        // The keys are still served; gpg then hears keytether's own version.
      }
      return { keys: out, version };
    } finally {
      conn.close();
    }
  }

  /** The inventory for AGENTKEYS, READKEY asked on one normal-socket connection when needed. */
  async #withCertificates(agentKeys: Map<string, AgentKeyInfo>): Promise<Inventory> {
    let conn: AgentConnection | undefined;
    try {
      return await agentInventory(this.#tools, agentKeys, async (grip) => {
        conn ??= await AgentConnection.open(this.#dirs.agentSocket, 'normal', this.#opts.onCommand);
        return (await conn.transact(`READKEY ${grip}`, { timeoutMs: QUERY_TIMEOUT_MS })).data;
      });
    } finally {
      conn?.close();
    }
  }
}
