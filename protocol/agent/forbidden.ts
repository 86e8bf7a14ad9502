// gpg-agent commands that reveal, add, change or delete secret material (or the agent itself).
// No front of keytether ever performs them: the holder owns its keys, passphrases and lifecycle.
// Names from gpg-agent 2.4's command table; anything not listed here and not implemented is an
// unknown command.

export const FORBIDDEN_COMMANDS: readonly string[] = Object.freeze([
  'GENKEY',
  'IMPORT_KEY',
  'EXPORT_KEY',
  'KEYWRAP_KEY',
  'DELETE_KEY',
  'PASSWD',
  'PRESET_PASSPHRASE',
  'CLEAR_PASSPHRASE',
  'GET_PASSPHRASE',
  'GET_CONFIRMATION',
  'MARKTRUSTED',
  'LEARN',
  'KEYTOCARD',
  'KEYTOTPM',
  'KEYATTR',
  'GET_SECRET',
  'PUT_SECRET',
  'GETVAL',
  'PUTVAL',
  'UPDATESTARTUPTTY',
  'KILLAGENT',
  'RELOADAGENT',
  'REMOVE_KEY_FILE',
]);
