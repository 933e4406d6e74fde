//! Session records on disk, so a restarted server finds its sessions again: one JSON file per
//! session under `<data-dir>/state/sessions/<owner>/<id>.json`, with what it was created with
//! and how to reach its running kernel (container, run directory or address and ports, HMAC
//! key). The directory is
//! 0700 and each file 0600, written whole through a rename. Records are plain data; this
//! module neither starts nor reaches anything.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::egress::Allowlist;
use crate::ids::SessionId;
use crate::runtime::{KernelEndpoint, Limits};

/// How to reach a session's kernel container again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KernelRecord {
    pub container_id: String,
    /// `run_dir` for a kernel reached over IPC; `host` and `ports` for one reached over TCP
    /// (on Swarm, or left by a version whose Docker kernels had a network).
    #[serde(flatten)]
    pub endpoint: KernelEndpoint,
    /// The kernel's HMAC key: the record files are readable by the server's user only.
    pub key: String,
}

/// One session as it is kept on disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub session_id: String,
    pub owner: String,
    pub description: Option<String>,
    pub egress: bool,
    /// What its kernel may reach through the egress proxy (absent when nothing).
    #[serde(default, skip_serializing_if = "Allowlist::is_empty")]
    pub egress_allow: Allowlist,
    /// Seconds since the Unix epoch.
    pub created_at: i64,
    /// The template its kernels are made from (records before templates: `python`).
    #[serde(default = "default_template")]
    pub template: String,
    pub limits: Limits,
    /// The running kernel, when there is one.
    pub kernel: Option<KernelRecord>,
}

fn default_template() -> String {
    crate::templates::DEFAULT.to_string()
}

#[derive(Debug, thiserror::Error)]
#[error("could not {action} the session record {path}: {source}")]
pub struct RecordError {
    action: &'static str,
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// The records of one data directory.
#[derive(Debug, Clone)]
pub struct RecordStore {
    dir: PathBuf,
}

impl RecordStore {
    pub fn new(data_dir: &Path) -> Self {
        Self {
            dir: data_dir.join("state").join("sessions"),
        }
    }

    fn path(&self, owner: &str, session_id: &str) -> PathBuf {
        self.dir.join(owner).join(format!("{session_id}.json"))
    }

    /// Writes the record whole (a temporary file renamed into place), readable by us only.
    pub fn save(&self, record: &SessionRecord) -> Result<(), RecordError> {
        let path = self.path(&record.owner, &record.session_id);
        let error = |action| {
            let path = path.clone();
            move |source| RecordError {
                action,
                path,
                source,
            }
        };
        let dir = path.parent().unwrap_or(&self.dir);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(error("create the directory of"))?;
        let temporary = dir.join(format!(".{}.tmp", uuid::Uuid::new_v4().simple()));
        let bytes = serde_json::to_vec_pretty(record).map_err(|e| RecordError {
            action: "encode",
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temporary)
            .map_err(error("write"))?;
        file.write_all(&bytes).map_err(error("write"))?;
        std::fs::rename(&temporary, &path).map_err(error("write"))
    }

    pub fn remove(&self, owner: &str, session_id: &str) -> Result<(), RecordError> {
        let path = self.path(owner, session_id);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(RecordError {
                action: "remove",
                path,
                source,
            }),
        }
    }

    /// Every readable record; unreadable ones are logged and skipped.
    pub fn load_all(&self) -> Vec<SessionRecord> {
        let mut records = Vec::new();
        let Ok(owners) = std::fs::read_dir(&self.dir) else {
            return records;
        };
        for owner in owners.flatten() {
            let Ok(files) = std::fs::read_dir(owner.path()) else {
                continue;
            };
            for file in files.flatten() {
                let path = file.path();
                if path.extension().is_none_or(|e| e != "json") {
                    continue;
                }
                match std::fs::read(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|bytes| serde_json::from_slice(&bytes).map_err(|e| e.to_string()))
                {
                    Ok(record) => records.push(record),
                    Err(error) => {
                        tracing::warn!(path = %path.display(), %error, "skipping an unreadable session record");
                    }
                }
            }
        }
        records
    }
}

/// A session that ended with its workspace kept, and when.
#[derive(Debug, Clone, PartialEq)]
pub struct Ended {
    pub owner: String,
    pub session_id: SessionId,
}

/// When sessions ended whose workspaces are kept for a while: an empty marker file per
/// session under `<data-dir>/state/ended/<owner>/<id>`, its modification time the end.
#[derive(Debug, Clone)]
pub struct EndedSessions {
    dir: PathBuf,
}

impl EndedSessions {
    pub fn new(data_dir: &Path) -> Self {
        Self {
            dir: data_dir.join("state").join("ended"),
        }
    }

    pub fn mark(&self, owner: &str, session_id: &SessionId) {
        let dir = self.dir.join(owner);
        let marked = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .and_then(|()| std::fs::write(dir.join(session_id.as_str()), b""));
        if let Err(error) = marked {
            tracing::warn!(%session_id, %error, "could not note when a session ended");
        }
    }

