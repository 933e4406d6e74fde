//! The file and script tools and the HTTP file routes, through a real client, with the
//! workspace as a security boundary: kernel code plants symlinks and the server must never
//! follow them out.

mod common;

use common::{HttpServer, call, call_refused, create_session, run, structured};
use serde_json::json;
use sha2::Digest;

#[tokio::test]
async fn files_round_trip_through_the_tools() {
    let server = HttpServer::start().await;
    let client = server.client().await;
    let written = structured(
        &call(
            &client,
            "write_file",
            json!({"path": "data/notes.txt", "content": "hello\n"}),
        )
        .await,
    );
    assert_eq!(written["path"], "data/notes.txt");
    let read = structured(&call(&client, "read_file", json!({"path": "data/notes.txt"})).await);
    assert_eq!(read["text"], "hello\n");
    assert!(read.get("base64").is_none());

    let binary = structured(
        &call(
            &client,
            "write_file",
            json!({"path": "blob.bin", "content": "AP8Q", "binary_base64": true}),
        )
        .await,
    );
    assert_eq!(binary["path"], "blob.bin");
    let read = structured(&call(&client, "read_file", json!({"path": "blob.bin"})).await);
    assert_eq!(read["base64"], "AP8Q");
    let start = structured(
        &call(
            &client,
            "read_file",
            json!({"path": "data/notes.txt", "max_bytes": 2}),
        )
        .await,
    );
    assert_eq!(start["text"], "he");
    assert_eq!(start["truncated"], true);

    let seen = run(
        &client,
        "print(open('data/notes.txt').read(), end='')",
        json!({}),
    )
    .await;
    assert_eq!(
        seen["stdout"], "hello\n",
        "the kernel sees what the tools wrote"
    );

    let flat = structured(&call(&client, "list_files", json!({})).await);
    assert_eq!(flat["root"], ".");
    let files = flat["files"].as_array().unwrap();
    for expected in ["blob.bin", "data", "outputs", "scripts", "uploads"] {
        assert!(
            files.iter().any(|f| f == expected),
            "{expected} missing from {flat}"
        );
    }
    let recursive = structured(
        &call(
            &client,
            "list_files",
            json!({"path": "data", "recursive": true}),
        )
        .await,
    );
    assert_eq!(recursive["files"], json!(["data/notes.txt"]));
    let tree =
        structured(&call(&client, "list_files", json!({"path": "data", "tree": true})).await);
    assert_eq!(tree["tree"], "data/\n└── notes.txt");

    let deleted = structured(&call(&client, "delete_file", json!({"filename": "blob.bin"})).await);
    assert_eq!(deleted["success"], true);
    let error = call_refused(&client, "read_file", json!({"path": "blob.bin"})).await;
    assert!(error.contains("blob.bin"), "{error}");
}

#[tokio::test]
async fn scripts_are_saved_and_run_inside_the_container() {
    let server = HttpServer::start().await;
    let client = server.client().await;
    let script = "import os, sys\nprint('args', sys.argv[1:])\nprint('uid', os.getuid())\nopen('made_by_script.txt', 'w').write('x')\nsys.exit(3)";
    let saved = structured(
        &call(
            &client,
            "save_script",
            json!({"name": "job", "content": script}),
        )
        .await,
    );
    assert_eq!(saved["script"], "scripts/job.py");
    let ran = structured(
        &call(
            &client,
            "run_script",
            json!({"path": "scripts/job.py", "args": ["a", "b c"]}),
        )
        .await,
    );
    assert_eq!(ran["stdout"], "args ['a', 'b c']\nuid 1000\n", "{ran}");
    assert_eq!(ran["returncode"], 3);
    assert_eq!(ran["new_files"], json!(["made_by_script.txt"]));
    assert_eq!(ran["timed_out"], false);

    call(
        &client,
        "save_script",
        json!({"name": "slow.py", "content": "import time\ntime.sleep(30)"}),
    )
    .await;
    let slow = structured(
        &call(
            &client,
            "run_script",
            json!({"path": "scripts/slow.py", "timeout": 1}),
        )
        .await,
    );
    assert_eq!(slow["timed_out"], true, "{slow}");

    let missing = call_refused(&client, "run_script", json!({"path": "scripts/nope.py"})).await;
    assert!(missing.contains("nope.py"), "{missing}");
    let info = structured(&call(&client, "get_workspace_info", json!({})).await);
    assert_eq!(info["scripts"], "/workspace/scripts");
}

