//! The kernel image this recipe builds: no setuid or setgid files, the packages the tools rely
//! on, the inline plot backend, uid 1000 and tini as PID 1.

mod common;

use std::process::Command;

fn in_image(args: &[&str]) -> String {
    let output = Command::new("docker")
        .args([
            "run",
            "--rm",
            "--read-only",
            "--tmpfs",
            "/tmp",
            "--network",
            "none",
            &common::kernel_image(),
        ])
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

#[test]
fn the_kernel_image_has_no_setuid_or_setgid_files() {
    let found = in_image(&[
        "sh",
        "-c",
        "find / -xdev -perm /6000 -type f 2>/dev/null || true",
    ]);
    assert!(found.is_empty(), "setuid or setgid files: {found}");
}

#[test]
fn the_kernel_image_runs_as_uid_1000_under_tini_with_the_tools_packages() {
    assert_eq!(in_image(&["id", "-u"]), "1000");
    assert_eq!(in_image(&["sh", "-c", "cat /proc/1/comm"]), "tini");
    let versions = in_image(&[
        "python3",
        "-c",
        "import ipykernel, numpy, pandas, matplotlib, PIL, duckdb, os; print(os.environ['MPLBACKEND'])",
    ]);
    assert_eq!(versions, "module://matplotlib_inline.backend_inline");
}
