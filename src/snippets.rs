//! The Python that kernelbox itself runs inside a kernel (listing variables, saving and
//! restoring state across a restart) and the parsing of what it prints. Each snippet runs in a
//! function it deletes afterwards, so it leaves no name in the user's namespace, and prints one
//! line of JSON. The server parses that JSON as data; it never unpickles or evaluates anything
//! the kernel sends. Pickles stay inside the kernel's own workspace.

use serde::Deserialize;

use crate::workspace::kernel_workspace;

/// Where a kernel keeps its state across a `restart_kernel(preserve_state=true)`, as the
/// kernel sees it.
pub const STATE_FILE: &str = concat!(kernel_workspace!(), "/.kernelbox/state.pkl");

/// Where `install_dependencies` puts packages; on every kernel's `PYTHONPATH`.
pub const PACKAGES_DIR: &str = concat!(kernel_workspace!(), "/.kernelbox/site-packages");

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

/// Encodes a snippet's parameters so they reach Python as data: base64 of JSON, whose
/// alphabet cannot end a string literal or start code.
fn encode_request(request: &serde_json::Value) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(request.to_string())
}

/// The dataset actions of the `notebook` tool, run by DuckDB in the kernel. The connection and
/// the registry live in a module of their own (`_kernelbox_datasets`), never in the user's
/// globals. `request` holds `action` and its parameters; names and paths arrive as data and
/// are quoted as SQL identifiers and literals. Prints the action's JSON result, or `{"error"}`.
pub fn datasets(request: &serde_json::Value) -> String {
    format!(
        r#"def __kernelbox_datasets(request):
    import base64, json, sys, types
    params = json.loads(base64.b64decode(request))
    state = sys.modules.get('_kernelbox_datasets')
    if state is None:
        state = types.ModuleType('_kernelbox_datasets')
        state.connection = None
        state.datasets = {{}}
        sys.modules['_kernelbox_datasets'] = state
    def connect():
        if state.connection is None:
            import duckdb
            state.connection = duckdb.connect()
        return state.connection
    def ident(name):
        return '"' + name.replace('"', '""') + '"'
    def literal(text):
        return "'" + text.replace("'", "''") + "'"
    def plain(value):
        return value if isinstance(value, (int, float, str, bool, type(None))) else str(value)
    def fetch(result, limit):
        return [[plain(v) for v in row] for row in result.fetchmany(limit)]
    def describe(name):
        if name not in state.datasets:
            raise KeyError('no dataset named %s; datasets.list shows them' % name)
        con = connect()
        schema = [[row[0], row[1]] for row in con.execute('DESCRIBE ' + ident(name)).fetchall()]
        head = fetch(con.execute('SELECT * FROM ' + ident(name) + ' LIMIT 50'), 50)
        return {{'schema': schema, 'head': head}}
    action = params['action']
    try:
        if action == 'register':
            reader = {{'parquet': 'read_parquet', 'csv': 'read_csv_auto', 'json': 'read_json_auto'}}[params['format']]
            selects = ['SELECT * FROM %s(%s)' % (reader, literal(path)) for path in params['paths']]
            connect().execute('CREATE OR REPLACE VIEW ' + ident(params['name']) + ' AS ' + ' UNION ALL BY NAME '.join(selects))
            state.datasets[params['name']] = {{'paths': params['paths'], 'format': params['format']}}
            out = dict(name=params['name'], paths=params['paths'], format=params['format'], **describe(params['name']))
        elif action == 'list':
            out = {{'duckdb': [dict(name=name, **info) for name, info in sorted(state.datasets.items())]}}
        elif action == 'describe':
            out = dict(name=params['name'], **describe(params['name']))
        elif action == 'drop':
            if state.datasets.pop(params['name'], None) is None:
                raise KeyError('no dataset named %s; datasets.list shows them' % params['name'])
            connect().execute('DROP VIEW IF EXISTS ' + ident(params['name']))
            out = {{'dropped': params['name']}}
        elif action == 'sql':
            import os
            con = connect()
            query = params['query'].strip().rstrip(';')
            os.makedirs(os.path.dirname(params['result_path']), exist_ok=True)
            con.execute('COPY (' + query + ') TO ' + literal(params['result_path']) + ' (FORMAT PARQUET)')
            result = con.execute('SELECT * FROM read_parquet(' + literal(params['result_path']) + ')')
            columns = [d[0] for d in result.description]
            rows = fetch(result, params['limit'])
            total = con.execute('SELECT count(*) FROM read_parquet(' + literal(params['result_path']) + ')').fetchone()[0]
            out = {{'columns': columns, 'rows': rows, 'row_count': total}}
        else:
            raise ValueError('unknown dataset action %s' % action)
    except Exception as error:
        out = {{'error': '%s: %s' % (type(error).__name__, error)}}
    print(json.dumps(out, default=str))
try:
    __kernelbox_datasets({request:?})
finally:
    del __kernelbox_datasets
"#,
        request = encode_request(request)
    )
}

/// Saves every pandas DataFrame among the user's globals under `directory` (as the kernel sees
/// it) as Parquet (CSV when that fails) plus a 50-row CSV preview, file names starting with
/// `tag`. Prints `{"dataframes": [{name, rows, cols, path, preview_path}]}` with
/// workspace-relative paths.
pub fn save_dataframes(directory: &str, tag: &str) -> String {
    let request = encode_request(&serde_json::json!({"directory": directory, "tag": tag}));
    format!(
        r#"def __kernelbox_save_dataframes(request):
    import base64, json, os
    params = json.loads(base64.b64decode(request))
    saved = []
    try:
        import pandas
    except ImportError:
        pandas = None
    for name, value in list(globals().items()):
        if pandas is None or name.startswith('_') or not isinstance(value, pandas.DataFrame):
            continue
        os.makedirs(params['directory'], exist_ok=True)
        base = os.path.join(params['directory'], '%s_%s' % (params['tag'], name))
        try:
            import duckdb
            duckdb.from_df(value).write_parquet(base + '.parquet')
            path = base + '.parquet'
        except Exception:
            value.to_csv(base + '.csv', index=False)
            path = base + '.csv'
        value.head(50).to_csv(base + '_head.csv', index=False)
        relative = lambda p: os.path.relpath(p, '/workspace')
        saved.append({{'name': name, 'rows': int(value.shape[0]), 'cols': int(value.shape[1]),
                      'path': relative(path), 'preview_path': relative(base + '_head.csv')}})
    print(json.dumps({{'dataframes': saved}}))
try:
    __kernelbox_save_dataframes({request:?})
finally:
    del __kernelbox_save_dataframes
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
            datasets(&serde_json::json!({"action": "list"})),
            save_dataframes("/workspace/outputs/data/n", "cell_0001"),
        ] {
            let function = snippet
                .lines()
                .next()
                .unwrap()
                .trim_start_matches("def ")
                .split('(')
                .next()
                .unwrap();
            assert!(snippet.contains(&format!("del {function}")), "{snippet}");
        }
    }

    #[test]
    fn requests_reach_python_as_base64_data_only() {
        let hostile = serde_json::json!({"action": "drop", "name": "x'); import os; os.system('rm -rf /') #\"\"\""});
        let snippet = datasets(&hostile);
        assert!(!snippet.contains("import os; os.system"));
        let call = snippet
            .lines()
            .find(|l| l.contains("__kernelbox_datasets(\""))
            .unwrap();
        let argument = call.split('"').nth(1).unwrap();
        assert!(
            argument
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+/=".contains(c))
        );
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
