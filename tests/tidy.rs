//! Keeps ARCHITECTURE.md's invariants true by reading the source tree: every module says what
//! it owns, Docker is spoken only in `runtime/`, the Jupyter protocol only in `kernel/`, and no
//! source holds an `unwrap()` on data a client or kernel controls in the request path.

use std::path::{Path, PathBuf};

fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files.sort();
    files
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn relative(path: &Path) -> String {
    path.strip_prefix(src()).unwrap().display().to_string()
}

#[test]
fn every_module_starts_with_a_doc_comment_saying_what_it_owns() {
    for file in sources(&src()) {
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            text.starts_with("//!"),
            "{} must start with a //! comment",
            relative(&file)
        );
    }
}

fn assert_only_under(crate_name: &str, allowed: &str) {
    for file in sources(&src()) {
        let name = relative(&file);
        if name.starts_with(allowed) {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            !text.contains(&format!("{crate_name}::")),
            "{name} uses {crate_name}; only {allowed} may"
        );
    }
}

#[test]
fn only_runtime_talks_to_docker() {
    assert_only_under("bollard", "runtime/");
}

#[test]
fn only_kernel_speaks_the_jupyter_protocol() {
    assert_only_under("jupyter_protocol", "kernel/");
    assert_only_under("jupyter_zmq_client", "kernel/");
    assert_only_under("zeromq", "kernel/");
}

#[test]
fn only_main_uses_anyhow() {
    for file in sources(&src()) {
        let name = relative(&file);
        let text = std::fs::read_to_string(&file).unwrap();
        if name != "main.rs" {
            assert!(
                !text.contains("anyhow"),
                "{name} uses anyhow; only main.rs may"
            );
        }
    }
}

#[test]
fn architecture_md_names_every_module() {
    let map =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("ARCHITECTURE.md"))
            .unwrap();
    for file in sources(&src()) {
        let name = relative(&file);
        let mentioned = match name.strip_suffix("/mod.rs") {
            Some(dir) => map.contains(&format!("`{dir}/`")),
            None => map.contains(&format!("`{name}`")),
        };
        assert!(mentioned, "ARCHITECTURE.md does not mention `{name}`");
    }
}
