//! Regenerates `man/` and `completions/` from the clap definitions:
//! `cargo run --example gen-docs [-- ROOT]` (ROOT defaults to the current directory).

fn main() -> anyhow::Result<()> {
    let root = std::env::args().nth(1).unwrap_or_else(|| ".".into());
    natkit::cli::docs::write_all(std::path::Path::new(&root))
}
