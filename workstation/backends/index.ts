export { mergeInventories, type Backend, type KeyOperator, type OpenContext } from './backend.js';
export { BuiltinBackend, type BuiltinBackendDeps } from './builtin.js';
export { GpgAgentBackend, type GpgAgentBackendOptions } from './gpg-agent.js';
export {
  AgentConnection,
  ALLOWED_AGENT_COMMANDS,
  type AgentSocketKind,
  type CommandObserver,
} from './agent-connection.js';
export { describeRequester, plusPercentEscape, requesterPrefixedText } from './requester-text.js';
