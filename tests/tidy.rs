//! Keeps ARCHITECTURE.md's invariants true by reading the source tree: every module says what
//! it owns, Docker is spoken only in `runtime/`, the Jupyter protocol only in `kernel/`, and no
//! code outside tests calls `unwrap()` (so none unwraps data a client or kernel controls; an
//! internal invariant is stated with `expect`, a failure a caller can see is a typed error).

use std::collections::BTreeSet;
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

/// The lines of `text` outside `#[cfg(test)]` items, numbered from 1. Reads rustfmt's layout
/// (which `cargo fmt --check` keeps): the attribute stands on its own line; an item whose first
/// line ends with `;`, `,` or `}` is that line, any other ends at the first later line that
/// starts with `}` at the attribute's indentation. An item that never ends fails the test
/// rather than hiding the rest of its file.
fn outside_test_items<'a>(name: &str, text: &'a str) -> Vec<(usize, &'a str)> {
    let mut kept = Vec::new();
    let mut lines = text.lines().enumerate();
    while let Some((index, line)) = lines.next() {
        if line.trim() != "#[cfg(test)]" {
            kept.push((index + 1, line));
            continue;
        }
        let indent = &line[..line.len() - line.trim_start().len()];
        let item = lines
            .by_ref()
            .map(|(_, line)| line.trim_end())
            .find(|line| !line.trim_start().starts_with("#["))
            .unwrap_or_else(|| panic!("{name}:{}: #[cfg(test)] on nothing", index + 1));
        if item.ends_with([';', ',', '}']) {
            continue;
        }
        let closing = format!("{indent}}}");
        let ended = lines.by_ref().any(|(_, line)| line.starts_with(&closing));
        assert!(
            ended,
            "{name}:{}: the #[cfg(test)] item never closes at its indentation",
            index + 1
        );
    }
    kept
}

/// Files compiled only for tests: those a `#[cfg(test)] mod name;` declares (`name.rs` or
/// `name/` beside the declaring file, or under its directory for `main.rs` and `mod.rs`).
fn test_only_paths() -> BTreeSet<PathBuf> {
    let mut paths = BTreeSet::new();
    for file in sources(&src()) {
        let text = std::fs::read_to_string(&file).unwrap();
        let dir = match file.file_stem().and_then(|s| s.to_str()) {
            Some("main" | "lib" | "mod") => file.parent().unwrap().to_path_buf(),
            _ => file.with_extension(""),
        };
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        for pair in lines.windows(2) {
            let declared = pair[1]
                .strip_prefix("pub(crate) ")
                .or_else(|| pair[1].strip_prefix("pub "))
                .unwrap_or(pair[1])
                .strip_prefix("mod ")
                .and_then(|rest| rest.strip_suffix(';'));
            if let (["#[cfg(test)]", _], Some(module)) = (pair, declared) {
                paths.insert(dir.join(format!("{module}.rs")));
                paths.insert(dir.join(module));
            }
        }
    }
    paths
}

#[test]
fn no_code_outside_tests_calls_unwrap() {
    let test_only = test_only_paths();
    let mut offenders = Vec::new();
    for file in sources(&src()) {
        if test_only.iter().any(|path| file.starts_with(path)) {
            continue;
        }
        let name = relative(&file);
        let text = std::fs::read_to_string(&file).unwrap();
        for (number, line) in outside_test_items(&name, &text) {
            let code = line.trim_start();
            if !code.starts_with("//") && code.contains(".unwrap()") {
                offenders.push(format!("{name}:{number}: {code}"));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "unwrap() outside tests; return a typed error, or use expect naming the invariant:\n{}",
        offenders.join("\n")
    );
}

#[test]
fn the_unwrap_check_reads_past_test_items_only() {
    let text = "fn a() {}\n#[cfg(test)]\nuse x::y;\n#[cfg(test)]\n#[derive(Debug)]\nstruct T {\n    f: u8,\n}\nfn b() {\n    #[cfg(test)]\n    let c = 1;\n}\n#[cfg(test)]\nmod tests {\n    fn t() {\n        x.unwrap();\n    }\n}\nfn d() {}\n";
    let kept: Vec<usize> = outside_test_items("sample.rs", text)
        .into_iter()
        .map(|(number, _)| number)
        .collect();
    assert_eq!(kept, [1, 9, 12, 19]);
}

/// The lines of every non-test source file outside its `#[cfg(test)]` items, by file name.
fn code_outside_tests() -> Vec<(String, Vec<(usize, String)>)> {
    let test_only = test_only_paths();
    sources(&src())
        .into_iter()
        .filter(|file| !test_only.iter().any(|path| file.starts_with(path)))
        .map(|file| {
            let name = relative(&file);
            let text = std::fs::read_to_string(&file).unwrap();
            let lines = outside_test_items(&name, &text)
                .into_iter()
                .map(|(number, line)| (number, line.to_string()))
                .collect();
            (name, lines)
        })
        .collect()
}

#[test]
fn no_source_file_is_over_800_lines_besides_its_tests() {
    let long: Vec<String> = code_outside_tests()
        .into_iter()
        .filter(|(_, lines)| lines.len() > 800)
        .map(|(name, lines)| format!("{name}: {} lines", lines.len()))
        .collect();
    assert!(
        long.is_empty(),
        "split these by concern (ARCHITECTURE.md says where each concern lives):\n{}",
        long.join("\n")
    );
}

#[test]
fn the_engines_are_peers_that_do_not_import_each_other() {
    for (name, lines) in code_outside_tests() {
        let other = if name.starts_with("runtime/docker/") {
            "swarm::"
        } else if name.starts_with("runtime/swarm/") {
            "docker::"
        } else {
            continue;
        };
        for (number, line) in lines {
            assert!(
                !line.contains(other),
                "{name}:{number} reaches into the other engine ({line}); what both engines need belongs in runtime/engine.rs, runtime/sandbox.rs or runtime/reaper.rs"
            );
        }
    }
}

#[test]
fn the_kernels_workspace_path_is_spelled_in_one_place() {
    let literal = concat!("\"/", "workspace");
    for (name, lines) in code_outside_tests() {
        if name == "workspace/mod.rs" {
            continue;
        }
        for (number, line) in lines {
            assert!(
                !line.contains(literal),
                "{name}:{number} spells the kernel's workspace path; use workspace::IN_KERNEL, in_kernel or kernel_workspace!"
            );
        }
    }
}
