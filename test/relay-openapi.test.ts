// docs/relay-openapi.json is what `keytether relay --openapi` prints, names exactly the routes
// the relay serves, and every answer the relay gives (HTTP bodies, WebSocket control messages,
// close codes) fits the document, checked with a JSON Schema validator of its own.

import t from 'tap';
import { generateKeyPairSync, sign } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { Ajv2020 } from 'ajv/dist/2020.js';
import { WebSocket } from 'ws';
import { buildRelay, listenRelay, shutdownRelay } from '../server/relay/index.js';
import { relayOpenApi } from '../server/relay/openapi.js';
import { relayAuthMessage } from '../protocol/relay/identity.js';
import { packageVersion } from '../cli/program.js';
import { repoRoot, runCli } from './support/cli.js';

type Doc = {
  paths: Record<string, Record<string, { responses: Record<string, unknown> }>>;
  components: { schemas: Record<string, unknown> };
  'x-keytether-close-codes': Record<string, string>;
};

const doc = relayOpenApi(packageVersion()) as unknown as Doc;
const ajv = new Ajv2020({ strict: false });
ajv.addSchema({ $id: 'relay', components: doc.components });
const validate = (name: string, value: unknown): string | undefined => {
  const check = ajv.getSchema(`relay#/components/schemas/${name}`)!;
  return check(value) ? undefined : ajv.errorsText(check.errors);
};

t.test('the committed document is the generated one, and the CLI prints it', async (t) => {
  const committed = JSON.parse(
    await readFile(path.join(repoRoot, 'docs', 'relay-openapi.json'), 'utf8'),
  ) as unknown;
  t.same(
    committed,
    doc,
    'docs/relay-openapi.json is current (regenerate: keytether relay --openapi > docs/relay-openapi.json)',
  );
  const printed = await runCli(['relay', '--openapi']);
  t.equal(printed.code, 0, printed.stderr);
  t.same(JSON.parse(printed.stdout), doc);
});

t.test("the document's paths are the relay's routes, and its answers fit", async (t) => {
  const app = buildRelay({ logger: false });
  t.teardown(() => app.close());
  await app.ready();
  const served = [...app.printRoutes({ commonPrefix: false }).matchAll(/(\/\S*) \(([A-Z, ]+)\)/g)]
    .map((m) => m[1]!)
    .sort();
  t.same(served, Object.keys(doc.paths).sort(), 'no route undocumented, no documented one missing');

  const health = await app.inject({ method: 'GET', url: '/healthz' });
  t.equal(health.statusCode, 200);
  t.ok(doc.paths['/healthz']!.get!.responses['200']);
  t.equal(validate('Health', health.json()), undefined, '/healthz fits Health');

  const metrics = await app.inject({ method: 'GET', url: '/metrics' });
  t.equal(metrics.statusCode, 200);
  t.match(metrics.headers['content-type'], /^text\/plain; version=0\.0\.4/);

  for (const url of ['/v1/holder', '/v1/facade']) {
    const plain = await app.inject({ method: 'GET', url });
    t.equal(plain.statusCode, 426, `plain GET ${url} is 426`);
    t.ok(doc.paths[url]!.get!.responses['426'], '426 is documented');
    t.equal(plain.headers.upgrade, 'websocket');
    t.equal(validate('Error', plain.json()), undefined, 'its body fits Error');
    t.match(plain.json().message, /is a WebSocket endpoint/);
  }
});

/** Opens a WebSocket and collects what the relay sends until it closes (or `until` says stop). */
function session(
  url: string,
  onOpen: (ws: WebSocket, received: unknown[]) => void,
): Promise<{ received: unknown[]; code: number }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    const received: unknown[] = [];
    ws.on('message', (data: Buffer) => {
      received.push(JSON.parse(data.toString('utf8')));
      onOpen(ws, received);
    });
    ws.on('open', () => onOpen(ws, received));
    ws.on('close', (code) => resolve({ received, code }));
    ws.on('error', reject);
  });
}

t.test('the WebSocket control messages and close codes fit the document', async (t) => {
  const app = buildRelay({ logger: false });
  const base = (await listenRelay(app, '127.0.0.1', 0)).replace(/^http/, 'ws');
  t.teardown(() => shutdownRelay(app, 0));
  const closeCodes = Object.keys(doc['x-keytether-close-codes']).map(Number);

  // A holder that authenticates: Challenge, then HolderOk.
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  const hpk = publicKey.export({ format: 'der', type: 'spki' }).subarray(-32);
  const holder = await session(`${base}/v1/holder`, (ws, received) => {
    const last = received.at(-1) as { type?: string; nonce?: string } | undefined;
    if (last?.type === 'challenge' && received.length === 1) {
      const sig = sign(null, relayAuthMessage(last.nonce!), privateKey);
      ws.send(
        JSON.stringify({
          type: 'auth',
          hpk: hpk.toString('base64url'),
          sig: sig.toString('base64url'),
        }),
      );
    } else if (last?.type === 'ok') {
      ws.close(1000);
    }
  });
  t.equal(holder.received.length, 2);
  t.equal(validate('Challenge', holder.received[0]), undefined, 'the challenge fits Challenge');
  t.equal(validate('HolderOk', holder.received[1]), undefined, 'the answer fits HolderOk');

  // A holder whose answer is wrong: closed with a documented code.
  const bad = await session(`${base}/v1/holder`, (ws, received) => {
    if (received.length === 1) ws.send(JSON.stringify({ type: 'auth', hpk: 'x', sig: 'y' }));
  });
  t.ok(closeCodes.includes(bad.code), `refusal code ${bad.code} is documented`);
  t.equal(doc['x-keytether-close-codes'][String(bad.code)], 'AuthFailed');

  // A facade sending something that is not a token.
  const facade = await session(`${base}/v1/facade`, (ws, received) => {
    if (received.length === 0 && ws.readyState === WebSocket.OPEN) {
      ws.send(JSON.stringify({ type: 'token', token: 'kt1.not-a-token' }));
    }
  });
  t.equal(doc['x-keytether-close-codes'][String(facade.code)], 'TokenInvalid');
  t.equal(
    validate('FacadeToken', { type: 'token', token: 'x', extra: 1 }),
    'data must NOT have additional properties',
    'the schemas are the strict ones the relay parses with',
  );
});
