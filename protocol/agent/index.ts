// The one gpg-agent command set. Every front (the workstation's local socket with the in-process
// holder, the server-side facade with a tunnel-backed holder) serves it with serveAgent(); only
// the KeyHolder and the per-connection options differ.

import type { Duplex } from 'node:stream';
import { serveAssuan } from '../assuan/index.js';
import type { AssuanCommandContext, AssuanHandler, ClientDeadlines } from '../assuan/index.js';
import { ErrorCode, GpgError, toGpgError } from '../gpg-error.js';
import type { KeyHolder, Requester } from '../keyholder.js';
import { parseArgs, paramError } from './args.js';
import { FORBIDDEN_COMMANDS } from './forbidden.js';
import { CONTENT_COMMAND, registerContent, TaggedContent, type ContentStore } from './content.js';
import { getInfo } from './getinfo.js';
import { haveKey, keyInfo, readKey, type KeyCommandContext } from './keys.js';
import { applyOption } from './options.js';
import {
  pkDecrypt,
  pkSign,
  setHash,
  setKey,
  setKeyDescription,
  type OperationContext,
} from './operations.js';
import { AgentSession } from './session.js';
import { AGENT_VERSION, newestVersion } from './version.js';

export { FORBIDDEN_COMMANDS } from './forbidden.js';
export {
  CONTENT_COMMAND,
  CONTENT_FILE_TAG,
  CONTENT_TAG,
  ContentStore,
  contentKind,
} from './content.js';
export type { ObjectCollector, PayloadFileReader, RepoLocation } from './content.js';

export { AGENT_VERSION, compareVersions, newestVersion } from './version.js';

export interface AgentEvent {
  command: string;
  error?: GpgError;
}

export interface AgentSessionOptions {
  holder: KeyHolder;
  /**
   * Who is on the other end of this connection; copied into every sign/decrypt request. A
   * promise when finding out takes time (the facade's process lookup): it is awaited only by the
   * first PKSIGN/PKDECRYPT, so gpg's greeting and chatter never wait for it. A function starts
   * the finding out only when the connection first names a key: a connection that never does
   * (the shim's KEYTETHER_CONTENT, a GETINFO probe) costs nothing. It must not reject.
   */
  requester: Requester | Promise<Requester> | (() => Promise<Requester>);
  /** Emulate the extra socket (§3): env OPTIONs → Forbidden, GETINFO restricted → OK. */
  restricted?: boolean;
  /**
   * The least `GETINFO version` reports (default AGENT_VERSION); the holder's real gpg-agent
   * version (Inventory.agentVersion) is reported instead when it is newer.
   */
  version?: string;
  peerPid?: number;
  /** Allow `HAVEKEY --list` / `KEYINFO --list` (gpg 2.4's fast path). Default true. */
  allowKeyList?: boolean;
  /**
   * Payloads `keytether git-sign` hands over, attached to the PKSIGN of the gpg connection that
   * names them (content.ts). Without it, KEYTETHER_CONTENT is an unknown command, as at gpg-agent.
   */
  content?: ContentStore;
  /** One event per command, for the caller's log. Carries command names and errors only. */
  onEvent?: (e: AgentEvent) => void;
  /** Default AGENT_CLIENT_DEADLINES. */
  deadlines?: ClientDeadlines;
  /** One sentence when a client was cut for keeping us waiting (see ClientDeadlines). */
  onCut?: (sentence: string) => void;
}

/**
 * gpg sends its first command the moment it reads the greeting and each line in one write, so
 * 30 s for the first command (or an inquiry's answer) and 10 s to finish a started line leave a
 * slow machine two orders of magnitude of room, and cut a client that connects and dribbles.
 */
export const AGENT_CLIENT_DEADLINES: Readonly<ClientDeadlines> = Object.freeze({
  idleMs: 30_000,
  lineMs: 10_000,
});

/** libgpg-error GPG_ERR_NOT_TRUSTED, what gpg-agent answers ISTRUSTED for unknown roots. */
const NOT_TRUSTED = 98;

/** SCD subcommands the 2.4 extra socket lets through (we have no card daemon either way). */
const RESTRICTED_SCD = ['SERIALNO', 'GETINFO', 'GETATTR', 'KEYINFO'];

