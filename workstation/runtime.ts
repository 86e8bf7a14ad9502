// Assembles one holder from its configuration: the pieces every front of the workstation shares
// (one keystore, one unlock cache, one pinentry lock, one audit chain), so that `keytether agent`
// and an in-process `keytether ssh` behave the same.

import path from 'node:path';
import { AuditLog } from './audit.js';
import { ApprovalMemory } from './approvals.js';
import type { Config } from './config.js';
import type { UnlockedKey } from './crypto/index.js';
import { Holder } from './holder.js';
import { ensureHome } from './home.js';
import { Keystore } from './keystore/index.js';
import { Pinentry } from './pinentry.js';
import { UnlockCache } from './unlock-cache.js';

export interface HolderRuntime {
  holder: Holder;
  keystore: Keystore;
  cache: UnlockCache<UnlockedKey>;
  audit: AuditLog;
  home: string;
  close(): Promise<void>;
}

export async function openHolderRuntime(home: string, config: Config): Promise<HolderRuntime> {
  await ensureHome(home);
  const keystore = await Keystore.open(home);
  const audit = await AuditLog.open(path.join(home, 'audit.jsonl'));
  const cache = new UnlockCache<UnlockedKey>({
    defaultTtlMs: config.defaultCacheTtlMs,
    maxTtlMs: config.maxCacheTtlMs,
  });
  const pinentry = new Pinentry({
    program: config.pinentryProgram ?? 'pinentry',
    timeoutMs: config.pinentryTimeoutMs,
    title: 'keytether',
  });
  const holder = new Holder({
    keystore,
    policy: config.policy,
    pinentry,
    audit,
    cache,
    approvals: new ApprovalMemory(),
  });
  return {
    holder,
    keystore,
    cache,
    audit,
    home,
    async close() {
      // Unlocked keys die with the process, but zero them deliberately rather than trusting GC.
      cache.clear();
      await audit.close();
    },
  };
}
