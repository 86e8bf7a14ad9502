export { createUnlockedKey } from './unlocked-key.js';
export type { SecretKeyMaterial, UnlockedKey } from './unlocked-key.js';
export { parseEncVal } from './enc-val.js';
export type { EncVal } from './enc-val.js';
