// gpg-agent's `S KEYINFO` status lines (9 fields), as `KEYINFO --list` reports them: which keys it
// has, on disk or as a smartcard stub, and whether they are protected.

export interface AgentKeyInfo {
  keygrip: string;
  /** D disk, T smartcard/token, X unknown, - missing. */
  type: string;
  serialNo: string | undefined;
  idStr: string | undefined;
  protection: 'P' | 'C' | '-';
  /** Flag letters: D disabled, S sshcontrol, c confirm, A on an available card. */
  flags: string;
}

const MAX_FIELD = 256;

/** One status line's arguments → info, or undefined when it is not a 9-field KEYINFO line. */
export function parseKeyInfoArgs(args: string): AgentKeyInfo | undefined {
  const f = args.split(' ');
  if (f.length !== 9 || f.some((x) => x.length === 0 || x.length > MAX_FIELD)) return undefined;
  const [grip, type, serial, idstr, , prot, , , flags] = f as [
    string,
    string,
    string,
    string,
    string,
    string,
    string,
    string,
    string,
  ];
  if (!/^[0-9A-Fa-f]{40}$/.test(grip)) return undefined;
  return {
    keygrip: grip.toUpperCase(),
    type,
    serialNo: serial === '-' ? undefined : serial,
    idStr: idstr === '-' ? undefined : idstr,
    protection: prot === 'P' || prot === 'C' ? prot : '-',
    flags: flags === '-' ? '' : flags,
  };
}
