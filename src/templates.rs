//! Kernel templates: what a session's kernel is (its image, how the image starts it, its
//! language, its default caps and a description), named in `create_session(template=...)`.
//! The built-in catalog holds `python` (the default), `bash` and `r`; `--templates FILE`
//! (TOML or JSON) replaces it. Every template runs under the same sandbox: in the server's
//! kernel image by ipykernel's app with the template's kernel class, or in an image of its
//! own by a launcher's argv, as in a Jupyter kernelspec. This module only parses and looks
//! up templates; it must not start kernels or talk to Docker.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::ids;
use crate::runtime::{CONNECTION_FILE_ARG as CONNECTION_FILE, KernelLaunch};
use crate::units::{ByteSize, Cpus, Pids};

/// The template sessions get when they name none.
pub const DEFAULT: &str = "python";

/// The language whose kernels run kernelbox's own helper code (variables, state, installs,
/// datasets).
pub const PYTHON: &str = "python";

/// One kind of kernel.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Template {
    /// The kernel's language, as clients name it (`python`, `bash`).
    pub language: String,
    /// What the template is for, shown by `list_templates`.
    pub description: String,
    /// The image its kernels run in (a tag, id or registry digest); the server's kernel
    /// image when absent.
    #[serde(default)]
    pub image: Option<String>,
    /// The ipykernel `Kernel` subclass to run, as `module.Class`; ipykernel's own IPython
    /// kernel when absent. Only for templates in the server's kernel image.
    #[serde(default)]
    pub kernel_class: Option<String>,
    /// The command that starts the kernel, as a kernelspec's `argv`, with `{connection_file}`
    /// where the connection file goes. ipykernel's app (with `kernel_class`) when absent.
    #[serde(default)]
    pub argv: Option<Vec<String>>,
    /// Memory per kernel, at most the server's `--memory`.
    #[serde(default)]
    pub memory: Option<ByteSize>,
    /// CPUs per kernel, at most the server's `--cpus`.
    #[serde(default)]
    pub cpus: Option<Cpus>,
    /// Processes per kernel, at most the server's `--pids-limit`.
    #[serde(default)]
    pub pids_limit: Option<Pids>,
    /// Kernels of this template kept started ahead of demand (`--pool-size`, when above 0,
    /// sets the default template's).
    #[serde(default)]
    pub pool_size: Option<usize>,
}

impl Template {
    /// Whether kernelbox's Python helpers run in its kernels.
    pub fn is_python(&self) -> bool {
        self.language == PYTHON
    }

    /// How the kernel starts in its container.
    pub fn launch(&self) -> KernelLaunch {
        match &self.argv {
            Some(argv) => KernelLaunch::Argv(argv.clone()),
            None => KernelLaunch::IPyKernel {
                kernel_class: self.kernel_class.clone(),
            },
        }
    }

    /// Why the template cannot be run, if it cannot: checks that need no engine.
    fn invalid(&self) -> Option<String> {
        if !is_identifier_path(self.kernel_class.as_deref().unwrap_or("a.B")) {
            return Some(
                "kernel_class must be a dotted Python path such as bash_kernel.kernel.BashKernel"
                    .to_string(),
            );
        }
        if self.pool_size.is_some_and(|size| size > 256) {
            return Some("pool_size must be from 0 to 256".to_string());
        }
        if self.language.is_empty() || self.language.len() > 32 {
            return Some("language must be 1 to 32 characters".to_string());
        }
        if self.image.as_ref().is_some_and(|image| {
            image.is_empty() || image.len() > 512 || image.chars().any(|c| c.is_whitespace())
        }) {
            return Some(
                "image must be a tag, id or digest reference: 1 to 512 characters, no spaces"
                    .to_string(),
            );
        }
        match &self.argv {
            Some(_) if self.kernel_class.is_some() => Some(
                "give kernel_class (ipykernel's app runs it) or argv (the command runs the kernel), not both"
                    .to_string(),
            ),
            Some(argv) if argv.is_empty() || argv.len() > 64 => {
                Some("argv must hold 1 to 64 arguments".to_string())
            }
            Some(argv) if !argv.iter().any(|arg| arg.contains(CONNECTION_FILE)) => Some(format!(
                "argv must say where the connection file goes, with {CONNECTION_FILE} in an argument"
            )),
            Some(argv) if argv.iter().any(|arg| arg.contains('\0') || arg.len() > 4096) => {
                Some("each argument of argv is at most 4096 bytes, with no NUL".to_string())
            }
            None if self.image.is_some() && self.kernel_class.is_none() && !self.is_python() => {
                Some(
                    "a template with an image of its own and a language other than python needs argv, the command that starts its kernel"
                        .to_string(),
                )
            }
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("could not read the templates file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the templates file {path} is not valid {format}: {reason}")]
    Parse {
        path: PathBuf,
        format: &'static str,
        reason: String,
    },
    #[error(
        "the templates file {path} must end in .toml or .json (it is read as what its name says)"
    )]
    Format { path: PathBuf },
    #[error("template {name:?} in {path}: {reason}")]
    Invalid {
        path: PathBuf,
        name: String,
        reason: String,
    },
    #[error(
        "the templates file {path} has no template named {DEFAULT:?}, which sessions get when they name none"
    )]
    NoDefault { path: PathBuf },
    #[error("there is no template {name:?}; the templates are: {known}")]
    Unknown { name: String, known: String },
}

