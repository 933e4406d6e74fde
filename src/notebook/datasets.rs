//! The notebook's datasets: names, paths and formats checked before anything reaches the
//! kernel, the request handed to DuckDB through `snippets::datasets`, and its answers read
//! back as typed results. Names and paths travel as data, never as code; the server parses the
//! kernel's JSON answer and nothing else.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::service::{Notebook, NotebookError};
use crate::snippets;

/// A dataset's columns: `[name, type]` pairs as DuckDB describes them.
pub type Columns = Vec<(String, String)>;

/// A dataset as registered.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct DatasetInfo {
    pub name: String,
    /// The files it reads, as the kernel sees them.
    pub paths: Vec<String>,
    /// parquet, csv or json.
    pub format: String,
}

/// A dataset just registered: what it reads, its columns and its first rows.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct DatasetRegistered {
    pub name: String,
    /// The files it reads, as the kernel sees them.
    pub paths: Vec<String>,
    pub format: String,
    pub schema: Columns,
    /// Its first 50 rows.
    pub head: Vec<Vec<Value>>,
}

/// The registered datasets, by engine.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct DatasetList {
    pub duckdb: Vec<DatasetInfo>,
}

/// A dataset's columns and first rows.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct DatasetDescription {
    pub name: String,
    pub schema: Columns,
    /// Its first 50 rows.
    pub head: Vec<Vec<Value>>,
}

/// A dataset removed.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct DatasetDropped {
    /// The name it had.
    pub dropped: String,
}

/// What a query returned inline.
#[derive(Debug, Deserialize)]
struct QueryRows {
    columns: Vec<String>,
    rows: Vec<Vec<Value>>,
    row_count: u64,
}

/// A query's result: the first rows inline, every row in a Parquet file.
#[derive(Debug, Serialize, JsonSchema)]
pub struct QueryResult {
    pub columns: Vec<String>,
    /// The first limit_preview rows.
    pub rows: Vec<Vec<Value>>,
    /// How many rows the query returned in all.
    pub row_count: u64,
    /// Workspace-relative Parquet file with every row.
    pub result_path: String,
}

/// What the kernel prints for a dataset action: the result, or why there is none.
#[derive(Deserialize)]
#[serde(untagged)]
enum Answer<T> {
    Failed { error: String },
    Done(T),
}

impl Notebook<'_> {
    /// Makes the files at `paths` (workspace-relative, globs allowed) queryable as `name`.
    pub async fn register_dataset(
        &self,
        name: &str,
        paths: &[String],
        format: Option<&str>,
    ) -> Result<DatasetRegistered, NotebookError> {
        let name = dataset_name(name)?;
        let paths = dataset_paths(paths)?;
        let format = dataset_format(format, &paths[0])?;
        self.ask(
            "datasets.register",
            json!({"action": "register", "name": name, "paths": paths, "format": format}),
        )
        .await
    }

    /// Every registered dataset.
    pub async fn datasets(&self) -> Result<DatasetList, NotebookError> {
        self.ask("datasets.list", json!({"action": "list"})).await
    }

    /// A dataset's columns and first rows.
    pub async fn describe_dataset(&self, name: &str) -> Result<DatasetDescription, NotebookError> {
        let name = dataset_name(name)?;
        self.ask(
            "datasets.describe",
            json!({"action": "describe", "name": name}),
        )
        .await
    }

    /// Forgets a dataset (its files stay).
    pub async fn drop_dataset(&self, name: &str) -> Result<DatasetDropped, NotebookError> {
        let name = dataset_name(name)?;
        self.ask("datasets.drop", json!({"action": "drop", "name": name}))
            .await
    }

    /// Runs `query` over the registered datasets: `limit` rows inline, all of them to a Parquet
    /// file in the notebook's data directory.
    pub async fn query(&self, query: &str, limit: usize) -> Result<QueryResult, NotebookError> {
        if query.trim().is_empty() {
            return Err(NotebookError::Invalid(
                "query is required for datasets.sql".to_string(),
            ));
        }
        if !(1..=10_000).contains(&limit) {
            return Err(NotebookError::Invalid(format!(
                "limit_preview must be between 1 and 10000; got {limit}"
            )));
        }
        let file = format!("query_{}.parquet", uuid::Uuid::new_v4().simple());
        let result_path = format!("{}/{file}", self.id().data_dir_in_kernel());
        let rows: QueryRows = self
            .ask(
                "datasets.sql",
                json!({"action": "sql", "query": query, "limit": limit, "result_path": result_path}),
            )
            .await?;
        Ok(QueryResult {
            columns: rows.columns,
            rows: rows.rows,
            row_count: rows.row_count,
            result_path: crate::workspace::from_kernel(&result_path)
                .unwrap_or(&result_path)
                .to_string(),
        })
    }

    /// Runs one dataset request in the kernel and reads its answer.
    async fn ask<T: serde::de::DeserializeOwned>(
        &self,
        action: &'static str,
        request: Value,
    ) -> Result<T, NotebookError> {
        let answer = self
            .helper(&snippets::datasets(&request), self.limits().dataset_timeout)
            .await?;
        match answer {
            Answer::Failed { error } => Err(NotebookError::Dataset {
                action,
                detail: error,
            }),
            Answer::Done(result) => Ok(result),
        }
    }
}

