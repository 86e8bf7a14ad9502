// Every fuzz target, in the order `npm run fuzz` runs them.

import type { AnyTarget } from '../harness.js';
import { agentTarget } from './agent.js';
import { assuanTarget } from './assuan.js';
import { configTarget } from './config.js';
import { relayTarget } from './relay.js';
import { sexpTarget } from './sexp.js';
import { sshTarget } from './ssh.js';
import { tokenTarget } from './token.js';
import { tunnelTarget } from './tunnel.js';

export const TARGETS = [
  assuanTarget,
  agentTarget,
  sexpTarget,
  tunnelTarget,
  tokenTarget,
  relayTarget,
  configTarget,
  sshTarget,
] as unknown as readonly AnyTarget[];
