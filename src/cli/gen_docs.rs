//! Arguments of the hidden `gen-docs` subcommand.

use std::path::PathBuf;

use clap::Args;

#[derive(Debug, Args)]
pub struct GenDocsArgs {
    /// Project root: man pages go to DIR/man, completions to DIR/completions
    #[arg(long, default_value = ".")]
    pub out: PathBuf,
}
