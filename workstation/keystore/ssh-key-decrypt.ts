// Decrypting an OpenSSH key file runs its bcrypt KDF, which ssh2 does in synchronous JavaScript:
// 16 rounds (ssh-keygen's default) already take ~350 ms, 1024 rounds half a minute, during which
// the holder could answer no one else. So ssh2's parser runs in a short-lived worker thread; only
// its result (the decrypted key as PEM, and the public blob it claims) comes back.
//
// The worker is plain JavaScript evaluated from a string: it must start the same way from the
// compiled package and from the TypeScript sources the tests load, and a file beside this module
// would exist in only one of them. It resolves nothing itself: ssh2's path comes from here.

import { createRequire } from 'node:module';
import { Worker } from 'node:worker_threads';

const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const { utils } = require(workerData.ssh2);
const pass = workerData.passphrase
  ? Buffer.from(workerData.passphrase.buffer, workerData.passphrase.byteOffset, workerData.passphrase.length)
  : undefined;
let key;
try {
  key = utils.parseKey(workerData.text, pass);
} finally {
  if (pass) pass.fill(0);
}
if (Array.isArray(key)) key = key[0] || new Error('no key');
if (key instanceof Error) parentPort.postMessage({ error: key.message });
else parentPort.postMessage({ pem: key.getPrivatePEM(), publicBlob: key.getPublicSSH() });
`;

const ssh2Path = createRequire(import.meta.url).resolve('ssh2');

/** What ssh2 made of the file: the key, or its own message for why not. */
export type DecryptedSshKey = { pem: string; publicBlob: Buffer } | { error: string };

/**
 * Parses (and with PASSPHRASE, decrypts) the OpenSSH or PEM key TEXT off the main thread. The
 * worker gets its own copy of PASSPHRASE and zeroes it after use; the caller zeroes its own.
 */
export function decryptSshKey(
  text: string,
  passphrase: Buffer | undefined,
): Promise<DecryptedSshKey> {
  return new Promise((resolve, reject) => {
    const worker = new Worker(WORKER_SOURCE, {
      eval: true,
      workerData: { ssh2: ssh2Path, text, passphrase },
      // A key file is at most 64 KiB; a parser needing more than this is not parsing a key.
      resourceLimits: { maxOldGenerationSizeMb: 64, maxYoungGenerationSizeMb: 16 },
      stdout: true,
      stderr: true,
    });
    let settled = false;
    worker.once('message', (m: { pem?: unknown; publicBlob?: unknown; error?: unknown }) => {
      settled = true;
      if (typeof m.error === 'string') resolve({ error: m.error });
      else if (typeof m.pem === 'string' && m.publicBlob instanceof Uint8Array)
        resolve({ pem: m.pem, publicBlob: Buffer.from(m.publicBlob) });
      else reject(new Error('the SSH key decryption worker answered nothing usable'));
      void worker.terminate();
    });
    worker.once('error', (e) => {
      if (!settled) reject(new Error(`the SSH key decryption worker failed (${e.message})`));
      settled = true;
    });
    worker.once('exit', (code) => {
      if (!settled) reject(new Error(`the SSH key decryption worker exited (${code})`));
      settled = true;
    });
  });
}
