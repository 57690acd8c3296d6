//! man/ and completions/ are generated from the clap definitions; this test
//! fails when the committed copies are stale. Fix: `cargo run --example gen-docs`.

use std::path::Path;

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("entry"))
        .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).expect("read")))
        .collect();
    v.sort();
    v
}

#[test]
fn man_pages_and_completions_are_up_to_date() {
    let tmp = tempfile::tempdir().expect("tempdir");
    natkit::cli::docs::write_all(tmp.path()).expect("generating the docs");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for sub in ["man", "completions"] {
        let want = files(&tmp.path().join(sub));
        let have = files(&root.join(sub));
        let names = |v: &Vec<(String, Vec<u8>)>| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        assert_eq!(
            names(&have),
            names(&want),
            "{sub}/ has other files than generated: run `cargo run --example gen-docs`"
        );
        for ((name, h), (_, w)) in have.iter().zip(&want) {
            assert!(h == w, "{sub}/{name} is stale: run `cargo run --example gen-docs` and commit the result");
        }
    }
}
