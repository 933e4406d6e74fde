//! The Python that kernelbox itself runs inside a kernel (listing variables, saving and
//! restoring state across a restart) and the parsing of what it prints. Each snippet runs in a
//! function it deletes afterwards, so it leaves no name in the user's namespace, and prints one
//! line of JSON. The server parses that JSON as data; it never unpickles or evaluates anything
//! the kernel sends. Pickles stay inside the kernel's own workspace.

use serde::Deserialize;

/// Where a kernel keeps its state across a `restart_kernel(preserve_state=true)`, as the
/// kernel sees it.
pub const STATE_FILE: &str = "/workspace/.kernelbox/state.pkl";

/// Where `install_dependencies` puts packages; on every kernel's `PYTHONPATH`.
pub const PACKAGES_DIR: &str = "/workspace/.kernelbox/site-packages";

/// Names the kernel itself defines in every namespace.
const HIDDEN_NAMES: &str = "{'In', 'Out', 'exit', 'quit', 'get_ipython'}";

/// Prints `[{"name", "type", "repr"}]` for the user's globals: no private names, no modules.
pub fn list_variables() -> String {
    format!(
        r#"def __kernelbox_variables():
    import json, reprlib, types
    shortener = reprlib.Repr()
    shortener.maxstring = 120
    shortener.maxother = 120
    found = []
    for name, value in list(globals().items()):
        if name.startswith('_') or name in {HIDDEN_NAMES} or isinstance(value, types.ModuleType):
            continue
        try:
            text = shortener.repr(value)
        except Exception as error:
            text = '<repr failed: %s>' % type(error).__name__
        found.append({{'name': name, 'type': type(value).__name__, 'repr': text[:200]}})
    print(json.dumps(sorted(found, key=lambda v: v['name'])))
try:
    __kernelbox_variables()
finally:
    del __kernelbox_variables
"#
    )
}

/// Pickles every picklable user global to [`STATE_FILE`]; prints `{"saved", "skipped"}`.
pub fn save_state() -> String {
    format!(
        r#"def __kernelbox_save_state():
    import json, os, pickle, types
    kept, skipped = {{}}, []
    for name, value in list(globals().items()):
        if name.startswith('_') or name in {HIDDEN_NAMES} or isinstance(value, types.ModuleType):
            continue
        try:
            pickle.dumps(value)
            kept[name] = value
        except Exception:
            skipped.append(name)
    os.makedirs(os.path.dirname({STATE_FILE:?}), exist_ok=True)
    with open({STATE_FILE:?}, 'wb') as state:
        pickle.dump(kept, state)
    print(json.dumps({{'saved': len(kept), 'skipped': sorted(skipped)}}))
try:
    __kernelbox_save_state()
finally:
    del __kernelbox_save_state
"#
    )
}

/// Loads [`STATE_FILE`] into the new kernel's globals and deletes it; prints `{"restored"}`.
pub fn restore_state() -> String {
    format!(
        r#"def __kernelbox_restore_state():
    import json, os, pickle
    with open({STATE_FILE:?}, 'rb') as state:
        kept = pickle.load(state)
    os.remove({STATE_FILE:?})
    globals().update(kept)
    print(json.dumps({{'restored': len(kept)}}))
try:
    __kernelbox_restore_state()
finally:
    del __kernelbox_restore_state
"#
    )
}

/// Makes a running kernel see packages installed after it started: Python caches "no such
/// directory" for a `sys.path` entry that did not exist yet. Prints `{"refreshed": true}`.
pub fn refresh_imports() -> String {
    format!(
        r#"def __kernelbox_refresh_imports():
    import importlib, json, sys
    sys.path_importer_cache.pop({PACKAGES_DIR:?}, None)
    importlib.invalidate_caches()
    print(json.dumps({{'refreshed': True}}))
try:
    __kernelbox_refresh_imports()
finally:
    del __kernelbox_refresh_imports
"#
    )
}

/// One user variable as `list_variables` reports it.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize, schemars::JsonSchema)]
pub struct Variable {
    pub name: String,
    #[serde(rename = "type")]
    pub type_name: String,
    pub repr: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SavedState {
    pub saved: usize,
    pub skipped: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RestoredState {
    pub restored: usize,
}

/// Parses the last line a snippet printed.
pub fn parse<T: serde::de::DeserializeOwned>(stdout: &str) -> Result<T, String> {
    let line = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .ok_or_else(|| "the kernel printed nothing".to_string())?;
    serde_json::from_str(line).map_err(|e| format!("the kernel printed unexpected output: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snippets_clean_up_after_themselves() {
        for snippet in [
            list_variables(),
            save_state(),
            restore_state(),
            refresh_imports(),
        ] {
            let function = snippet
                .lines()
                .next()
                .unwrap()
                .trim_start_matches("def ")
                .trim_end_matches("():");
            assert!(snippet.contains(&format!("del {function}")), "{snippet}");
        }
    }

    #[test]
    fn the_state_file_lives_in_the_workspace() {
        assert!(STATE_FILE.starts_with("/workspace/"));
        assert!(save_state().contains("\"/workspace/.kernelbox/state.pkl\""));
    }

    #[test]
    fn parse_takes_the_last_printed_line() {
        let variables: Vec<Variable> =
            parse("noise\n[{\"name\": \"x\", \"type\": \"int\", \"repr\": \"1\"}]\n").unwrap();
        assert_eq!(variables[0].type_name, "int");
        assert!(parse::<RestoredState>("").is_err());
        assert!(parse::<RestoredState>("not json").is_err());
    }
}
