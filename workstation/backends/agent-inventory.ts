// The gpg-agent back end's inventory: the keys the agent holds, named and described from the
// workstation's keyring. openpgp.js reads the certificates; parts it cannot read (gpg 2.4's v5
// Ed448/X448 certificates) are named by gpg's own colon listing, with READKEY's public key.

import * as openpgp from 'openpgp';
import type { Certificate, Inventory, KeyEntry } from '../../protocol/keyholder.js';
import { publicKeySexp } from '../../protocol/keygrip.js';
import { encodeSexp, parseSexp } from '../../protocol/sexp.js';
import { describePart } from '../keystore/key-part.js';
import { parseColonListing } from './colon-keys.js';
import {
  exportArmoredKey,
  exportPublicKeys,
  listSecretKeysColons,
  type GnupgTools,
} from './gpg-tools.js';
import type { AgentKeyInfo } from './keyinfo.js';

/** What the agent's KEYINFO says about where a key lives, on its entry. */
function withAgentInfo(entry: KeyEntry, info: AgentKeyInfo): KeyEntry {
  entry.protection = info.protection;
  if (info.type === 'T') entry.card = { serialNo: info.serialNo ?? '-', idStr: info.idStr ?? '-' };
  return entry;
}

/** READKEY of one keygrip (a canonical public-key S-expression). */
export type ReadKey = (keygrip: string) => Promise<Buffer>;

export async function agentInventory(
  tools: GnupgTools,
  agentKeys: Map<string, AgentKeyInfo>,
  readKey: ReadKey,
): Promise<Inventory> {
  // Only the certificates of keys the agent holds: a keyring of other people's keys costs
  // nothing.
  const bytes = await exportPublicKeys(tools, [...agentKeys.keys()]);
  const keys: KeyEntry[] = [];
  const certificates: Certificate[] = [];
  if (bytes.length === 0) return { keys, certificates };
  // openpgp.js refuses a keyring holding a certificate it cannot parse (gpg 2.4's v5 Ed448
  // keys); every part is then named from gpg's own listing below.
  const certs = await openpgp.readKeys({ binaryKeys: bytes }).catch(() => [] as openpgp.Key[]);
  for (const cert of certs) {
    let any = false;
    for (const sub of [undefined, ...cert.getSubkeys()]) {
      const part = describePart(cert, sub);
      if (!part.keygrip || !part.publicKey) continue;
      const info = agentKeys.get(part.keygrip);
      if (!info) continue;
      any = true;
      const entry: KeyEntry = {
        keygrip: part.keygrip,
        fingerprint: part.fingerprint,
        primaryFingerprint: part.primaryFingerprint,
        algorithm: part.algorithm,
        usage: part.usage,
        publicKey: publicKeySexp(part.publicKey),
      };
      keys.push(withAgentInfo(entry, info));
    }
    if (any) {
      certificates.push({
        fingerprint: cert.getFingerprint().toUpperCase(),
        userIds: cert.getUserIDs(),
        armored: cert.armor(),
      });
    }
  }
  const named = new Set(keys.map((k) => k.keygrip));
  const unread = [...agentKeys.keys()].filter((g) => !named.has(g));
  if (unread.length > 0)
    await fromColonListing(tools, unread, agentKeys, readKey, keys, certificates);
  return { keys, certificates };
}

async function fromColonListing(
  tools: GnupgTools,
  grips: string[],
  agentKeys: Map<string, AgentKeyInfo>,
  readKey: ReadKey,
  keys: KeyEntry[],
  certificates: Certificate[],
): Promise<void> {
  const wanted = new Set(grips);
  for (const cert of parseColonListing(await listSecretKeysColons(tools, grips))) {
    let any = false;
    for (const part of cert.parts) {
      const info = agentKeys.get(part.keygrip);
      if (!info || !wanted.has(part.keygrip)) continue;
      const publicKey = await readKey(part.keygrip).catch(() => undefined);
      const parsed = publicKey && parseSexp(publicKey, { maxBytes: 16 * 1024, maxDepth: 8 });
      if (!parsed || !parsed.ok) continue;
      any = true;
      keys.push(withAgentInfo({ ...part, publicKey: encodeSexp(parsed.value) }, info));
    }
    if (any && !certificates.some((c) => c.fingerprint === cert.fingerprint)) {
      const armored = await exportArmoredKey(tools, cert.fingerprint);
      if (armored !== '') {
        certificates.push({ fingerprint: cert.fingerprint, userIds: cert.userIds, armored });
      }
    }
  }
}
