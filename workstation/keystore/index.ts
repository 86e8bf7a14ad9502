export { Keystore, normaliseFingerprint } from './keystore.js';
export type { ImportResult, ListedKey, ListedSubkey } from './keystore.js';
export type { KeyPart } from './key-part.js';
export { MAX_IMPORT_BYTES } from './import-input.js';
