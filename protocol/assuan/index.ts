export {
  escapeData,
  unescapeData,
  plusPercentDecode,
  percentDecode,
  percentEscapeText,
} from './escape.js';
export { LineReader, MAX_LINE_BYTES, type LineEvent } from './line-reader.js';
export { LineSource, DEFAULT_MAX_QUEUED_BYTES, type LineSourceOptions } from './line-source.js';
export {
  MAX_OUT_LINE_BYTES,
  encodeData,
  decodeDataLine,
  parseResponseLine,
  parseCommandLine,
  parseOptionArgs,
  oneLine,
  type ResponseLine,
  type CommandLine,
  type ParsedOption,
} from './codec.js';
export {
  serveAssuan,
  type AssuanCommandContext,
  type AssuanHandler,
  type AssuanServerOptions,
  type ClientDeadlines,
} from './server.js';
export { AssuanClient, type TransactOptions, type TransactResult } from './client.js';
