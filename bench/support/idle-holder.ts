// Idle holders for measuring a relay's memory: each connects to `/v1/holder` with a fresh
// identity, answers the challenge exactly as the real holder does (workstation/relay/client.ts:
// no compression, an Ed25519 signature over the relay's auth message), waits for `ok` and then
// says nothing more, as a holder with no facades does. `rssKiB` reads a process's resident set.

import { generateKeyPairSync, sign } from 'node:crypto';
import { readFileSync } from 'node:fs';
import WebSocket from 'ws';
import { relayAuthMessage } from '../../protocol/relay/identity.js';
import { startDaemon } from './processes.js';

const OK_DEADLINE_MS = 30_000;

/** One authenticated idle holder; `localAddress` picks the source address (127.x.y.z). */
export function idleHolder(base: string, localAddress?: string): Promise<WebSocket> {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  const hpk = publicKey.export({ format: 'jwk' }).x!;
  const ws = new WebSocket(base.replace(/^http/, 'ws') + '/v1/holder', {
    perMessageDeflate: false,
    ...(localAddress ? { localAddress } : {}),
  });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      ws.terminate();
      reject(new Error(`idle holder: no ok from the relay within ${OK_DEADLINE_MS / 1000} s`));
    }, OK_DEADLINE_MS);
    ws.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    ws.on('close', (code) => {
      clearTimeout(timer);
      reject(new Error(`idle holder: relay closed the connection (${code})`));
    });
    ws.on('message', (data, isBinary) => {
      if (isBinary) return;
      const msg = JSON.parse(String(data)) as { type?: string; nonce?: string };
      if (msg.type === 'challenge' && typeof msg.nonce === 'string') {
        const sig = sign(null, relayAuthMessage(msg.nonce), privateKey);
        ws.send(JSON.stringify({ type: 'auth', hpk, sig: sig.toString('base64url') }));
      } else if (msg.type === 'ok') {
        clearTimeout(timer);
        ws.removeAllListeners('close');
        ws.on('error', () => {});
        resolve(ws);
      }
    });
  });
}

/**
 * COUNT idle holders, opened BATCH at a time. With `perAddress`, each source address 127.0.x.y
 * carries at most that many, so a relay's per-address limit (64 by default) is never what stops
 * them; the relay sees them as that many distinct clients. Close them with `terminate()`.
 */
export async function openIdleHolders(
  base: string,
  count: number,
  perAddress?: number,
): Promise<WebSocket[]> {
  const BATCH = 50;
  const sockets: WebSocket[] = [];
  const source = (i: number) => {
    if (perAddress === undefined) return undefined;
    const a = Math.floor(i / perAddress) + 1; // from 127.0.0.1 on
    if (a > 0xfffe) throw new Error('more idle holders than loopback source addresses');
    return `127.0.${a >> 8}.${a & 0xff}`;
  };
  try {
    for (let i = 0; i < count; i += BATCH) {
      const n = Math.min(BATCH, count - i);
      const batch = Array.from({ length: n }, (_, k) => idleHolder(base, source(i + k)));
      const settled = await Promise.allSettled(batch);
      for (const s of settled) if (s.status === 'fulfilled') sockets.push(s.value);
      const failed = settled.find((s) => s.status === 'rejected');
      if (failed) throw (failed as PromiseRejectedResult).reason;
    }
    return sockets;
  } catch (e) {
    for (const s of sockets) s.terminate();
    throw e;
  }
}

/** Resident set size of PID in KiB (VmRSS), or undefined without /proc. */
export function rssKiB(pid: number): number | undefined {
  try {
    const m = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'latin1'));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

const HOLDERS_PER_ADDRESS = 60;
const RSS_GOAL_KIB = 20;

/**
 * Starts `keytether relay` (CLI at CLI, default limits) and prints its RSS before and after
 * HOLDERS idle holders have authenticated, per holder; at most 60 come from each source address,
 * so the default per-address limit (64) is not what stops them.
 */
export async function relayRssPerIdleHolder(cli: string, holders: number): Promise<void> {
  const relay = await startDaemon(
    process.execPath,
    [cli, 'relay', '--listen', '127.0.0.1:0'],
    process.env,
    'listening: ',
  );
  try {
    const url = relay.readyText.trim();
    const pid = relay.child.pid!;
    const before = rssKiB(pid);
    const t0 = performance.now();
    const sockets = await openIdleHolders(url, holders, HOLDERS_PER_ADDRESS);
    const opened = (performance.now() - t0) / 1000;
    try {
      // Let the relay finish with the burst (its log lines, the last handshakes) first.
      await new Promise<void>((r) => setTimeout(r, 2000));
      const after = rssKiB(pid);
      if (before === undefined || after === undefined) {
        console.log('relay RSS: /proc not available');
        return;
      }
      const per = (after - before) / sockets.length;
      console.log(
        `keytether relay RSS: ${(before / 1024).toFixed(1)} MiB before, ` +
          `${(after / 1024).toFixed(1)} MiB with ${sockets.length} authenticated idle holders ` +
          `(opened in ${opened.toFixed(1)} s from ${Math.ceil(sockets.length / HOLDERS_PER_ADDRESS)} ` +
          `source addresses): ${per.toFixed(1)} KiB per idle holder ` +
          `(goal ≤ ${RSS_GOAL_KIB} KiB: ${per <= RSS_GOAL_KIB ? 'met' : 'not met'})`,
      );
    } finally {
      for (const s of sockets) s.terminate();
    }
  } finally {
    await relay.stop();
  }
}
