//! Property tests over everything that parses input from a client or a kernel: tool
//! arguments, Jupyter messages, kernel text, session ids, package specifiers, workspace
//! paths, resource URIs, tokens files, egress patterns (and, in `egress/proxy.rs`, the
//! proxy's request heads), and the sizes, CPU counts and seconds of `units`. Each must answer arbitrary input with a value or a
//! clear error, never a panic, and must never accept what its rule forbids. Test-only.

use proptest::prelude::*;
use serde_json::Value;

/// Arbitrary JSON, a few levels deep.
fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,40}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,12}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Objects shaped like tool arguments: known field names with arbitrary values.
fn arguments() -> impl Strategy<Value = Value> {
    let field = prop::sample::select(vec![
        "code",
        "session_id",
        "timeout",
        "path",
        "packages",
        "action",
        "cursor_pos",
        "notebook_id",
        "paths",
        "memory",
        "cpus",
        "pids_limit",
        "bogus",
    ]);
    prop::collection::btree_map(field, json(), 0..5)
        .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()))
}

fn parse<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, String> {
    serde_path_to_error::deserialize(value).map_err(|e| format!("{}: {}", e.path(), e.inner()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn tool_arguments_parse_or_fail_cleanly(value in arguments()) {
        use crate::mcp::params::*;
        let _ = parse::<RunPythonCodeParams>(value.clone());
        let _ = parse::<CreateSessionParams>(value.clone());
        let _ = parse::<ReadFileParams>(value.clone());
        let _ = parse::<InstallParams>(value.clone());
        let _ = parse::<NotebookParams>(value.clone());
        let _ = parse::<CompletionParams>(value);
    }

    #[test]
    fn jupyter_messages_of_any_shape_are_parsed_or_refused(
        msg_type in prop_oneof![
            prop::sample::select(vec![
                "stream", "display_data", "execute_result", "error", "status", "execute_reply",
                "update_display_data", "clear_output",
            ]).prop_map(str::to_string),
            "[a-z_]{1,20}",
        ],
        content in json(),
    ) {
        let message = serde_json::json!({
            "header": {"msg_id": "m", "username": "u", "session": "s", "date": "2026-01-01T00:00:00Z", "msg_type": msg_type, "version": "5.3"},
            "parent_header": {"msg_id": "p", "username": "u", "session": "s", "date": "2026-01-01T00:00:00Z", "msg_type": "execute_request", "version": "5.3"},
            "metadata": {},
            "content": content,
        });
        if let Some(message) = crate::kernel::message_from_json(message) {
            let mut output = crate::kernel::ExecutionOutput::with_stream_limit(64);
            output.absorb(&message);
            output.absorb_reply(&message);
            prop_assert!(output.stdout.len() <= 64 && output.stderr.len() <= 64 + 4096);
        }
    }

    #[test]
    fn stripped_kernel_text_holds_no_escape(text in ".{0,200}", codes in prop::collection::vec("\u{1b}\\[[0-9;]{0,6}[A-Za-z]", 0..4)) {
        let mixed = codes.iter().fold(text, |acc, code| format!("{acc}{code}"));
        let escape = '\u{1b}';
        prop_assert!(!crate::kernel::strip_ansi(&mixed).contains(escape));
    }

    #[test]
    fn egress_patterns_parse_and_print_back_or_fail_cleanly(
        text in prop_oneof![".{0,30}", "(\\*\\.)?[a-z0-9.-]{0,20}(/[0-9]{1,2})?(:[0-9]{0,6})?"]
    ) {
        if let Ok(rule) = text.parse::<crate::egress::EgressRule>() {
            let shown = rule.to_string();
            prop_assert_eq!(shown.parse::<crate::egress::EgressRule>(), Ok(rule));
            prop_assert!(shown != "*" && !shown.contains("://"));
        }
    }

    #[test]
    fn session_ids_are_accepted_exactly_by_the_rule(id in ".{0,70}") {
        let rule = !id.is_empty() && id.len() <= 64
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        prop_assert_eq!(crate::session::SessionId::parse(&id).is_ok(), rule);
    }

    #[test]
    fn accepted_package_specifiers_carry_no_option_url_or_path(spec in ".{0,60}") {
        if crate::packages::validate(&spec).is_ok() {
            let spec = spec.trim();
            prop_assert!(!spec.starts_with('-'));
            for forbidden in ['/', ':', ';', '@', ' ', '$', '`', '\\'] {
                prop_assert!(!spec.contains(forbidden), "{} in {}", forbidden, spec);
            }
        }
    }

    #[test]
    fn resource_uris_parse_or_fail_cleanly(uri in "(kernelbox://sessions/)?[a-z%0-9/._-]{0,40}") {
        if let Ok((_, path)) = crate::mcp::resources::parse_uri(&uri) {
            prop_assert!(uri.starts_with("kernelbox://sessions/"));
            prop_assert!(!path.is_empty());
        }
    }

    #[test]
    fn sizes_parse_to_at_least_a_mebibyte_or_fail_cleanly(
        text in prop_oneof![".{0,12}", "[0-9]{0,22}[kKmMgGtT]?[iI]?[bB]?"],
    ) {
        if let Ok(size) = text.parse::<crate::units::ByteSize>() {
            prop_assert!(size.bytes() >= 1 << 20, "{} gave {}", text, size.bytes());
        }
    }

    #[test]
    fn cpus_are_accepted_exactly_within_their_bounds(cpus in any::<f64>(), text in ".{0,12}") {
        let accepted = crate::units::Cpus::try_from(cpus);
        prop_assert_eq!(accepted.is_ok(), cpus.is_finite() && (0.01..=512.0).contains(&cpus));
        if let Ok(cpus) = text.parse::<crate::units::Cpus>() {
            prop_assert!((10_000_000..=512_000_000_000).contains(&cpus.nano()));
        }
    }

    #[test]
    fn seconds_parse_within_their_bounds_or_fail_cleanly(text in prop_oneof![".{0,12}", "-?[0-9]{0,9}(\\.[0-9]{0,4})?"]) {
        if let Ok(seconds) = text.parse::<crate::units::Seconds>() {
            let seconds = seconds.duration();
            prop_assert!(!seconds.is_zero() && seconds.as_secs() <= 86_400);
        }
        if let Ok(seconds) = text.parse::<crate::units::OptionalSeconds>() {
            prop_assert!(seconds.duration().is_none_or(|d| d.as_secs() <= 31_536_000));
        }
    }

    #[test]
    fn tokens_files_of_any_shape_load_or_fail_cleanly(value in json()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.json");
        std::fs::write(&path, value.to_string()).unwrap();
        let _ = crate::auth::TokenStore::load(&path);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn no_workspace_path_reads_or_writes_outside_the_workspace(
        parts in prop::collection::vec(prop_oneof![
            prop::sample::select(vec!["..", ".", "", "outside", "link", "inside", "/"]).prop_map(str::to_string),
            "[a-z]{1,5}",
        ], 1..5)
    ) {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("secret"), "secret").unwrap();
        let user = crate::workspace::KernelUser {
            uid: rustix::process::geteuid().as_raw(),
            gid: rustix::process::getegid().as_raw(),
        };
        let workspace = crate::workspace::Workspace::prepare(dir.path().join("ws"), user).unwrap();
        std::os::unix::fs::symlink(&outside, workspace.root().join("link")).unwrap();
        std::fs::create_dir(workspace.root().join("inside")).unwrap();
        let path = parts.join("/");
        if let Ok(file) = workspace.read(&format!("{path}/secret"), 0, 100) {
            prop_assert_ne!(file.bytes, b"secret".to_vec());
        }
        let _ = workspace.write(&format!("{path}/planted"), b"x", 10);
        prop_assert!(!outside.join("planted").exists(), "wrote through {}", path);
        prop_assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);
    }
}
