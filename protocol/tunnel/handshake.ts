// Version negotiation. Each side announces the newest protocol it speaks and the oldest it still
// accepts; they settle on the newest both speak. When there is none, both ends compute the same
// one-sentence explanation from the two hellos, so the user reads the same advice on either side.

// 2: a sign request may carry the payload being signed, in `content` frames before it.
// 3: the inventory may name the holder's gpg-agent version (`agentVersion`).
// 4: a commit's payload may bring the git objects that prove its changed files (`objects` part),
//    and the requester may name its process (`name`) and that process's parents (`parents`).
// 5: sign and decrypt requests may carry gpg's no-prompt mode (`pinentryMode`).
// 6: ssh-agent signatures (`ssh-sign`, answered by `ssh-sign-result`); an older holder has
//    none, so the facade refuses them itself instead of sending what that holder cannot read.
// 7: the inventory may list SSH-only keys (an ssh-agent back end's, imported OpenSSH keys), known
//    by their `SHA256:` fingerprint; the facade offers them to its ssh-agent front only.
// 8: an inventory key may carry its SSH comment (`comment`), which `ssh-add -l` shows.
export const TUNNEL_PROTOCOL = 8;
export const MIN_TUNNEL_PROTOCOL = 1;

export type Role = 'holder' | 'facade';

export interface HelloInfo {
  protocol: number;
  minProtocol: number;
  software: string;
  role: Role;
}

export type Negotiation = { ok: true; protocol: number } | { ok: false; reason: string };

/** Where each role runs, as a user thinks of it. */
export function place(role: Role): string {
  return role === 'holder' ? 'workstation' : 'server';
}

function version(software: string): string {
  const slash = software.lastIndexOf('/');
  const v = slash >= 0 ? software.slice(slash + 1) : software;
  return v || 'an unknown version';
}

export function negotiate(local: HelloInfo, peer: HelloInfo): Negotiation {
  if (local.role === peer.role) {
    return {
      ok: false,
      reason: `both ends of the tunnel are ${local.role === 'holder' ? 'key holders' : 'facades'}; one must be the workstation holder and the other the server facade`,
    };
  }
  const holder = local.role === 'holder' ? local : peer;
  const facade = local.role === 'holder' ? peer : local;
  const protocol = Math.min(holder.protocol, facade.protocol);
  if (protocol >= Math.max(holder.minProtocol, facade.minProtocol) && protocol >= 1) {
    return { ok: true, protocol };
  }
  // The side whose newest protocol is too old for the other is the one to upgrade.
  const [old, other] = holder.protocol < facade.minProtocol ? [holder, facade] : [facade, holder];
  const oldPlace = place(old.role);
  const otherPlace = place(other.role);
  return {
    ok: false,
    reason:
      `the ${oldPlace} speaks tunnel protocol ${old.protocol} but the ${otherPlace}'s keytether ` +
      `speaks ${other.protocol}; upgrade keytether on the ${oldPlace} ` +
      `(it is ${version(old.software)}, the ${otherPlace} has ${version(other.software)})`,
  };
}