#[tokio::test]
async fn no_file_tool_follows_a_path_out_of_the_workspace() {
    let server = HttpServer::start().await;
    let client = server.client().await;
    create_session(&client, "victim", json!({})).await;
    call(
        &client,
        "write_file",
        json!({"path": "secret.txt", "content": "victim data", "session_id": "victim"}),
    )
    .await;
    let host_secret = server.data_dir.join("host-secret.txt");
    std::fs::write(&host_secret, "host data").unwrap();

    let planted = run(
        &client,
        "import os\n\
         os.symlink('/etc/passwd', 'passwd_link')\n\
         os.symlink('../victim/secret.txt', 'neighbour_link')\n\
         os.symlink('../../host-secret.txt', 'host_link')\n\
         os.symlink('/', 'root_dir')\n\
         os.symlink('../victim', 'neighbour_dir')\n\
         print('planted')",
        json!({}),
    )
    .await;
    assert_eq!(planted["stdout"], "planted\n", "{planted}");

    for path in [
        "passwd_link",
        "neighbour_link",
        "host_link",
        "root_dir/etc/passwd",
        "neighbour_dir/secret.txt",
        "../victim/secret.txt",
        "../../host-secret.txt",
        "/etc/passwd",
        "outputs/../../victim/secret.txt",
    ] {
        let error = call_refused(&client, "read_file", json!({ "path": path })).await;
        assert!(
            !error.contains("victim data") && !error.contains("root:x"),
            "{path}: {error}"
        );
        let error = call_refused(
            &client,
            "write_file",
            json!({"path": path, "content": "overwritten"}),
        )
        .await;
        assert!(!error.is_empty(), "{path}");
        let response = reqwest::get(format!("{}/files/download/{path}", server.base_url()))
            .await
            .unwrap();
        assert!(
            !response.status().is_success(),
            "download of {path} succeeded"
        );
        let body = response.text().await.unwrap();
        assert!(
            !body.contains("victim data") && !body.contains("root:x"),
            "{path}: {body}"
        );
    }
    for path in ["neighbour_dir", "root_dir", "../victim"] {
        call_refused(
            &client,
            "list_files",
            json!({ "path": path, "recursive": true }),
        )
        .await;
    }
    call_refused(
        &client,
        "run_script",
        json!({"path": "../victim/secret.txt"}),
    )
    .await;

    let deleted = structured(
        &call(
            &client,
            "delete_file",
            json!({"filename": "neighbour_link"}),
        )
        .await,
    );
    assert_eq!(deleted["success"], true, "deleting the link itself is fine");
    assert_eq!(std::fs::read_to_string(&host_secret).unwrap(), "host data");
    let victim = structured(
        &call(
            &client,
            "read_file",
            json!({"path": "secret.txt", "session_id": "victim"}),
        )
        .await,
    );
    assert_eq!(
        victim["text"], "victim data",
        "the neighbour's file is untouched"
    );
}

