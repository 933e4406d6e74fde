//! `install_dependencies`: which package specifiers are accepted (a name, optional extras and
//! version constraints; never a pip option, URL or path), the pip command that installs them
//! into the session's package directory, and the hosts the installer may reach (the index's,
//! or PyPI's). It runs nothing itself.

use crate::egress::Allowlist;
use crate::snippets::PACKAGES_DIR;

/// What pip reaches for PyPI: the index, and the host its files are on.
const PYPI_HOSTS: &str = "pypi.org:443, files.pythonhosted.org:443";

/// At most this many packages per call.
pub const MAX_PACKAGES: usize = 50;

/// Where pip installs from, when not PyPI.
#[derive(Debug, Clone, Default)]
pub struct PackageIndex {
    pub index_url: Option<String>,
    pub trusted_host: Option<String>,
}

impl PackageIndex {
    /// What the installer may reach through the egress proxy: the index URL's host and port
    /// (80 or 443 by its scheme when it names none), or PyPI's two hosts.
    pub fn hosts(&self) -> Result<Allowlist, String> {
        let Some(url) = &self.index_url else {
            return PYPI_HOSTS.parse().map_err(|e| format!("{e}"));
        };
        let bad = |why: &str| format!("--pip-index-url {url:?} {why}");
        let (rest, default_port) = if let Some(rest) = url.strip_prefix("https://") {
            (rest, 443)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (rest, 80)
        } else {
            return Err(bad("must start with http:// or https://"));
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let pattern = if host_port.contains(':') {
            host_port.to_string()
        } else {
            format!("{host_port}:{default_port}")
        };
        pattern
            .parse()
            .map_err(|e| bad(&format!("does not name a host kernelbox can allow: {e}")))
    }
}

/// Checks one specifier, e.g. `requests`, `pandas==2.2.1`, `black[jupyter]>=24,<25`.
pub fn validate(spec: &str) -> Result<(), String> {
    let refuse = |why: &str| {
        Err(format!(
            "package {spec:?} is not accepted: {why}; give a name with optional extras and version constraints, such as requests or pandas>=2,<3"
        ))
    };
    let spec = spec.trim();
    if spec.is_empty() {
        return refuse("it is empty");
    }
    if spec.len() > 200 {
        return refuse("it is longer than 200 characters");
    }
    if spec.starts_with('-') {
        return refuse("pip options are not allowed");
    }
    let name_end = spec
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        .unwrap_or(spec.len());
    let (name, mut rest) = spec.split_at(name_end);
    if name.is_empty() || !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return refuse("it must start with a package name");
    }
    if let Some(extras) = rest.strip_prefix('[') {
        let Some((inside, after)) = extras.split_once(']') else {
            return refuse("its extras are not closed with ]");
        };
        let valid = inside.split(',').all(|extra| {
            let extra = extra.trim();
            !extra.is_empty()
                && extra
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        });
        if !valid {
            return refuse("its extras must be names separated by commas");
        }
        rest = after;
    }
    let rest = rest.trim();
    if rest.is_empty() {
        return Ok(());
    }
    for clause in rest.split(',') {
        let clause = clause.trim();
        let operator = ["===", "~=", "==", "!=", "<=", ">=", "<", ">"]
            .into_iter()
            .find(|op| clause.starts_with(op));
        let Some(operator) = operator else {
            return refuse("a version constraint must start with ==, !=, <=, >=, <, >, ~= or ===");
        };
        let version = clause[operator.len()..].trim();
        let valid = !version.is_empty()
            && version.chars().all(|c| {
                c.is_ascii_alphanumeric() || matches!(c, '.' | '*' | '+' | '!' | '_' | '-')
            });
        if !valid {
            return refuse("a version may hold only letters, digits and . * + ! _ -");
        }
    }
    Ok(())
}

/// The pip command line, run inside the session's container.
pub fn pip_command(packages: &[String], index: &PackageIndex) -> Vec<String> {
    let mut argv: Vec<String> = [
        "python3",
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--no-input",
        "--no-cache-dir",
        "--target",
        PACKAGES_DIR,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(url) = &index.index_url {
        argv.extend(["--index-url".to_string(), url.clone()]);
    }
    if let Some(host) = &index.trusted_host {
        argv.extend(["--trusted-host".to_string(), host.clone()]);
    }
    argv.push("--".to_string());
    argv.extend(packages.iter().map(|p| p.trim().to_string()));
    argv
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_specifiers_are_accepted() {
        for spec in [
            "requests",
            "pandas==2.2.1",
            "black[jupyter]>=24,<25",
            "zope.interface",
            "typing_extensions ~= 4.0",
            "pkg===1.0+local",
            "numpy!=1.*",
        ] {
            assert_eq!(validate(spec), Ok(()), "{spec}");
        }
    }

    #[test]
    fn options_urls_paths_and_markers_are_refused() {
        for spec in [
            "",
            "--index-url=http://evil",
            "-r requirements.txt",
            "-e .",
            "https://example.com/pkg.whl",
            "git+https://example.com/repo",
            "./local",
            "/abs/path",
            "pkg @ https://x",
            "pkg; os_name=='nt'",
            "pkg[extra",
            "pkg>=1 --pre",
            "pkg==$(rm -rf /)",
        ] {
            let error = validate(spec).unwrap_err();
            assert!(error.contains("is not accepted"), "{spec}: {error}");
        }
    }

    #[test]
    fn the_installer_reaches_the_index_host_or_pypi() {
        let hosts = |url: Option<&str>| {
            PackageIndex {
                index_url: url.map(str::to_string),
                trusted_host: None,
            }
            .hosts()
            .map(|list| list.to_string())
        };
        assert_eq!(
            hosts(None).unwrap(),
            "pypi.org:443, files.pythonhosted.org:443"
        );
        assert_eq!(
            hosts(Some("http://172.18.0.2:8080/simple/")).unwrap(),
            "172.18.0.2/32:8080"
        );
        assert_eq!(
            hosts(Some("https://user:secret@mirror.example.com/pypi")).unwrap(),
            "mirror.example.com:443"
        );
        assert_eq!(hosts(Some("http://devpi:3141")).unwrap(), "devpi:3141");
        assert!(
            hosts(Some("ftp://mirror/"))
                .unwrap_err()
                .contains("http://")
        );
        assert!(hosts(Some("http://[::1]/")).is_err());
    }

    #[test]
    fn the_pip_command_ends_options_before_the_packages() {
        let argv = pip_command(
            &["requests".to_string()],
            &PackageIndex {
                index_url: Some("http://mirror/simple".into()),
                trusted_host: Some("mirror".into()),
            },
        );
        let dashes = argv.iter().position(|a| a == "--").unwrap();
        assert_eq!(argv[dashes + 1..], ["requests"]);
        assert!(argv.contains(&PACKAGES_DIR.to_string()));
        assert!(
            argv.windows(2)
                .any(|w| w == ["--index-url", "http://mirror/simple"])
        );
    }
}
