// The config.toml settings that bound what a remote side may ask of the holder (see
// workstation/holder/request-limits.ts for what each limit does and why its default).

import { z } from 'zod';
import { DEFAULT_REQUEST_LIMITS, type RequestLimits } from '../holder/request-limits.js';

const count = (max: number) => z.int().min(1).max(max);

/** Merged into config.toml's top level. */
export const limitsSchemaShape = {
  'max-requests-per-link': count(4096).optional(),
  'max-confirmations-waiting': count(1024).optional(),
  'token-rate': count(1_000_000).optional(),
  'token-burst': count(1_000_000).optional(),
  'key-rate': count(1_000_000).optional(),
  'key-burst': count(1_000_000).optional(),
};

type LimitsInput = { [K in keyof typeof limitsSchemaShape]?: number };

export function limitsFromFile(c: LimitsInput): RequestLimits {
  const d = DEFAULT_REQUEST_LIMITS;
  return {
    requestsPerLink: c['max-requests-per-link'] ?? d.requestsPerLink,
    promptsPerOrigin: c['max-confirmations-waiting'] ?? d.promptsPerOrigin,
    token: {
      perMinute: c['token-rate'] ?? d.token.perMinute,
      burst: c['token-burst'] ?? d.token.burst,
    },
    key: { perMinute: c['key-rate'] ?? d.key.perMinute, burst: c['key-burst'] ?? d.key.burst },
  };
}

export { DEFAULT_REQUEST_LIMITS, type RequestLimits };
