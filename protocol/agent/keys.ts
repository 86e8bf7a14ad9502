// The key questions gpg asks: HAVEKEY (is any of these mine?), KEYINFO (9-field status that
// decides subkey usability and `sec` vs `sec#`), READKEY (public key). All are answered from
// the holder's inventory; none of them touches secret material.

import type { AssuanCommandContext } from '../assuan/index.js';
import { ErrorCode, GpgError } from '../gpg-error.js';
import type { KeyEntry, KeyHolder } from '../keyholder.js';
import { parseArgs, parseKeygrip } from './args.js';
import type { AgentSession } from './session.js';

export interface KeyCommandContext {
  holder: KeyHolder;
  session: AgentSession;
  /** Whether the client may enumerate the holder's keygrips (HAVEKEY/KEYINFO --list). */
  allowKeyList: boolean;
}

async function keysByGrip(holder: KeyHolder): Promise<Map<string, KeyEntry>> {
  const inv = await holder.inventory();
  const map = new Map<string, KeyEntry>();
  for (const k of inv.keys) {
    // SSH-only keys serve the ssh-agent front; gpg never asks for them.
    if (k.fingerprint.startsWith('SHA256:')) continue;
    const grip = k.keygrip.toUpperCase();
    if (!map.has(grip)) map.set(grip, k);
  }
  return map;
}

export async function haveKey(ctx: AssuanCommandContext, c: KeyCommandContext): Promise<void> {
  const { options, words } = parseArgs(ctx.args);
  if (options.has('info')) {
    const grip = parseKeygrip(words[0]);
    const key = (await keysByGrip(c.holder)).get(grip);
    if (key === undefined) throw new GpgError(ErrorCode.NO_SECKEY);
    ctx.sendStatus('KEYFILEINFO', keyFileInfo(key));
    return;
  }
  if (options.has('list')) {
    if (!c.allowKeyList) throw new GpgError(ErrorCode.FORBIDDEN);
    // `--list` without a usable number means no limit, as in the real agent.
    const limitText = options.get('list');
    const limit = limitText !== undefined && /^[0-9]{1,9}$/.test(limitText) ? Number(limitText) : 0;
    const grips = [...(await keysByGrip(c.holder)).keys()];
    const shown = limit > 0 ? grips.slice(0, limit) : grips;
    if (shown.length > 0) ctx.sendData(Buffer.from(shown.join(''), 'hex'));
    if (shown.length < grips.length) throw new GpgError(ErrorCode.TRUNCATED);
    return;
  }
  // Like the agent: grips are checked in order and the first hit answers, so a malformed grip
  // after a hit is never looked at.
  const keys = await keysByGrip(c.holder);
  const list = words.length > 0 ? words : [''];
  for (const word of list) {
    if (keys.has(parseKeygrip(word))) return;
  }
  throw new GpgError(ErrorCode.NO_SECKEY);
}

function keyFileInfo(key: KeyEntry): string {
  if (key.card) return 'shadowed';
  if (key.protection === 'C') return 'clear';
  if (key.protection === 'P') return 'protected';
  return 'unknown';
}

/** Status arguments carry no escaping layer, so anything but visible ASCII is replaced. */
function statusWord(text: string | undefined): string {
  if (!text) return '-';
  return text.replace(/[^\x21-\x7e]/g, '_');
}

/** `<GRIP> <TYPE> <SERIALNO> <IDSTR> <CACHED> <PROTECTION> <FPR> <TTL> <FLAGS>` */
export function keyInfoFields(grip: string, key: KeyEntry): string[] {
  const card = key.card;
  const protection = key.protection === 'P' || key.protection === 'C' ? key.protection : '-';
  return [
    grip,
    card ? 'T' : 'D',
    card ? statusWord(card.serialNo) : '-',
    card ? statusWord(card.idStr) : '-',
    key.cached ? '1' : '-',
    protection,
    '-',
    '-',
    '-',
  ];
}

export async function keyInfo(ctx: AssuanCommandContext, c: KeyCommandContext): Promise<void> {
  const { options, words } = parseArgs(ctx.args);
  const asData = options.has('data');
  const emit = (fields: string[]) => {
    if (asData) ctx.sendData(`${fields.join(' ')}\n`);
    else ctx.sendStatus('KEYINFO', ...fields);
  };
  // --ssh-fpr, --with-ssh and --need-attr only refine output keytether does not have.
  if (options.has('ssh-list')) {
    // No key of ours is in an sshcontrol file.
    return;
  }
  if (options.has('list')) {
    if (!c.allowKeyList) throw new GpgError(ErrorCode.FORBIDDEN);
    for (const [grip, key] of await keysByGrip(c.holder)) emit(keyInfoFields(grip, key));
    return;
  }
  const grip = parseKeygrip(words[0]);
  const key = (await keysByGrip(c.holder)).get(grip);
  if (key === undefined) throw new GpgError(ErrorCode.NOT_FOUND);
  emit(keyInfoFields(grip, key));
}

export async function readKey(ctx: AssuanCommandContext, c: KeyCommandContext): Promise<void> {
  if (c.session.restricted) throw new GpgError(ErrorCode.FORBIDDEN);
  const { options, words } = parseArgs(ctx.args);
  if (options.has('card') || options.has('format')) {
    throw new GpgError(ErrorCode.NOT_SUPPORTED);
  }
  const grip = parseKeygrip(words[0]);
  const key = (await keysByGrip(c.holder)).get(grip);
  // The real agent reads the key file first, so a key it does not have is the file's ENOENT.
  if (key === undefined) throw new GpgError(ErrorCode.ENOENT);
  if (options.has('no-data')) return;
  ctx.sendData(Buffer.from(key.publicKey));
}
