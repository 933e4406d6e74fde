//! The `notebook` tool: numbered cells with manifests, exports with images, and DuckDB
//! datasets, with hostile ids, names and paths refused and no names leaked into the kernel.

mod common;

use common::{HttpServer, call, call_refused, run, structured};
use serde_json::json;

#[tokio::test]
async fn cells_are_recorded_and_exported_with_their_images() {
    let server = HttpServer::start().await;
    let client = server.client().await;
    let first = structured(
        &call(
            &client,
            "notebook",
            json!({"action": "run", "notebook_id": "nb1", "code": "x = 21\nprint(x * 2)"}),
        )
        .await,
    );
    assert_eq!(first["status"], "completed", "{first}");
    assert_eq!(first["cell_index"], 1);
    assert_eq!(first["stdout"], "42\n");
    assert_eq!(first["manifest"], "outputs/notebooks/nb1/cell_0001.json");
    let plot = structured(&call(&client, "notebook", json!({"action": "run", "notebook_id": "nb1", "code": "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()"})).await);
    assert_eq!(plot["cell_index"], 2);
    assert!(
        plot["artifacts"][0].as_str().unwrap().ends_with(".png"),
        "{plot}"
    );
    let frames = structured(&call(&client, "notebook", json!({"action": "run", "notebook_id": "nb1", "code": "import pandas as pd\ndf = pd.DataFrame({'a': [1, 2, 3]})", "save_dfs": true})).await);
    assert_eq!(frames["dataframes"][0]["name"], "df", "{frames}");
    assert_eq!(frames["dataframes"][0]["rows"], 3);
    assert!(
        server
            .data_dir
            .join("workspaces/local/default")
            .join(frames["dataframes"][0]["path"].as_str().unwrap())
            .is_file()
    );

    let cells = structured(
        &call(
            &client,
            "notebook",
            json!({"action": "cells", "notebook_id": "nb1"}),
        )
        .await,
    );
    assert_eq!(cells["cells"].as_array().unwrap().len(), 3);
    let cell = structured(
        &call(
            &client,
            "notebook",
            json!({"action": "cell", "notebook_id": "nb1", "cell_index": 1}),
        )
        .await,
    );
    assert_eq!(cell["code"], "x = 21\nprint(x * 2)");

    let exported = structured(
        &call(
            &client,
            "notebook",
            json!({"action": "export", "notebook_id": "nb1"}),
        )
        .await,
    );
    let workspace = server.data_dir.join("workspaces/local/default");
    let ipynb: serde_json::Value = serde_json::from_slice(
        &std::fs::read(workspace.join(exported["ipynb"].as_str().unwrap())).unwrap(),
    )
    .unwrap();
    assert_eq!(ipynb["nbformat"], 4);
    assert_eq!(ipynb["cells"].as_array().unwrap().len(), 3);
    assert!(
        ipynb["cells"][1]["outputs"]
            .to_string()
            .contains("image/png")
    );
    let html = std::fs::read_to_string(workspace.join(exported["html"].as_str().unwrap())).unwrap();
    assert!(html.contains("data:image/png;base64,"));

    let reset = structured(
        &call(
            &client,
            "notebook",
            json!({"action": "reset", "notebook_id": "nb1"}),
        )
        .await,
    );
    assert_eq!(reset["removed_cells"], 3);
    let again = structured(
        &call(
            &client,
            "notebook",
            json!({"action": "run", "notebook_id": "nb1", "code": "print(x)"}),
        )
        .await,
    );
    assert_eq!(again["cell_index"], 1, "numbering restarts");
    assert_eq!(again["stdout"], "21\n", "the kernel kept its variables");
}