/// A validated dataset name: a SQL identifier, `[A-Za-z_][A-Za-z0-9_]{0,63}`.
fn dataset_name(value: &str) -> Result<String, NotebookError> {
    let mut chars = value.chars();
    let valid = value.len() <= 64
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid {
        Ok(value.to_string())
    } else {
        Err(NotebookError::Invalid(format!(
            "invalid dataset_name {:?}: start with a letter or '_', then letters, digits or '_', at most 64",
            value.chars().take(80).collect::<String>()
        )))
    }
}

/// Workspace-relative data paths (globs allowed) as the kernel sees them; at least one.
fn dataset_paths(paths: &[String]) -> Result<Vec<String>, NotebookError> {
    if paths.is_empty() {
        return Err(NotebookError::Invalid(
            "paths is required for datasets.register: workspace-relative files or globs"
                .to_string(),
        ));
    }
    paths
        .iter()
        .map(|path| {
            let leaves = path.starts_with('/')
                || path.split('/').any(|part| part == "..")
                || path.contains('\0')
                || path.trim().is_empty();
            if leaves {
                Err(NotebookError::Invalid(format!(
                    "path {path:?} must be workspace-relative without '..', for example uploads/sales.csv or data/*.parquet"
                )))
            } else {
                Ok(crate::workspace::in_kernel(path.trim_start_matches("./")))
            }
        })
        .collect()
}

/// The reader for `format`, or one guessed from the first path's extension.
fn dataset_format(format: Option<&str>, first_path: &str) -> Result<String, NotebookError> {
    let guessed = first_path.rsplit('.').next().unwrap_or_default();
    let format = format.unwrap_or(guessed).to_ascii_lowercase();
    match format.as_str() {
        "parquet" | "csv" | "json" => Ok(format),
        _ => Err(NotebookError::Invalid(format!(
            "format {format:?} is not supported: use parquet, csv or json"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_paths_and_formats_are_validated() {
        assert_eq!(dataset_name("sales_2024").unwrap(), "sales_2024");
        for bad in ["1abc", "a-b", "x; DROP TABLE y", "\"q\"", ""] {
            assert!(dataset_name(bad).is_err(), "{bad}");
        }
        assert_eq!(
            dataset_paths(&["data/*.csv".to_string()]).unwrap(),
            ["/workspace/data/*.csv"]
        );
        for bad in ["/etc/passwd", "../x.csv", "a/../../b", ""] {
            assert!(dataset_paths(&[bad.to_string()]).is_err(), "{bad}");
        }
        assert!(dataset_paths(&[]).is_err());
        assert_eq!(dataset_format(None, "/workspace/a.CSV").unwrap(), "csv");
        assert!(dataset_format(Some("xlsx"), "a").is_err());
    }

    #[test]
    fn a_kernel_error_is_told_apart_from_a_result() {
        let failed: Answer<DatasetDropped> =
            serde_json::from_value(json!({"error": "KeyError: 'no dataset named x'"})).unwrap();
        assert!(matches!(failed, Answer::Failed { .. }));
        let done: Answer<DatasetDropped> = serde_json::from_value(json!({"dropped": "x"})).unwrap();
        assert!(matches!(done, Answer::Done(DatasetDropped { dropped }) if dropped == "x"));
    }
}