    pub fn forget(&self, owner: &str, session_id: &SessionId) {
        let _ = std::fs::remove_file(self.dir.join(owner).join(session_id.as_str()));
    }

    /// Sessions that ended longer than `retention` ago.
    pub fn expired(&self, retention: std::time::Duration) -> Vec<Ended> {
        let mut expired = Vec::new();
        let Ok(owners) = std::fs::read_dir(&self.dir) else {
            return expired;
        };
        for owner in owners.flatten() {
            let Ok(markers) = std::fs::read_dir(owner.path()) else {
                continue;
            };
            for marker in markers.flatten() {
                let old = marker
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|at| at.elapsed().ok())
                    .is_some_and(|age| age >= retention);
                let id = SessionId::parse(&marker.file_name().to_string_lossy());
                if let (true, Ok(session_id)) = (old, id) {
                    expired.push(Ended {
                        owner: owner.file_name().to_string_lossy().into_owned(),
                        session_id,
                    });
                }
            }
        }
        expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::ChannelPorts;
    use std::os::unix::fs::PermissionsExt;

    fn record(id: &str) -> SessionRecord {
        SessionRecord {
            session_id: id.to_string(),
            owner: "local".to_string(),
            description: Some("d".into()),
            egress: false,
            egress_allow: Allowlist::default(),
            created_at: 1,
            limits: Limits::default(),
            template: "bash".to_string(),
            kernel: Some(KernelRecord {
                container_id: "c".into(),
                endpoint: KernelEndpoint::Ipc {
                    run_dir: "/data/run/abc".into(),
                },
                key: "k".into(),
            }),
        }
    }

    #[test]
    fn records_round_trip_and_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let store = RecordStore::new(dir.path());
        store.save(&record("a")).unwrap();
        store.save(&record("b")).unwrap();
        let mut loaded = store.load_all();
        loaded.sort_by(|x, y| x.session_id.cmp(&y.session_id));
        assert_eq!(loaded, vec![record("a"), record("b")]);
        let file = dir.path().join("state/sessions/local/a.json");
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let parent = file.parent().unwrap();
        assert_eq!(
            std::fs::metadata(parent).unwrap().permissions().mode() & 0o777,
            0o700
        );
        store.remove("local", "a").unwrap();
        store.remove("local", "a").unwrap();
        assert_eq!(store.load_all().len(), 1);
    }

    #[test]
    fn records_written_by_earlier_versions_still_load() {
        let dir = tempfile::tempdir().unwrap();
        let sessions = dir.path().join("state/sessions/local");
        std::fs::create_dir_all(&sessions).unwrap();
        let earlier = r#"{"session_id":"old","owner":"local","description":null,"egress":false,"created_at":1,"limits":{"memory_bytes":268435456,"nano_cpus":500000000,"pids":64,"open_files":1024,"tmp_bytes":268435456},"kernel":null}"#;
        std::fs::write(sessions.join("old.json"), earlier).unwrap();
        let loaded = RecordStore::new(dir.path()).load_all();
        assert_eq!(loaded.len(), 1, "{loaded:?}");
        assert_eq!(loaded[0].template, "python", "records before templates");
        let limits = &loaded[0].limits;
        assert_eq!(
            *limits,
            Limits {
                memory_bytes: 256 << 20,
                nano_cpus: 500_000_000,
                pids: 64,
                open_files: 1024,
                tmp_bytes: 256 << 20,
            }
        );
        let written = serde_json::to_string(&loaded[0]).unwrap();
        assert!(
            written.contains(&earlier[earlier.find("\"limits\"").unwrap()..]),
            "{written}"
        );
    }

    #[test]
    fn a_kernel_record_says_how_its_kernel_is_reached_and_old_tcp_records_still_load() {
        let ipc = serde_json::to_value(record("a").kernel.unwrap()).unwrap();
        assert_eq!(ipc["run_dir"], "/data/run/abc");
        assert!(ipc.get("host").is_none(), "{ipc}");
        let earlier = r#"{"container_id":"c","host":"172.18.0.2","ports":{"shell":5555,"iopub":5556,"stdin":5557,"control":5558,"heartbeat":5559},"key":"k"}"#;
        let tcp: KernelRecord = serde_json::from_str(earlier).unwrap();
        assert_eq!(
            tcp.endpoint,
            KernelEndpoint::Tcp {
                host: "172.18.0.2".into(),
                ports: ChannelPorts::IN_CONTAINER,
            }
        );
        assert_eq!(tcp.key, "k");
        let written = serde_json::to_string(&tcp).unwrap();
        assert_eq!(serde_json::from_str::<KernelRecord>(&written).unwrap(), tcp);
    }

    #[test]
    fn unreadable_records_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let store = RecordStore::new(dir.path());
        store.save(&record("a")).unwrap();
        std::fs::write(dir.path().join("state/sessions/local/bad.json"), "{").unwrap();
        assert_eq!(store.load_all().len(), 1);
    }
}
