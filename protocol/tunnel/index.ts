// The tunnel that carries the KeyHolder interface between a server-side facade and the
// workstation's holder over any byte stream (SSH exec channel stdio, a relay WebSocket…).
// Holder side: serveTunnel(holder, stream, opts). Facade side: tunnelClient(stream, opts),
// which is a KeyHolder again.

export {
  TUNNEL_PROTOCOL,
  MIN_TUNNEL_PROTOCOL,
  negotiate,
  type HelloInfo,
  type Role,
} from './handshake.js';
export {
  DEFAULT_MAX_FRAME_BYTES,
  MAX_FRAME_LIMIT,
  FrameReader,
  type FrameEvent,
} from './framing.js';
export {
  LIMITS,
  encodeFrame,
  decodePayload,
  type Message,
  type MessageType,
  type DecodeResult,
} from './messages.js';
export {
  DEFAULT_KEEPALIVE_MS,
  DEFAULT_DEAD_PEER_MS,
  type TunnelOptions,
  type PeerInfo,
  type FrameDirection,
} from './link.js';
export {
  serveTunnel,
  DEFAULT_MAX_IN_FLIGHT,
  type TunnelServerHandle,
  type TunnelServerOptions,
} from './server.js';
export {
  tunnelClient,
  DEFAULT_INVENTORY_TIMEOUT_MS,
  type TunnelClient,
  type TunnelClientOptions,
} from './client.js';