#[tokio::test]
async fn datasets_are_queried_with_duckdb_without_leaking_names() {
    let server = HttpServer::start().await;
    let client = server.client().await;
    call(&client, "write_file", json!({"path": "uploads/sales.csv", "content": "region,amount\nnorth,10\nsouth,5\nnorth,7\n"})).await;
    let registered = structured(&call(&client, "notebook", json!({"action": "datasets.register", "dataset_name": "sales", "paths": ["uploads/sales.csv"]})).await);
    assert_eq!(registered["format"], "csv", "{registered}");
    assert_eq!(registered["schema"][0][0], "region");
    assert_eq!(registered["head"].as_array().unwrap().len(), 3);
    let listed = structured(&call(&client, "notebook", json!({"action": "datasets.list"})).await);
    assert_eq!(listed["duckdb"][0]["name"], "sales");
    let described = structured(
        &call(
            &client,
            "notebook",
            json!({"action": "datasets.describe", "dataset_name": "sales"}),
        )
        .await,
    );
    assert_eq!(described["schema"][1][0], "amount");
    let queried = structured(&call(&client, "notebook", json!({"action": "datasets.sql", "query": "SELECT region, sum(amount) AS total FROM sales GROUP BY region ORDER BY region", "limit_preview": 1})).await);
    assert_eq!(queried["columns"], json!(["region", "total"]), "{queried}");
    assert_eq!(
        queried["rows"].as_array().unwrap().len(),
        1,
        "limit_preview"
    );
    assert_eq!(queried["rows"][0][0], "north");
    assert_eq!(queried["rows"][0][1].as_f64(), Some(17.0));
    assert_eq!(queried["row_count"], 2);
    let result_path = queried["result_path"].as_str().unwrap();
    assert!(
        server
            .data_dir
            .join("workspaces/local/default")
            .join(result_path)
            .is_file(),
        "{result_path}"
    );

    let leaked = run(&client, "print(sorted(k for k in globals() if 'duck' in k.lower() or 'kernelbox' in k or 'DATASETS' in k))", json!({})).await;
    assert_eq!(leaked["stdout"], "[]\n", "{leaked}");

    let dropped = structured(
        &call(
            &client,
            "notebook",
            json!({"action": "datasets.drop", "dataset_name": "sales"}),
        )
        .await,
    );
    assert_eq!(dropped["dropped"], "sales");
    let error = call_refused(
        &client,
        "notebook",
        json!({"action": "datasets.describe", "dataset_name": "sales"}),
    )
    .await;
    assert!(error.contains("no dataset named sales"), "{error}");
    let error = call_refused(
        &client,
        "notebook",
        json!({"action": "datasets.sql", "query": "SELECT * FROM nowhere"}),
    )
    .await;
    assert!(error.contains("datasets.sql failed"), "{error}");
}

#[tokio::test]
async fn hostile_notebook_arguments_are_refused() {
    let server = HttpServer::start().await;
    let client = server.client().await;
    let cases = [
        (
            json!({"action": "run", "notebook_id": "../../etc", "code": "1"}),
            "invalid notebook_id",
        ),
        (json!({"action": "run"}), "code is required"),
        (
            json!({"action": "cell", "notebook_id": "nb"}),
            "cell_index is required",
        ),
        (
            json!({"action": "cell", "notebook_id": "nb", "cell_index": 9}),
            "has no cell 9",
        ),
        (json!({"action": "export", "export_to": "pdf"}), "export_to"),
        (json!({"action": "explode"}), "unknown action"),
        (
            json!({"action": "datasets.register", "dataset_name": "x\"; DROP VIEW y; --", "paths": ["a.csv"]}),
            "invalid dataset_name",
        ),
        (
            json!({"action": "datasets.register", "dataset_name": "ok", "paths": ["../other/a.csv"]}),
            "workspace-relative",
        ),
        (
            json!({"action": "datasets.register", "dataset_name": "ok", "paths": ["/etc/passwd"]}),
            "workspace-relative",
        ),
        (
            json!({"action": "datasets.register", "dataset_name": "ok", "paths": ["a.xlsx"]}),
            "not supported",
        ),
        (
            json!({"action": "datasets.list", "engine": "sqlite"}),
            "engine",
        ),
        (
            json!({"action": "datasets.sql", "query": "SELECT 1", "limit_preview": 0}),
            "limit_preview",
        ),
    ];
    for (arguments, expected) in cases {
        let error = call_refused(&client, "notebook", arguments.clone()).await;
        assert!(
            error.contains(expected),
            "{arguments}: expected {expected:?} in {error:?}"
        );
    }
}
