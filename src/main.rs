//! The `natkit` binary: parse, run, map the outcome to an exit code.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = natkit::cli::Cli::parse();
    natkit::commands::init_logging(cli.verbose, cli.quiet);
    match natkit::commands::run(cli) {
        Ok(status) => status.into(),
        Err(err) => {
            natkit::output::failure(&err);
            natkit::error::exit_code_for(&err)
        }
    }
}
