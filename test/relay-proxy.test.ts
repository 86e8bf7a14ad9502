// A relay behind a reverse proxy: X-Forwarded-For names the client only when the connection comes
// from a proxy the operator trusts (--trust-proxy), so per-address limits count users, not the
// proxy, and nobody else can pick the address the relay counts them under.

import t from 'tap';
import { WebSocket } from 'ws';
import { buildRelay, listenRelay } from '../server/relay/index.js';
import { TrustedProxies } from '../server/relay/client-address.js';
import { runCli } from './support/cli.js';

t.test('the client address a trusted proxy forwards', async (t) => {
  const p = new TrustedProxies(['127.0.0.1', '10.0.0.0/8', 'fd00::/8']);
  t.equal(p.clientAddress('127.0.0.1', '203.0.113.7'), '203.0.113.7');
  t.equal(p.clientAddress('::ffff:127.0.0.1', '203.0.113.7'), '203.0.113.7', 'v4-mapped peer');
  t.equal(
    p.clientAddress('127.0.0.1', '198.51.100.1, 203.0.113.7, 10.1.2.3'),
    '203.0.113.7',
    'the right-most hop that is not a trusted proxy; what the client wrote before it is ignored',
  );
  t.equal(p.clientAddress('127.0.0.1', ['203.0.113.7', '10.0.0.1']), '203.0.113.7');
  t.equal(
    p.clientAddress('192.0.2.9', '203.0.113.7'),
    '192.0.2.9',
    'untrusted peer: header ignored',
  );
  t.equal(p.clientAddress('127.0.0.1', undefined), '127.0.0.1');
  t.equal(
    p.clientAddress('127.0.0.1', 'not-an-ip, 10.0.0.1'),
    '10.0.0.1',
    'garbage stops the walk',
  );
  t.equal(p.clientAddress('127.0.0.1', 'x'.repeat(5000)), '127.0.0.1', 'oversized header ignored');
  t.equal(p.clientAddress('127.0.0.1', '2001:db8::1'), '2001:db8::1');
  t.equal(new TrustedProxies([]).clientAddress('127.0.0.1', '203.0.113.7'), '127.0.0.1');
  t.throws(() => new TrustedProxies(['proxy.example']), /not an IP address or CIDR range/);
  t.throws(() => new TrustedProxies(['10.0.0.0/33']), /no valid prefix length/);
  t.throws(() => new TrustedProxies(['10.0.0.0/']), /no valid prefix length/);
});

/** Opens a holder socket; resolves 'challenge' when the relay took it, or the close code. */
function knock(url: string, forwardedFor: string): Promise<string> {
  return new Promise((resolve) => {
    const ws = new WebSocket(`${url}/v1/holder`, { headers: { 'x-forwarded-for': forwardedFor } });
    ws.on('error', () => {});
    ws.once('message', () => resolve('challenge'));
    ws.once('close', (code) => resolve(String(code)));
    sockets.push(ws);
  });
}
const sockets: WebSocket[] = [];
t.teardown(() => {
  for (const s of sockets) s.terminate();
});

t.test('per-address limits count forwarded clients only from a trusted proxy', async (t) => {
  const start = async (trustProxy: string[]) => {
    const app = buildRelay({
      logger: false,
      limits: { maxConnectionsPerAddress: 1 },
      trustProxy,
    });
    const base = await listenRelay(app, '127.0.0.1', 0);
    t.teardown(() => app.close());
    return base.replace(/^http/, 'ws');
  };

  const behindProxy = await start(['127.0.0.1']);
  t.equal(await knock(behindProxy, '203.0.113.1'), 'challenge');
  t.equal(await knock(behindProxy, '203.0.113.2'), 'challenge', 'another user has their own count');
  t.equal(await knock(behindProxy, '203.0.113.1'), '4008', 'the same user is over the limit');

  const direct = await start([]);
  t.equal(await knock(direct, '203.0.113.1'), 'challenge');
  t.equal(
    await knock(direct, '203.0.113.2'),
    '4008',
    'without --trust-proxy a forged header does not buy a new count',
  );
});

t.test('keytether relay --trust-proxy refuses what is not an address', async (t) => {
  const r = await runCli(['relay', '--listen', '127.0.0.1:0', '--trust-proxy', 'proxy.example']);
  t.equal(r.code, 2);
  t.equal(
    r.stderr,
    'keytether relay: --trust-proxy: "proxy.example" is not an IP address or CIDR range\n',
  );
});
