#!/usr/bin/env node
// `keytether-git-sign`: the same as `keytether git-sign`, as one executable for git's
// gpg.program (git runs that setting as a program name, without a shell, so it cannot carry a
// subcommand).
import { runGitSign } from './git-sign.js';

process.exitCode = await runGitSign(process.argv.slice(2));
