//! `bk completions SHELL`: the completion script for bash, zsh, fish, elvish or PowerShell.

use clap::CommandFactory;

pub fn print(shell: clap_complete::Shell) {
    let mut cmd = crate::cli::Cli::command();
    clap_complete::generate(shell, &mut cmd, "bk", &mut std::io::stdout());
}