#[tokio::test]
async fn files_upload_and_download_over_http() {
    let server = HttpServer::start().await;
    let client = server.client().await;
    create_session(&client, "up", json!({})).await;
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(b"a,b\n1,2\n".to_vec()).file_name("../../table.csv"),
    );
    let uploaded: serde_json::Value = reqwest::Client::new()
        .post(format!("{}/files/upload?session_id=up", server.base_url()))
        .multipart(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(uploaded["path"], "uploads/table.csv", "{uploaded}");
    let seen = run(
        &client,
        "print(open('uploads/table.csv').read(), end='')",
        json!({"session_id": "up"}),
    )
    .await;
    assert_eq!(seen["stdout"], "a,b\n1,2\n");

    let response = reqwest::get(format!(
        "{}/files/download/uploads/table.csv?session_id=up",
        server.base_url()
    ))
    .await
    .unwrap();
    assert!(response.status().is_success());
    assert_eq!(response.bytes().await.unwrap().as_ref(), b"a,b\n1,2\n");

    let unknown = reqwest::get(format!(
        "{}/files/download/x?session_id=nobody",
        server.base_url()
    ))
    .await
    .unwrap();
    assert_eq!(unknown.status(), 404);
    let bad = reqwest::get(format!(
        "{}/files/download/x?session_id=a%2Fb",
        server.base_url()
    ))
    .await
    .unwrap();
    assert_eq!(bad.status(), 400);
    let missing = reqwest::get(format!(
        "{}/files/download/none.txt?session_id=up",
        server.base_url()
    ))
    .await
    .unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn oversized_reads_and_writes_are_refused_with_the_limit() {
    let server =
        HttpServer::start_with(&["--max-read-bytes", "1m", "--max-write-bytes", "1m"]).await;
    let client = server.client().await;
    let big = "x".repeat((1 << 20) + 1);
    let error = call_refused(
        &client,
        "write_file",
        json!({"path": "big.txt", "content": big}),
    )
    .await;
    assert!(error.contains("1048576"), "{error}");
    run(
        &client,
        "open('big.txt', 'w').write('x' * (2 * 1024 * 1024))",
        json!({}),
    )
    .await;
    let error = call_refused(&client, "read_file", json!({"path": "big.txt"})).await;
    assert!(error.contains("read limit"), "{error}");
    let start = structured(
        &call(
            &client,
            "read_file",
            json!({"path": "big.txt", "max_bytes": 10}),
        )
        .await,
    );
    assert_eq!(start["text"], "xxxxxxxxxx");
    assert_eq!(start["size"], 2 * 1024 * 1024);
}

#[tokio::test]
async fn a_file_larger_than_one_message_is_read_in_parts_that_each_fit() {
    let server = HttpServer::start().await;
    let client = server.client().await;
    // Control characters grow six times as JSON: the cut must hold whatever the text is.
    let made = run(
        &client,
        "import hashlib\ntext = ''.join(chr(i % 128) for i in range(3 * 2**20))\nopen('big.log', 'w').write(text)\nprint(hashlib.sha256(text.encode()).hexdigest())",
        json!({}),
    )
    .await;
    let digest = made["stdout"].as_str().unwrap().trim().to_string();
    let mut text = String::new();
    let mut offset = 0u64;
    let mut parts = 0;
    loop {
        let result = call(
            &client,
            "read_file",
            json!({"path": "big.log", "offset": offset}),
        )
        .await;
        let wire = serde_json::to_string(&result).unwrap().len();
        assert!(wire < 1 << 20, "one read is {wire} bytes as JSON");
        let read = structured(&result);
        assert_eq!(read["offset"], offset);
        text.push_str(read["text"].as_str().unwrap());
        parts += 1;
        match read["next_offset"].as_u64() {
            Some(next) => {
                assert!(read["note"].as_str().unwrap().contains("offset"), "{read}");
                offset = next;
            }
            None => break,
        }
        assert!(parts < 100, "the reads go on");
    }
    assert!(parts > 3, "{parts} parts");
    assert_eq!(text.len(), 3 << 20);
    assert_eq!(hex::encode(sha2::Sha256::digest(text.as_bytes())), digest);

    let resource = client
        .read_resource(rmcp::model::ReadResourceRequestParams::new(
            "kernelbox://sessions/default/files/big.log",
        ))
        .await
        .expect_err("a resource larger than one message is refused")
        .to_string();
    assert!(resource.contains("read_file"), "{resource}");
}
