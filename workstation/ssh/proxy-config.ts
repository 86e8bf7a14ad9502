// How a destination is reached when it is not dialled directly: ProxyJump's hops or a
// ProxyCommand, chosen as OpenSSH chooses (whichever of the two is obtained first wins, `none`
// included), each hop resolved from its own config block.

import { UserError } from '../../system/user-error.js';
import type { SshTarget } from './config.js';
import { MAX_JUMP_HOPS, expandTokens, parseJumpSpec } from './destination.js';

export interface ProxySettings {
  proxyJump: string | undefined;
  jumps: SshTarget[];
  proxyCommand: string | undefined;
}

/** One hop to resolve: its own destination and port, plus command-line-strength options. */
export interface HopRequest {
  target: string;
  port?: number;
  options: string[];
}

const NO_PROXY: ProxySettings = { proxyJump: undefined, jumps: [], proxyCommand: undefined };

function value(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v.join(' ') : v;
}

/**
 * `computed` is the ssh-config result for the destination; its key order is the order the
 * options were obtained in. `tokens` are the destination's (%h %n %p %r for ProxyCommand).
 * `resolveHop` resolves a hop as a destination of its own, one level deeper.
 */
export function resolveProxy(
  computed: Record<string, string | string[]>,
  tokens: Record<string, string>,
  depth: number,
  resolveHop: (hop: HopRequest, depth: number) => SshTarget,
): ProxySettings {
  const keys = Object.keys(computed);
  const jumpAt = keys.indexOf('proxyjump');
  const commandAt = keys.indexOf('proxycommand');
  if (jumpAt >= 0 && (commandAt < 0 || jumpAt < commandAt)) {
    const spec = value(computed['proxyjump']) ?? '';
    if (spec.toLowerCase() === 'none') return NO_PROXY;
    if (depth >= MAX_JUMP_HOPS) {
      throw new UserError(
        `ProxyJump leads through more than ${MAX_JUMP_HOPS} jump hosts to reach ${tokens.n ?? ''}; check ~/.ssh/config for a loop`,
      );
    }
    const jumps: SshTarget[] = [];
    parseJumpSpec(spec, 'ProxyJump').forEach((hop, i) => {
      const resolved = resolveHop(
        {
          target: hop.user !== undefined ? `${hop.user}@${hop.host}` : hop.host,
          ...(hop.port !== undefined ? { port: hop.port } : {}),
          // A later hop is reached through the earlier ones, whatever its own config says: this
          // is what `ssh -J first second` does for OpenSSH's second hop.
          options: i === 0 ? [] : ['ProxyJump=none'],
        },
        depth + 1,
      );
      // The first hop's own ProxyJump (or ProxyCommand) decides how it is reached in turn.
      jumps.push(...resolved.jumps, { ...resolved, jumps: [] });
    });
    if (jumps.length > MAX_JUMP_HOPS) {
      throw new UserError(
        `ProxyJump leads through more than ${MAX_JUMP_HOPS} jump hosts to reach ${tokens.n ?? ''}`,
      );
    }
    return { proxyJump: spec, jumps, proxyCommand: undefined };
  }
  if (commandAt >= 0) {
    const command = value(computed['proxycommand']) ?? '';
    if (command.toLowerCase() === 'none') return NO_PROXY;
    const { h, n, p, r } = tokens;
    const allowed: Record<string, string> = { h: h ?? '', n: n ?? '', p: p ?? '', r: r ?? '' };
    return {
      proxyJump: undefined,
      jumps: [],
      proxyCommand: expandTokens(command, allowed, 'ProxyCommand'),
    };
  }
  return NO_PROXY;
}
