// The page's token section: the tokens this holder issued (the registry `keytether token list`
// reads), revoke, and create. Creating goes through the same createToken as `keytether token
// create`, so the page and the CLI refuse the same input with the same sentence; the token text,
// secret included, is in that one response only (no-store, like every answer here) and never
// again: the registry keeps a hash of the secret.

import type { FastifyInstance } from 'fastify';
import { z } from 'zod';
import { MAX_LABEL_CHARS, MAX_TOKEN_KEYS, TOKEN_ID_RE } from '../../protocol/token.js';
import { parseDuration } from '../../system/flag-duration.js';
import { UsageError, UserError } from '../../system/user-error.js';
import type { Config } from '../home/config.js';
import { Keystore } from '../keystore/index.js';
import { createToken } from '../tokens/create.js';
import { nameableKeys, sshAgentKeys } from '../tokens/token-keys.js';
import { listedToken, TokenRegistry } from '../tokens/tokens.js';
import { CSRF_HEADER, type WebGuard } from './guard.js';

/** What the agent issues tokens with: its own config, so a token names keys it serves. */
export interface TokenIssuing {
  config: Config;
  gnupgHome?: string;
  version: string;
}

// Field names are the CLI's flags, so createToken's sentences (which name --ttl, --ops) read
// right on the page too. Strings throughout: the form sends what was typed, parsed here.
const CreateBody = z
  .object({
    // Empty is createToken's to refuse, with the sentence naming --key.
    key: z.array(z.string().max(200)).max(MAX_TOKEN_KEYS),
    ops: z.string().min(1).max(64),
    ttl: z.string().max(32).optional(),
    maxUses: z.string().max(32).optional(),
    label: z
      .string()
      .max(MAX_LABEL_CHARS + 1)
      .optional(),
    relay: z.string().max(1100).optional(),
  })
  .strict();

async function withRegistry<T>(home: string, f: (r: TokenRegistry) => Promise<T>): Promise<T> {
  const registry = await TokenRegistry.open(home);
  try {
    return await f(registry);
  } finally {
    await registry.close();
  }
}

const blankToUndefined = (s: string | undefined) =>
  s === undefined || s.trim() === '' ? undefined : s.trim();

export function tokenRoutes(
  app: FastifyInstance,
  o: { guard: WebGuard; home: string; issuing?: TokenIssuing },
): void {
  const sessionOf = (req: unknown) => (req as { session?: string }).session!;
  const spent = (req: { headers: Record<string, unknown> }) => {
    const token = req.headers[CSRF_HEADER];
    return typeof token === 'string' && o.guard.spend(token, sessionOf(req));
  };

  app.get('/api/tokens', async () =>
    withRegistry(o.home, async (r) => (await r.list()).map(listedToken)),
  );

  app.post('/api/tokens/:id/revoke', async (req, reply) => {
    if (!spent(req)) {
      return reply.code(403).send({ error: 'this action was used already or has no token' });
    }
    const id = String((req.params as { id: string }).id);
    if (!TOKEN_ID_RE.test(id)) return reply.code(400).send({ error: 'not a token id' });
    const done = await withRegistry(o.home, (r) => r.revoke(id));
    if (!done) return reply.code(404).send({ error: `no token ${id} was issued by this holder` });
    return { ok: true };
  });

  /** The keys a token may name, for the form's suggestions (what --key accepts). */
  app.get('/api/tokens/keys', async (_req, reply) => {
    if (!o.issuing) return reply.code(503).send({ error: 'this page cannot issue tokens' });
    try {
      const ks = await Keystore.open(o.home);
      const keys = [
        ...(await nameableKeys(ks.list(), o.issuing.config, o.issuing.gnupgHome)),
        ...(await sshAgentKeys(o.issuing.config)),
      ];
      return keys.map((k) => ({ fingerprint: k.fingerprint, usage: k.usage }));
    } catch (e) {
      return reply.code(503).send({ error: userSentence(e) ?? 'the keys could not be listed' });
    }
  });

  app.post('/api/tokens', async (req, reply) => {
    if (!spent(req)) {
      return reply.code(403).send({ error: 'this action was used already or has no token' });
    }
    if (!o.issuing) return reply.code(503).send({ error: 'this page cannot issue tokens' });
    const body = CreateBody.safeParse(req.body);
    if (!body.success) {
      const where = body.error.issues[0]?.path.map(String).join('.') || 'form';
      return reply.code(400).send({ error: `the token form's ${where} is not valid` });
    }
    const f = body.data;
    try {
      const ttl = blankToUndefined(f.ttl);
      const maxUses = blankToUndefined(f.maxUses);
      const issued = await createToken(
        o.home,
        o.issuing.config,
        {
          keys: f.key.map((k) => k.trim()).filter((k) => k !== ''),
          ops: f.ops,
          ttlMs: ttl === undefined ? undefined : parseDuration(ttl),
          maxUses: maxUses === undefined ? undefined : maxUsesArg(maxUses),
          label: f.label === undefined || f.label === '' ? undefined : f.label,
          relay: blankToUndefined(f.relay),
          gnupgHome: o.issuing.gnupgHome,
        },
        { version: o.issuing.version },
      );
      return { token: issued.text, id: issued.id, notes: issued.notes };
    } catch (e) {
      const sentence = userSentence(e);
      if (sentence === undefined) {
        return reply.code(500).send({ error: 'the token could not be issued; see the agent' });
      }
      return reply.code(400).send({ error: sentence });
    }
  });
}

function maxUsesArg(text: string): number {
  if (!/^\d{1,15}$/.test(text) || Number(text) < 1) {
    throw new UsageError(`--max-uses: '${text.slice(0, 32)}' is not a whole number of at least 1`);
  }
  return Number(text);
}

/** A refusal meant for the user (its message says what to change), or undefined for a fault. */
function userSentence(e: unknown): string | undefined {
  return e instanceof UserError ? e.message : undefined;
}
