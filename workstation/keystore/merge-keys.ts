// Re-importing a key the store already has: the fresh export and the stored copy become one key,
// without losing secret parts only the stored copy has.

import * as openpgp from 'openpgp';

export function concat(parts: Uint8Array[]): Uint8Array {
  return Buffer.concat(parts.map((p) => Buffer.from(p.buffer, p.byteOffset, p.length)));
}

type KeyHolderPacket = { keyPacket: openpgp.SecretKeyPacket | openpgp.SecretSubkeyPacket };

function isStub(k: KeyHolderPacket): boolean {
  const p = k.keyPacket as Partial<openpgp.SecretKeyPacket>;
  return typeof p.isMissingSecretKeyMaterial !== 'function' || p.isMissingSecretKeyMaterial();
}

/**
 * The new export wins (its passphrase, its secret packets), with user ids, signatures and subkeys
 * only the stored copy has added back; where the new export has a stub and the stored copy real
 * secret material, the stored packet is kept.
 */
export async function mergeKeys(
  incoming: openpgp.PrivateKey,
  stored: openpgp.PrivateKey,
): Promise<openpgp.Key> {
  let merged: openpgp.Key;
  try {
    merged = await incoming.update(stored);
  } catch {
    // openpgp refuses merges whose signatures it cannot check; the fresh export alone is fine.
    merged = incoming;
  }
  const oldParts = new Map<string, KeyHolderPacket>();
  for (const k of stored.getKeys())
    oldParts.set(k.getFingerprint(), k as unknown as KeyHolderPacket);
  for (const k of merged.getKeys()) {
    const mine = k as unknown as KeyHolderPacket;
    const old = oldParts.get(k.getFingerprint());
    if (old && isStub(mine) && !isStub(old)) {
      (mine as { keyPacket: unknown }).keyPacket = old.keyPacket;
    }
  }
  return merged;
}
