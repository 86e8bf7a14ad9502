// keytether doctor: checks this machine's set-up and prints what to fix, changing nothing. On the
// workstation it looks at the holder (home, config, keys, pinentry, agent, audit, relays); with
// --server at what gpg on a server meets (gpg, the agent socket and who listens, no-autostart,
// systemd's gpg-agent sockets, sshd's forwarding settings).

import type { Command } from 'commander';
import { diagnoseServer } from '../../server/doctor.js';
import { formatFindings, summarize, type Finding } from '../../system/diagnosis.js';
import { diagnoseWorkstation } from '../../workstation/home/doctor.js';
import { action, examples, packageVersion, resolveHome } from '../program.js';

export function register(program: Command): void {
  program
    .command('doctor')
    .addHelpText('after', examples('keytether doctor', 'keytether doctor --server'))
    .description("check this machine's keytether set-up and say what to fix (exit 1 on problems)")
    .option('--server', 'check the server side (gpg, its agent socket, what listens there)')
    .option(
      '--sshd-config <file>',
      'with --server: the sshd_config to check (default /etc/ssh/sshd_config)',
    )
    .option('--workstation', 'check the holder side (the default; with --server, both)')
    .action(
      action(
        async (
          flags: { server?: boolean; workstation?: boolean; sshdConfig?: string },
          cmd: Command,
        ) => {
          const globals = cmd.optsWithGlobals() as { home?: string; config?: string };
          const out = cmd.configureOutput().writeOut ?? ((s: string) => process.stdout.write(s));
          const all: Finding[] = [];
          const sections: string[] = [];
          if (flags.workstation || !flags.server) {
            const home = resolveHome(globals);
            const found = await diagnoseWorkstation(home, {
              ...(globals.config !== undefined ? { configFile: globals.config } : {}),
              version: packageVersion(),
            });
            all.push(...found);
            sections.push(formatFindings('workstation (holder)', found));
          }
          if (flags.server) {
            const found = await diagnoseServer(
              process.env,
              flags.sshdConfig !== undefined ? { sshdConfig: flags.sshdConfig } : {},
            );
            all.push(...found);
            sections.push(formatFindings('server (facade)', found));
          }
          const { line, failed } = summarize(all);
          out(`${sections.join('\n')}\n${line}\n`);
          return failed ? 1 : 0;
        },
      ),
    );
}
