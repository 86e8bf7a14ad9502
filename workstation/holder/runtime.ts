// Assembles one holder from its configuration: the pieces every front of the workstation shares
// (one keystore, one unlock cache, one pinentry lock, one audit chain), so that `keytether agent`
// and an in-process `keytether ssh` behave the same.

import path from 'node:path';
import { AuditError, AuditLog } from '../audit/audit.js';
import { ApprovalMemory } from '../policy/approvals.js';
import { ApprovalBroker } from '../approvals/broker.js';
import { RequestLimiter } from './request-limits.js';
import type { Config } from '../home/config.js';
import type { UnlockedKey } from '../crypto/index.js';
import { Holder } from './holder.js';
import { ensureHome } from '../home/home.js';
import { Keystore } from '../keystore/index.js';
import { Pinentry } from '../pinentry/pinentry.js';
import { UnlockCache } from './unlock-cache.js';
import type { Backend } from '../backends/backend.js';
import { BuiltinBackend } from '../backends/builtin.js';
import { GpgAgentBackend } from '../backends/gpg-agent.js';
import { SshAgentBackend } from '../backends/ssh-agent.js';
import type { CommandObserver } from '../backends/agent-connection.js';
import { UserError } from '../../system/user-error.js';

export interface HolderRuntime {
  holder: Holder;
  keystore: Keystore;
  cache: UnlockCache<UnlockedKey>;
  audit: AuditLog;
  /** Where confirmations wait: the pinentry, approval pages and `keytether approve` answer. */
  broker: ApprovalBroker;
  home: string;
  /** Set when the workstation's gpg-agent serves keys too (backend gpg-agent or auto). */
  gpgAgent: GpgAgentBackend | undefined;
  close(): Promise<void>;
}

export interface HolderRuntimeOptions {
  /**
   * GNUPGHOME of the workstation gpg-agent back end (the --gnupg-home flag); default: the
   * config's `gnupg-home`, else the environment's.
   */
  gnupgHome?: string;
  /** Test hook: every command line the gpg-agent back end sends. */
  onGpgAgentCommand?: CommandObserver;
}

async function openGpgAgent(
  config: Config,
  opts: HolderRuntimeOptions,
): Promise<GpgAgentBackend | undefined> {
  if (config.backend === 'builtin') return undefined;
  const gnupgHome = opts.gnupgHome ?? config.gnupgHome;
  const backendOpts = {
    ...(gnupgHome !== undefined ? { gnupgHome } : {}),
    ...(opts.onGpgAgentCommand ? { onCommand: opts.onGpgAgentCommand } : {}),
  };
  if (config.backend === 'auto') {
    // Nothing is started or connected to unless that GnuPG home holds secret keys, and no GnuPG
    // on this machine at all means keytether's own keys only, without a word.
    return GpgAgentBackend.open({ ...backendOpts, onlyWithKeys: true }).catch(() => undefined);
  }
  try {
    return await GpgAgentBackend.open({ ...backendOpts, requireAgent: true });
  } catch (e) {
    throw new UserError(
      `cannot reach the workstation's gpg-agent (${(e as Error).message}); start it with "gpgconf --launch gpg-agent" or use --backend builtin`,
    );
  }
}

export async function openHolderRuntime(
  home: string,
  config: Config,
  opts: HolderRuntimeOptions = {},
): Promise<HolderRuntime> {
  await ensureHome(home);
  const keystore = await Keystore.open(home);
  const gpgAgent = await openGpgAgent(config, opts);
  // Every refusal to open the log (in use, damaged, cut short, loose mode) is the user's to act on.
  const audit = await AuditLog.open(path.join(home, 'audit.jsonl'), {
    sync: config.auditSync,
  }).catch(async (e: unknown) => {
    await gpgAgent?.close();
    throw e instanceof AuditError ? new UserError(e.message) : e;
  });
  const cache = new UnlockCache<UnlockedKey>({
    defaultTtlMs: config.defaultCacheTtlMs,
    maxTtlMs: config.maxCacheTtlMs,
  });
  const pinentry = new Pinentry({
    program: config.pinentryProgram ?? 'pinentry',
    timeoutMs: config.pinentryTimeoutMs,
    title: 'keytether',
  });
  const backends: Backend[] = [];
  if (config.backend !== 'gpg-agent')
    backends.push(new BuiltinBackend({ keystore, pinentry, cache }));
  if (gpgAgent) backends.push(gpgAgent);
  if (config.sshAgentBackend !== undefined) {
    backends.push(new SshAgentBackend({ socket: config.sshAgentBackend }));
  }
  const broker = new ApprovalBroker({ pinentry, timeoutMs: config.pinentryTimeoutMs });
  const holder = new Holder({
    broker,
    backends,
    keystore,
    policy: config.policy,
    pinentry,
    audit,
    cache,
    approvals: new ApprovalMemory(),
    limiter: new RequestLimiter(config.limits),
  });
  return {
    holder,
    keystore,
    cache,
    audit,
    broker,
    home,
    gpgAgent,
    async close() {
      await gpgAgent?.close();
      // Unlocked keys die with the process, but zero them deliberately rather than trusting GC.
      cache.clear();
      await holder.flushRefusals().catch(() => undefined);
      await audit.close();
    },
  };
}
