// Behind a reverse proxy (nginx, Caddy, a cloud load balancer) every connection comes from the
// proxy, so per-address limits would lump all users together. As nginx's set_real_ip_from does,
// X-Forwarded-For is believed only when the connection comes from a proxy the operator named, and
// only as far back as the chain stays inside trusted proxies; anyone else can write the header.

import net from 'node:net';

/** Longer headers are not parsed at all (the socket address is used). */
const MAX_FORWARDED_CHARS = 2048;

export class TrustedProxies {
  readonly #list = new net.BlockList();
  readonly #empty: boolean;

  /** ENTRIES are addresses or CIDR ranges (`10.0.0.0/8`, `::1`); throws a one-line Error. */
  constructor(entries: readonly string[]) {
    for (const raw of entries) {
      const e = raw.trim();
      const slash = e.indexOf('/');
      const addr = slash < 0 ? e : e.slice(0, slash);
      const family = net.isIP(addr);
      if (family === 0) throw new Error(`"${raw}" is not an IP address or CIDR range`);
      const type = family === 4 ? 'ipv4' : 'ipv6';
      if (slash < 0) {
        this.#list.addAddress(addr, type);
        continue;
      }
      const bits = e.slice(slash + 1);
      const prefix = /^\d{1,3}$/.test(bits) ? Number(bits) : NaN;
      if (!(prefix >= 0 && prefix <= (family === 4 ? 32 : 128))) {
        throw new Error(`"${raw}" has no valid prefix length`);
      }
      this.#list.addSubnet(addr, prefix, type);
    }
    this.#empty = entries.length === 0;
  }

  has(addr: string): boolean {
    const plain = unmapped(addr);
    const family = net.isIP(plain);
    if (family === 0) return false;
    return this.#list.check(plain, family === 4 ? 'ipv4' : 'ipv6');
  }

  /**
   * The client's address: the socket's, unless that is a trusted proxy; then the right-most
   * X-Forwarded-For entry that is not itself a trusted proxy (garbage stops the walk).
   */
  clientAddress(
    socketAddr: string | undefined,
    forwardedFor: string | string[] | undefined,
  ): string {
    const direct = unmapped(socketAddr ?? 'unknown');
    if (this.#empty || !this.has(direct) || forwardedFor === undefined) return direct;
    const header = Array.isArray(forwardedFor) ? forwardedFor.join(',') : forwardedFor;
    if (header.length > MAX_FORWARDED_CHARS) return direct;
    const hops = header.split(',').map((h) => unmapped(h.trim()));
    let client = direct;
    for (let i = hops.length - 1; i >= 0; i--) {
      const hop = hops[i]!;
      if (net.isIP(hop) === 0) break;
      client = hop;
      if (!this.has(hop)) break;
    }
    return client;
  }
}

/** `::ffff:1.2.3.4` is the IPv4 peer of a dual-stack socket. */
function unmapped(addr: string): string {
  return /^::ffff:\d{1,3}(\.\d{1,3}){3}$/i.test(addr) ? addr.slice(7) : addr;
}
