// The relay's HTTP surface as an OpenAPI 3.1 document, for operators who put it behind a load
// balancer, a WAF or an API gateway. The WebSocket control messages' schemas are generated from
// the same zod schemas the relay parses them with, and a test checks the document against the
// routes the relay registers and the answers it gives, so the document cannot drift.

import { z } from 'zod';
import { RELAY_AUTH_CONTEXT } from '../../protocol/relay/identity.js';
import { CloseCode, FacadeTokenSchema, HolderAuthSchema } from './wire.js';

/** What GET /healthz answers: 200 and ok while the relay runs; with --redis, 503 without Redis. */
export const HealthSchema = z.strictObject({
  ok: z.boolean(),
  redis: z
    .enum(['up', 'unreachable'])
    .optional()
    .describe('with --redis only: whether this instance reaches the shared Redis'),
});

// What the relay sends on the WebSockets. It builds them with JSON.stringify; these schemas are
// their documentation and the test's check of what it really sends.
const ChallengeSchema = z.strictObject({
  type: z.literal('challenge'),
  nonce: z
    .string()
    .describe(
      `32 random bytes, base64url; HolderAuth signs ${JSON.stringify(RELAY_AUTH_CONTEXT)} ‖ nonce`,
    ),
});
const HolderOkSchema = z.strictObject({
  type: z.literal('ok'),
  hid: z.string().describe("the holder id derived from the holder's identity key"),
});
const FacadeOkSchema = z.strictObject({ type: z.literal('ok') });

function schema(s: z.ZodType): Record<string, unknown> {
  const json = z.toJSONSchema(s) as Record<string, unknown>;
  // OpenAPI 3.1's dialect is JSON Schema 2020-12 already; a $schema per component is noise.
  delete json.$schema;
  return json;
}

const closeCodes = Object.fromEntries(
  Object.entries(CloseCode).map(([name, code]) => [String(code), name]),
);

function websocketEndpoint(role: 'holder' | 'facade'): Record<string, unknown> {
  const flow =
    role === 'holder'
      ? 'The relay sends `Challenge`; the holder answers `HolderAuth` (its Ed25519 identity key and a ' +
        'signature over the nonce); the relay answers `HolderOk`. After that every message is a ' +
        'binary mux frame (kind byte, stream id uint32 big-endian, payload) carrying sealed ' +
        'facade streams.'
      : 'The facade sends `FacadeToken` (the public part of a token: never its secret); the relay ' +
        'checks its signature, expiry and rate and answers `FacadeOk`. After that every message is ' +
        "binary: sealed tunnel bytes the relay passes to the token's holder unread.";
  return {
    get: {
      operationId: role === 'holder' ? 'holderWebSocket' : 'facadeWebSocket',
      summary: `WebSocket for ${role === 'holder' ? 'holders (workstations)' : 'facades (servers, CI jobs)'}`,
      description: `${flow} Refusals close the socket with a code from x-keytether-close-codes.`,
      parameters: [
        { name: 'Upgrade', in: 'header', required: true, schema: { const: 'websocket' } },
        { name: 'Connection', in: 'header', required: true, schema: { type: 'string' } },
        { name: 'Sec-WebSocket-Key', in: 'header', required: true, schema: { type: 'string' } },
        { name: 'Sec-WebSocket-Version', in: 'header', required: true, schema: { const: '13' } },
      ],
      responses: {
        '101': { description: 'Switching Protocols: the WebSocket is open' },
        '426': {
          description: 'Upgrade Required: a plain HTTP request on a WebSocket endpoint',
          content: { 'application/json': { schema: { $ref: '#/components/schemas/Error' } } },
        },
      },
      'x-keytether-messages': {
        receives: [
          { $ref: `#/components/schemas/${role === 'holder' ? 'HolderAuth' : 'FacadeToken'}` },
        ],
        sends: [
          role === 'holder'
            ? { $ref: '#/components/schemas/Challenge' }
            : { $ref: '#/components/schemas/FacadeOk' },
          ...(role === 'holder' ? [{ $ref: '#/components/schemas/HolderOk' }] : []),
        ],
      },
    },
  };
}

/** The document; VERSION is keytether's. */
export function relayOpenApi(version: string): Record<string, unknown> {
  return {
    openapi: '3.1.0',
    info: {
      title: 'keytether relay',
      version,
      description:
        'Routes sealed streams between facades and holders. It holds no secret and never sees ' +
        'a signed payload or a token secret. Any request whose head is not complete within the ' +
        'head deadline is answered 408 and closed.',
      license: { name: 'MIT', identifier: 'MIT' },
    },
    paths: {
      '/healthz': {
        get: {
          operationId: 'health',
          summary: 'Liveness: 200 while the relay runs (for load balancers and HEALTHCHECK)',
          responses: {
            '200': {
              description: 'The relay is running',
              content: { 'application/json': { schema: { $ref: '#/components/schemas/Health' } } },
            },
            '503': {
              description:
                'Only with --redis: this instance cannot reach Redis, so it cannot reach holders on the other instances',
              content: { 'application/json': { schema: { $ref: '#/components/schemas/Health' } } },
            },
          },
        },
      },
      '/metrics': {
        get: {
          operationId: 'metrics',
          summary: 'Prometheus metrics (docs/relay-metrics.md lists them with example alerts)',
          responses: {
            '200': {
              description: 'Prometheus text exposition format 0.0.4',
              content: {
                'text/plain; version=0.0.4; charset=utf-8': { schema: { type: 'string' } },
              },
            },
          },
        },
      },
      '/v1/holder': websocketEndpoint('holder'),
      '/v1/facade': websocketEndpoint('facade'),
    },
    components: {
      schemas: {
        Health: schema(HealthSchema),
        Error: {
          type: 'object',
          properties: {
            statusCode: { type: 'integer' },
            error: { type: 'string' },
            message: { type: 'string' },
          },
          required: ['statusCode', 'error', 'message'],
        },
        Challenge: schema(ChallengeSchema),
        HolderAuth: schema(HolderAuthSchema),
        HolderOk: schema(HolderOkSchema),
        FacadeToken: schema(FacadeTokenSchema),
        FacadeOk: schema(FacadeOkSchema),
      },
    },
    'x-keytether-close-codes': closeCodes,
  };
}