/// The templates sessions may be created from, by name.
#[derive(Debug, Clone)]
pub struct Catalog {
    templates: BTreeMap<String, Arc<Template>>,
}

impl Catalog {
    /// The templates kernelbox's own images serve: `python` and `bash` in the kernel image,
    /// `r` in `r_image` (IRkernel).
    pub fn builtin(r_image: &str) -> Self {
        let python = Template {
            language: PYTHON.to_string(),
            description: "Python 3 in IPython, with numpy, pandas, matplotlib, requests and duckdb; every tool works".to_string(),
            image: None,
            kernel_class: None,
            argv: None,
            memory: None,
            cpus: None,
            pids_limit: None,
            pool_size: None,
        };
        let bash = Template {
            language: "bash".to_string(),
            description: "A bash shell (bash_kernel): each cell runs as shell commands in one persistent shell, whose exit status is the cell's".to_string(),
            image: None,
            kernel_class: Some("bash_kernel.kernel.BashKernel".to_string()),
            argv: None,
            memory: None,
            cpus: None,
            pids_limit: None,
            pool_size: None,
        };
        let r = Template {
            language: "r".to_string(),
            description: "R 4.2 (IRkernel) with R's recommended packages; plots come back as images. Python-only tools (variables, installs, datasets, preserve_state) refuse it".to_string(),
            image: Some(r_image.to_string()),
            kernel_class: None,
            argv: Some(
                ["R", "--slave", "-e", "IRkernel::main()", "--args", CONNECTION_FILE]
                    .map(str::to_string)
                    .to_vec(),
            ),
            memory: None,
            cpus: None,
            pids_limit: None,
            pool_size: None,
        };
        Self {
            templates: [("python", python), ("bash", bash), ("r", r)]
                .into_iter()
                .map(|(name, template)| (name.to_string(), Arc::new(template)))
                .collect(),
        }
    }

    /// The catalog a templates file holds: a table (TOML) or object (JSON) of templates by
    /// name, one of them `python`.
    pub fn load(path: &Path) -> Result<Self, TemplateError> {
        let text = std::fs::read_to_string(path).map_err(|source| TemplateError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let parse_error = |format: &'static str| {
            move |reason: String| TemplateError::Parse {
                path: path.to_path_buf(),
                format,
                reason,
            }
        };
        let templates: BTreeMap<String, Template> = match path.extension().and_then(|e| e.to_str())
        {
            Some("toml") => {
                toml::from_str(&text).map_err(|e| parse_error("TOML")(e.to_string()))?
            }
            Some("json") => {
                serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_str(&text))
                    .map_err(|e| parse_error("JSON")(format!("at {}: {}", e.path(), e.inner())))?
            }
            _ => {
                return Err(TemplateError::Format {
                    path: path.to_path_buf(),
                });
            }
        };
        for (name, template) in &templates {
            let invalid = |reason: String| TemplateError::Invalid {
                path: path.to_path_buf(),
                name: name.clone(),
                reason,
            };
            if !ids::is_plain_name(name) {
                return Err(invalid(
                    "a template name is 1 to 64 of A-Z a-z 0-9 _ -".to_string(),
                ));
            }
            if let Some(reason) = template.invalid() {
                return Err(invalid(reason));
            }
        }
        if !templates.contains_key(DEFAULT) {
            return Err(TemplateError::NoDefault {
                path: path.to_path_buf(),
            });
        }
        Ok(Self {
            templates: templates
                .into_iter()
                .map(|(name, template)| (name, Arc::new(template)))
                .collect(),
        })
    }

    /// The template `name`, or why there is none.
    pub fn get(&self, name: &str) -> Result<Arc<Template>, TemplateError> {
        self.templates
            .get(name)
            .cloned()
            .ok_or_else(|| TemplateError::Unknown {
                name: name.to_string(),
                known: self.names().join(", "),
            })
    }

    /// Every template, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Arc<Template>)> {
        self.templates.iter().map(|(name, t)| (name.as_str(), t))
    }

    pub fn names(&self) -> Vec<String> {
        self.templates.keys().cloned().collect()
    }
}