export function serveAgent(stream: Duplex, opts: AgentSessionOptions): Promise<void> {
  const session = new AgentSession(opts.restricted ?? false);
  const keys: KeyCommandContext = {
    holder: opts.holder,
    session,
    allowKeyList: opts.allowKeyList ?? true,
  };
  let requester: Promise<Requester> | undefined;
  const requesterNow = (): Promise<Requester> =>
    (requester ??=
      typeof opts.requester === 'function' ? opts.requester() : Promise.resolve(opts.requester));
  const tagged = opts.content ? new TaggedContent(opts.content) : undefined;
  const ops: OperationContext = {
    holder: opts.holder,
    session,
    get requester() {
      return requesterNow();
    },
    ...(tagged ? { content: tagged } : {}),
  };
  /**
   * A key is named: what will sign or decrypt is near, so who asks, and the payload the
   * connection is tagged with, are looked up from now on.
   */
  const naming =
    (handler: AssuanHandler): AssuanHandler =>
    (ctx) => {
      void requesterNow();
      tagged?.prefetch(session.env.get('PINENTRY_USER_DATA'));
      return handler(ctx);
    };
  const version = opts.version ?? AGENT_VERSION;
  // GETINFO version must never fail (gpg aborts), so a holder that cannot answer leaves the floor.
  const reportedVersion = async (): Promise<string> => {
    let agent: string | undefined;
    try {
      agent = (await opts.holder.inventory()).agentVersion;
    } catch {
      agent = undefined;
    }
    return newestVersion(version, agent) ?? AGENT_VERSION;
  };

  const report = (e: AgentEvent) => {
    try {
      opts.onEvent?.(e);
    } catch {
      // A logging callback must not change what gpg sees.
    }
  };

  // Every error leaves as a GpgError; anything else (a bug, a dropped tunnel) becomes GENERAL
  // without its text, which might describe secret material.
  const wrap =
    (command: string, handler: AssuanHandler): AssuanHandler =>
    async (ctx) => {
      try {
        const r = await handler(ctx);
        report({ command });
        return r;
      } catch (e) {
        const err = toGpgError(e);
        report({ command, error: err });
        throw err;
      }
    };

  const forbidden: AssuanHandler = () => {
    throw new GpgError(ErrorCode.FORBIDDEN);
  };

  const handlers: Record<string, AssuanHandler> = {
    GETINFO: async (ctx) => {
      const asksVersion = parseArgs(ctx.args).words[0] === 'version';
      const v = asksVersion ? await reportedVersion() : version;
      const data = getInfo(ctx.args, { session, version: v, pid: process.pid });
      // A list goes out one D line per item, as the agent's assuan_send_data flushes do.
      for (const item of typeof data === 'string' ? [data] : (data ?? [])) ctx.sendData(item);
    },
    HAVEKEY: naming((ctx) => haveKey(ctx, keys)),
    KEYINFO: naming((ctx) => keyInfo(ctx, keys)),
    READKEY: naming((ctx) => readKey(ctx, keys)),
    SIGKEY: naming((ctx) => setKey(ctx, session)),
    SETKEY: naming((ctx) => setKey(ctx, session)),
    SETKEYDESC: (ctx) => setKeyDescription(ctx, session),
    SETHASH: (ctx) => setHash(ctx, session),
    PKSIGN: (ctx) => pkSign(ctx, ops),
    PKDECRYPT: (ctx) => pkDecrypt(ctx, ops),
    [CONTENT_COMMAND]: (ctx) => registerContent(ctx, opts.content),
    SCD: (ctx) => {
      const sub = (parseArgs(ctx.args).words[0] ?? '').toUpperCase();
      if (session.restricted && !RESTRICTED_SCD.includes(sub)) {
        throw new GpgError(ErrorCode.FORBIDDEN);
      }
      // What gpg-agent 2.2/2.4 answers when it cannot start scdaemon; gpg reads it as "no card".
      throw new GpgError(ErrorCode.NO_SCDAEMON);
    },
    GETEVENTCOUNTER: (ctx) => {
      if (session.restricted) throw new GpgError(ErrorCode.FORBIDDEN);
      ctx.sendStatus('EVENTCOUNTER', '0', '0', '0');
    },
    ISTRUSTED: (ctx: AssuanCommandContext) => {
      // Root-certificate trust is a gpgsm matter; keytether's list is empty.
      const fpr = ctx.args.trim();
      if (!/^([0-9A-Fa-f]{40}|[0-9A-Fa-f]{32})$/.test(fpr)) throw paramError('invalid fingerprint');
      throw new GpgError(NOT_TRUSTED);
    },
    LISTTRUSTED: () => {
      if (session.restricted) throw new GpgError(ErrorCode.FORBIDDEN);
    },
  };
  for (const name of FORBIDDEN_COMMANDS) handlers[name] = forbidden;

  const commands: Record<string, AssuanHandler> = {};
  for (const [name, handler] of Object.entries(handlers)) commands[name] = wrap(name, handler);

  return serveAssuan(stream, {
    commands,
    peerPid: opts.peerPid,
    deadlines: opts.deadlines ?? AGENT_CLIENT_DEADLINES,
    ...(opts.onCut ? { onCut: opts.onCut } : {}),
    onOption: (name, value) => {
      try {
        applyOption(session, name, value);
        report({ command: 'OPTION' });
      } catch (e) {
        const err = toGpgError(e);
        report({ command: 'OPTION', error: err });
        throw err;
      }
    },
    onReset: () => {
      session.reset();
      report({ command: 'RESET' });
    },
  });
}
