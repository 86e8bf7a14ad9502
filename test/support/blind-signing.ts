// Transport tests sign through remote fronts with gpg's default key, a sign+certify primary.
// Remote blind signatures by certify-capable keys are refused by default (clear signing); these
// tests are about the transport, not about what is signed, so their holders allow blind signing
// explicitly. test/clear-sign.test.ts covers the default.

import type { PolicyRule } from '../../workstation/policy/policy.js';

/** For `keytether agent` / `keytether ssh` command lines. */
export const ALLOW_BLIND_FLAG = ['--policy', 'clear-sign=off'] as const;

/** For configs handed to openHolderRuntime; place it anywhere among the rules. */
export const ALLOW_BLIND_RULE: PolicyRule = { clearSign: 'off', origin: 'test: blind signing' };
