// Issuing a token: what `keytether token create` and the approval page's token form both do, with
// the same checks and the same sentences. The scope is decided here (which keys, which
// operations, how long, how many uses, which relay); the registry only records and signs it.

import path from 'node:path';
import { isDisplaySafeLine } from '../../protocol/display-text.js';
import { MAX_LABEL_CHARS, MAX_TOKEN_KEYS, parseToken, type TokenOp } from '../../protocol/token.js';
import { UsageError } from '../../system/user-error.js';
import { requestStatus } from '../control/control.js';
import { formatDuration, type Config } from '../home/config.js';
import { loadOrCreateIdentity } from '../home/identity.js';
import { Keystore } from '../keystore/index.js';
import { nameableKeys, resolveKeyName, sshAgentKeys, tokenKeys } from './token-keys.js';
import { TokenRegistry } from './tokens.js';

export const DEFAULT_TTL_MS = 3_600_000;

export interface TokenRequest {
  /** The user's names for keys: fingerprints, key ids, SSH `SHA256:` fingerprints. */
  keys: string[];
  /** Comma-separated: sign, decrypt, ssh-sign. */
  ops: string;
  ttlMs?: number;
  maxUses?: number;
  label?: string;
  relay?: string;
  /** GnuPG home of the gpg-agent back end, over the config's. */
  gnupgHome?: string;
}

export interface IssuedToken {
  /** The token itself, secret included: shown once, never stored (the registry keeps a hash). */
  text: string;
  id: string;
  /** What was decided for the user (the relay chosen, a primary replaced by its subkeys). */
  notes: string[];
}

export function parseOps(text: string): TokenOp[] {
  const ops = text.split(',').map((s) => s.trim());
  for (const op of ops) {
    if (op !== 'sign' && op !== 'decrypt' && op !== 'ssh-sign') {
      throw new UsageError(
        `'${op.slice(0, 32)}' is not an operation; use --ops with sign, decrypt, ssh-sign or a comma-separated list of them (sign,ssh-sign)`,
      );
    }
  }
  return [...new Set(ops as TokenOp[])];
}

function checkRelayUrl(url: string): string {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new UsageError(
      `'${url.slice(0, 200)}' is not a URL; give the relay's base URL, e.g. https://relay.example:7878`,
    );
  }
  if (
    !['http:', 'https:', 'ws:', 'wss:'].includes(u.protocol) ||
    url.length > 1024 ||
    /\s/.test(url)
  ) {
    throw new UsageError(`'${url.slice(0, 200)}' is not an http(s):// or ws(s):// relay URL`);
  }
  return url;
}

// A running agent's relays are the ones it is connected to right now, so a token for them works
// at once; config.toml is next, for tokens made while no agent runs. Either way the user is told,
// since a token bound to the wrong relay only shows up as a failure in CI.
async function chooseRelay(
  flag: string | undefined,
  home: string,
  config: Config,
  version: string,
  note: (s: string) => void,
): Promise<string> {
  if (flag !== undefined) return checkRelayUrl(flag);
  const agent = await requestStatus(home, { version, timeoutMs: 2000 }).catch(() => undefined);
  const fromAgent = agent?.relays[0]?.url;
  if (fromAgent !== undefined) {
    note(
      `relay ${fromAgent} is the one the running agent (pid ${agent!.pid}) uses; give --relay URL for another`,
    );
    return checkRelayUrl(fromAgent);
  }
  // One entry may be "URL,URL": instances of one relay, which a token reaches through any of
  // them; it is bound to the first.
  const first = config.relay[0]?.split(',')[0]?.trim();
  if (first === undefined || first === '') {
    throw new UsageError(
      'no relay is configured; give --relay URL (the URL `keytether relay` printed) or add relay = ["URL"] to config.toml',
    );
  }
  note(
    `relay ${first} is the first in ${config.file ?? 'config.toml'}; give --relay URL for another`,
  );
  return checkRelayUrl(first);
}

function checkLabel(label: string): void {
  if (label.length > MAX_LABEL_CHARS) {
    throw new UsageError(`the label is longer than ${MAX_LABEL_CHARS} characters`);
  }
  if (!isDisplaySafeLine(label)) {
    throw new UsageError(
      'the label must not contain control characters, line breaks or bidi/format characters',
    );
  }
}

/**
 * Issues a token for REQ under HOME with CONFIG (the holder's, back-end flags merged). Every
 * refusal is a UsageError or UserError whose message says what to change; nothing is recorded
 * unless the token is issued.
 */
export async function createToken(
  home: string,
  config: Config,
  req: TokenRequest,
  o: { version: string },
): Promise<IssuedToken> {
  const ops = parseOps(req.ops);
  if (req.keys.length === 0) throw new UsageError('name at least one key for the token (--key)');
  if (req.keys.length > MAX_TOKEN_KEYS) {
    throw new UsageError(`a token can name at most ${MAX_TOKEN_KEYS} keys`);
  }
  if (req.label !== undefined) checkLabel(req.label);
  const ttlMs = req.ttlMs ?? DEFAULT_TTL_MS;
  if (ttlMs > config.tokenMaxTtlMs) {
    const max = formatDuration(config.tokenMaxTtlMs);
    throw new UsageError(
      `--ttl is longer than the ${max} a token may live; give a shorter --ttl or raise token-max-ttl (now "${max}") in ${config.file ?? path.join(home, 'config.toml')}`,
    );
  }
  const notes: string[] = [];
  const relay = await chooseRelay(req.relay, home, config, o.version, (n) => notes.push(n));
  const ks = await Keystore.open(home);
  const listed = [
    ...(await nameableKeys(ks.list(), config, req.gnupgHome)),
    ...(await sshAgentKeys(config)),
  ];
  const keys = [
    ...new Set(req.keys.flatMap((k) => tokenKeys(resolveKeyName(k, listed), listed, ops, notes))),
  ];
  if (keys.length > MAX_TOKEN_KEYS) {
    throw new UsageError(
      `these keys stand for ${keys.length} subkeys; a token can name at most ${MAX_TOKEN_KEYS}`,
    );
  }
  const identity = await loadOrCreateIdentity(home);
  const registry = await TokenRegistry.open(home, { identity });
  try {
    const text = await registry.issue(
      { keys, ops, ttlMs, maxUses: req.maxUses, label: req.label, relay },
      identity,
    );
    const parsed = parseToken(text);
    return { text, id: parsed.ok ? parsed.token.payload.tid : '', notes };
  } finally {
    await registry.close();
  }
}