/// Whether `path` is a dotted Python path of at least two identifiers.
fn is_identifier_path(path: &str) -> bool {
    let parts: Vec<&str> = path.split('.').collect();
    parts.len() >= 2
        && parts.iter().all(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(name: &str, text: &str) -> Result<Catalog, TemplateError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        Catalog::load(&path)
    }

    #[test]
    fn builtin_catalog_has_python_bash_and_r() {
        let catalog = Catalog::builtin("r-image");
        assert_eq!(catalog.names(), ["bash", "python", "r"]);
        assert!(catalog.get(DEFAULT).unwrap().is_python());
        for (_, template) in catalog.iter() {
            assert_eq!(template.invalid(), None);
        }
        assert_eq!(catalog.get("r").unwrap().image.as_deref(), Some("r-image"));
        let error = catalog.get("julia").unwrap_err().to_string();
        assert_eq!(
            error,
            "there is no template \"julia\"; the templates are: bash, python, r"
        );
    }

    #[test]
    fn toml_and_json_files_load_alike() {
        let toml = "[python]\nlanguage = \"python\"\ndescription = \"small\"\nmemory = \"256m\"\n\n[shell]\nlanguage = \"bash\"\ndescription = \"sh\"\nkernel_class = \"bash_kernel.kernel.BashKernel\"\n";
        let json = r#"{"python": {"language": "python", "description": "small", "memory": "256m"},
            "shell": {"language": "bash", "description": "sh", "kernel_class": "bash_kernel.kernel.BashKernel"}}"#;
        let from_toml = load("t.toml", toml).unwrap();
        let from_json = load("t.json", json).unwrap();
        assert_eq!(from_toml.names(), ["python", "shell"]);
        assert_eq!(
            from_toml.get("python").unwrap(),
            from_json.get("python").unwrap()
        );
        assert_eq!(
            from_toml.get("python").unwrap().memory.unwrap().bytes(),
            256 << 20
        );
    }

    #[test]
    fn bad_files_are_refused_naming_what_is_wrong() {
        let cases = [
            ("t.yaml", "python: {}", "must end in .toml or .json"),
            (
                "t.toml",
                "[python]\nlanguage = \"python\"\n",
                "missing field `description`",
            ),
            (
                "t.toml",
                "[python]\nlanguage = \"python\"\ndescription = \"x\"\nimages = \"y\"\n",
                "unknown field `images`",
            ),
            (
                "t.toml",
                "[python]\nlanguage = \"python\"\ndescription = \"x\"\n[r]\nlanguage = \"r\"\ndescription = \"x\"\nimage = \"my-r\"\n",
                "template \"r\" in",
            ),
            (
                "t.toml",
                "[python]\nlanguage = \"python\"\ndescription = \"x\"\nargv = [\"python3\", \"-m\", \"ipykernel\"]\n",
                "argv must say where the connection file goes",
            ),
            (
                "t.toml",
                "[python]\nlanguage = \"python\"\ndescription = \"x\"\nargv = [\"k\", \"{connection_file}\"]\nkernel_class = \"a.B\"\n",
                "not both",
            ),
            (
                "t.toml",
                "[python]\nlanguage = \"python\"\ndescription = \"x\"\nimage = \"a b\"\n",
                "image must be a tag, id or digest reference",
            ),
            (
                "t.toml",
                "[shell]\nlanguage = \"bash\"\ndescription = \"x\"\n",
                "no template named \"python\"",
            ),
            (
                "t.toml",
                "[python]\nlanguage = \"python\"\ndescription = \"x\"\nkernel_class = \"os; rm\"\n",
                "kernel_class must be a dotted Python path",
            ),
            (
                "t.json",
                r#"{"python": {"language": "python", "description": "x", "memory": "lots"}}"#,
                "at python.memory: expected a size such as 512m or 2g, got \"lots\"",
            ),
            (
                "t.json",
                r#"{"../x": {"language": "python", "description": "x"}}"#,
                "template \"../x\"",
            ),
        ];
        for (name, text, expected) in cases {
            let error = load(name, text).unwrap_err().to_string();
            assert!(error.contains(expected), "{text}: {error}");
        }
    }
}
