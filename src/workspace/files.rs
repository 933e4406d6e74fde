//! Reading, writing, deleting and opening for download one file of a workspace on a client's
//! behalf. Every path is opened beneath the root through `resolve.rs` with `O_NOFOLLOW`, the
//! type is checked on the opened descriptor, and a write lands by renaming a fresh temporary
//! file into place. It must never follow a symlink, block on a fifo, or write into an existing
//! inode (a hard link or a swapped file could make that write land somewhere else).

use std::io::{Read, Write};
use std::os::fd::OwnedFd;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use super::path::RelPath;
use super::resolve::{file_type, open_beneath, open_dir_beneath};
use super::{Handed, Workspace, WorkspaceError, give_to, kind_name};

/// A run of a file's bytes, read for a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileBytes {
    pub bytes: Vec<u8>,
    /// The whole file's size.
    pub size: u64,
    /// Whether the file holds more after `bytes`.
    pub truncated: bool,
}

impl Workspace {
    /// Reads at most `max_bytes` of the regular file at `path`, from byte `offset` on (none
    /// past its end).
    pub fn read(
        &self,
        path: &str,
        offset: u64,
        max_bytes: usize,
    ) -> Result<FileBytes, WorkspaceError> {
        let (rel, mut file, size) = self.open_file(path, "read")?;
        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(offset.min(size))).map_err(
            |source| WorkspaceError::Io {
                action: "read",
                path: rel.to_string(),
                source,
            },
        )?;
        let size_after = size.saturating_sub(offset);
        let limit = u64::try_from(max_bytes).unwrap_or(u64::MAX);
        let capacity = usize::try_from(size_after).map_or(max_bytes, |left| left.min(max_bytes));
        let mut bytes = Vec::with_capacity(capacity);
        file.take(limit.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(|source| WorkspaceError::Io {
                action: "read",
                path: rel.to_string(),
                source,
            })?;
        let truncated = bytes.len() > max_bytes;
        bytes.truncate(max_bytes);
        Ok(FileBytes {
            bytes,
            size,
            truncated,
        })
    }

    /// Opens the regular file at `path` for streaming; returns it and its size.
    pub fn open_read(&self, path: &str) -> Result<(std::fs::File, u64), WorkspaceError> {
        let (_, file, size) = self.open_file(path, "open")?;
        Ok((file, size))
    }

    /// The normalized workspace-relative path of the existing regular file at `path` (never
    /// a symlink, a directory or anything outside the workspace).
    pub fn existing_file(&self, path: &str) -> Result<String, WorkspaceError> {
        let (rel, _, _) = self.open_file(path, "find")?;
        Ok(rel.as_str().to_string())
    }

    /// Writes `bytes` as the whole content of the regular file at `path` (created, or
    /// replaced), creating missing parent directories, and returns the normalized path. The
    /// bytes go to a temporary file in the same directory that is then renamed into place, so
    /// a reader sees the old content or the new, never half of it.
    pub fn write(
        &self,
        path: &str,
        bytes: &[u8],
        max_bytes: usize,
    ) -> Result<String, WorkspaceError> {
        let rel = RelPath::parse(path)?;
        let Some((parent, name)) = rel.split_last() else {
            return Err(WorkspaceError::InvalidPath {
                path: path.to_string(),
                reason: "it is the workspace root, a directory; name a file inside it",
            });
        };
        if bytes.len() > max_bytes {
            return Err(WorkspaceError::TooLarge {
                path: rel.to_string(),
                size: bytes.len(),
                limit: max_bytes,
            });
        }
        if self.quota_bytes() != u64::MAX {
            let used = self.usage();
            if used.saturating_add(bytes.len() as u64) > self.quota_bytes() {
                return Err(WorkspaceError::QuotaExceeded {
                    path: rel.to_string(),
                    size: bytes.len(),
                    used,
                    quota: self.quota_bytes(),
                });
            }
        }
        let dir = self.create_dirs(self.open_root()?, parent)?;
        match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => match FileType::from_raw_mode(stat.st_mode) {
                FileType::RegularFile => {}
                FileType::Symlink => {
                    return Err(WorkspaceError::Symlink {
                        path: rel.to_string(),
                    });
                }
                other => {
                    return Err(WorkspaceError::NotAFile {
                        path: rel.to_string(),
                        kind: kind_name(other),
                    });
                }
            },
            Err(Errno::NOENT) => {}
            Err(errno) => return Err(WorkspaceError::resolving(errno, rel.as_str(), "write")),
        }
        let temporary = format!(".kernelbox-write-{:016x}.tmp", rand::random::<u64>());
        let file = rustix::fs::openat(
            &dir,
            temporary.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(WorkspaceError::io("write", rel.as_str()))?;
        let written = give_to(&file, self.user, Handed::File)
            .and_then(|()| std::fs::File::from(file).write_all(bytes))
            .and_then(|()| {
                rustix::fs::renameat(&dir, temporary.as_str(), &dir, name).map_err(Into::into)
            });
        if let Err(source) = written {
            // The temporary file is ours and useless now; failing to remove it changes nothing.
            let _ = rustix::fs::unlinkat(&dir, temporary.as_str(), AtFlags::empty());
            if source.raw_os_error() == Some(Errno::NOSPC.raw_os_error()) {
                return Err(WorkspaceError::QuotaExceeded {
                    path: rel.to_string(),
                    size: bytes.len(),
                    used: self.usage(),
                    quota: self.quota_bytes(),
                });
            }
            return Err(WorkspaceError::Io {
                action: "write",
                path: rel.to_string(),
                source,
            });
        }
        Ok(rel.to_string())
    }

    /// Deletes the file, symlink (the link, never its target) or empty directory at `path`.
    pub fn delete(&self, path: &str) -> Result<(), WorkspaceError> {
        let rel = RelPath::parse(path)?;
        let Some((parent, name)) = rel.split_last() else {
            return Err(WorkspaceError::InvalidPath {
                path: path.to_string(),
                reason: "it is the workspace root, which cannot be deleted",
            });
        };
        let root = self.open_root()?;
        let dir = open_dir_beneath(&root, parent)
            .map_err(|errno| WorkspaceError::resolving(errno, rel.as_str(), "delete"))?;
        let stat = rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|errno| WorkspaceError::resolving(errno, rel.as_str(), "delete"))?;
        let flags = match FileType::from_raw_mode(stat.st_mode) {
            FileType::Directory => AtFlags::REMOVEDIR,
            _ => AtFlags::empty(),
        };
        rustix::fs::unlinkat(&dir, name, flags).map_err(|errno| match errno {
            Errno::NOTEMPTY | Errno::EXIST => WorkspaceError::DirectoryNotEmpty {
                path: rel.to_string(),
            },
            errno => WorkspaceError::resolving(errno, rel.as_str(), "delete"),
        })
    }

    /// Opens the regular file at `path` for reading, without following a symlink and without
    /// blocking on a fifo, and returns it with its size.
    fn open_file(
        &self,
        path: &str,
        action: &'static str,
    ) -> Result<(RelPath, std::fs::File, u64), WorkspaceError> {
        let rel = RelPath::parse(path)?;
        let root = self.open_root()?;
        let fd = open_beneath(
            &root,
            rel.as_str(),
            OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY,
        )
        .map_err(|errno| WorkspaceError::resolving(errno, rel.as_str(), action))?;
        let stat = rustix::fs::fstat(&fd).map_err(WorkspaceError::io(action, rel.as_str()))?;
        match FileType::from_raw_mode(stat.st_mode) {
            FileType::RegularFile => {
                let size = u64::try_from(stat.st_size).unwrap_or(0);
                Ok((rel, std::fs::File::from(fd), size))
            }
            other => Err(WorkspaceError::NotAFile {
                path: rel.to_string(),
                kind: kind_name(other),
            }),
        }
    }

    /// Opens the directory `parent` (`.` for `root` itself) beneath `root`, creating what is
    /// missing of it, each new directory handed to the kernel user.
    fn create_dirs(&self, root: OwnedFd, parent: &str) -> Result<OwnedFd, WorkspaceError> {
        let mut dir = root;
        let mut walked = String::new();
        for name in parent.split('/').filter(|name| *name != ".") {
            if !walked.is_empty() {
                walked.push('/');
            }
            walked.push_str(name);
            dir = match open_beneath(&dir, name, OFlags::PATH) {
                Ok(next) => match file_type(&next).map_err(WorkspaceError::io("write", &walked))? {
                    FileType::Directory => next,
                    FileType::Symlink => return Err(WorkspaceError::Symlink { path: walked }),
                    other => {
                        return Err(WorkspaceError::NotADirectory {
                            path: walked,
                            kind: kind_name(other),
                        });
                    }
                },
                Err(Errno::NOENT) => {
                    match rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(errno) => {
                            return Err(WorkspaceError::io("create directory", &walked)(errno));
                        }
                    }
                    let created = open_beneath(&dir, name, OFlags::RDONLY | OFlags::DIRECTORY)
                        .map_err(|errno| {
                            WorkspaceError::resolving(errno, &walked, "create directory")
                        })?;
                    give_to(&created, self.user, Handed::Directory).map_err(|source| {
                        WorkspaceError::Io {
                            action: "create directory",
                            path: walked.clone(),
                            source,
                        }
                    })?;
                    created
                }
                Err(errno) => return Err(WorkspaceError::resolving(errno, &walked, "write")),
            };
        }
        Ok(dir)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;
    use std::time::Duration;

    use rustix::fs::{FileType, Mode};

    use crate::workspace::WorkspaceError;
    use crate::workspace::files::FileBytes;
    use crate::workspace::tests::{assert_kernel_user_can_write, fixture};

    const LIMIT: usize = 1 << 20;

    #[test]
    fn every_operation_refuses_dot_dot_paths() {
        let fixture = fixture();
        for path in ["../passwd", "scripts/../../passwd", "scripts/.."] {
            let escapes = |result: Result<(), WorkspaceError>| {
                matches!(result, Err(WorkspaceError::PathEscapes { .. }))
            };
            assert!(escapes(fixture.ws.read(path, 0, LIMIT).map(drop)), "{path}");
            assert!(escapes(fixture.ws.open_read(path).map(drop)), "{path}");
            assert!(
                escapes(fixture.ws.write(path, b"x", LIMIT).map(drop)),
                "{path}"
            );
            assert!(escapes(fixture.ws.delete(path)), "{path}");
        }
    }

    #[test]
    fn every_operation_refuses_absolute_paths() {
        let fixture = fixture();
        let passwd = fixture.host_passwd();
        let path = passwd.to_str().unwrap();
        let escapes = |result: Result<(), WorkspaceError>| {
            matches!(result, Err(WorkspaceError::PathEscapes { .. }))
        };
        assert!(escapes(fixture.ws.read(path, 0, LIMIT).map(drop)));
        assert!(escapes(fixture.ws.open_read(path).map(drop)));
        assert!(escapes(fixture.ws.write(path, b"x", LIMIT).map(drop)));
        assert!(escapes(fixture.ws.delete(path)));
        assert_eq!(std::fs::read_to_string(&passwd).unwrap(), "root:x:0:0");
    }

    #[test]
    fn an_escaping_path_is_explained_in_the_error() {
        let fixture = fixture();
        let message = fixture
            .ws
            .read("/workspace/a.py", 0, LIMIT)
            .unwrap_err()
            .to_string();
        assert!(message.contains("leaves the workspace"), "{message}");
        assert!(
            message.contains("relative to the workspace root"),
            "{message}"
        );
    }

    #[test]
    fn read_refuses_a_symlink_to_a_host_file() {
        let fixture = fixture();
        symlink(fixture.host_passwd(), fixture.path("passwd")).unwrap();
        assert!(matches!(
            fixture.ws.read("passwd", 0, LIMIT),
            Err(WorkspaceError::Symlink { .. })
        ));
    }

    #[test]
    fn open_read_refuses_a_symlink_to_a_host_file() {
        let fixture = fixture();
        symlink(fixture.host_passwd(), fixture.path("passwd")).unwrap();
        assert!(matches!(
            fixture.ws.open_read("passwd"),
            Err(WorkspaceError::Symlink { .. })
        ));
    }

    #[test]
    fn write_refuses_a_symlink_to_a_host_file_and_leaves_the_host_file_alone() {
        let fixture = fixture();
        symlink(fixture.host_passwd(), fixture.path("passwd")).unwrap();
        assert!(matches!(
            fixture.ws.write("passwd", b"owned", LIMIT),
            Err(WorkspaceError::Symlink { .. })
        ));
        assert_eq!(
            std::fs::read_to_string(fixture.host_passwd()).unwrap(),
            "root:x:0:0"
        );
        assert!(fixture.path("passwd").is_symlink());
    }

    #[test]
    fn delete_of_a_symlink_removes_the_link_and_leaves_the_target() {
        let fixture = fixture();
        symlink(fixture.host_passwd(), fixture.path("passwd")).unwrap();
        fixture.ws.delete("passwd").unwrap();
        assert!(!fixture.path("passwd").is_symlink());
        assert_eq!(
            std::fs::read_to_string(fixture.host_passwd()).unwrap(),
            "root:x:0:0"
        );
    }

    #[test]
    fn read_write_and_delete_refuse_to_go_through_a_symlinked_directory() {
        let fixture = fixture();
        symlink(&fixture.host, fixture.path("etc")).unwrap();
        let symlink_error = |result: Result<(), WorkspaceError>| {
            matches!(result, Err(WorkspaceError::Symlink { .. }))
        };
        assert!(symlink_error(
            fixture.ws.read("etc/passwd", 0, LIMIT).map(drop)
        ));
        assert!(symlink_error(fixture.ws.open_read("etc/passwd").map(drop)));
        assert!(symlink_error(
            fixture.ws.write("etc/passwd", b"x", LIMIT).map(drop)
        ));
        assert!(symlink_error(
            fixture.ws.write("etc/new/file", b"x", LIMIT).map(drop)
        ));
        assert!(symlink_error(fixture.ws.delete("etc/passwd")));
        let host: Vec<_> = std::fs::read_dir(&fixture.host).unwrap().collect();
        assert_eq!(host.len(), 1);
        assert_eq!(
            std::fs::read_to_string(fixture.host_passwd()).unwrap(),
            "root:x:0:0"
        );
    }

    #[test]
    fn read_and_write_refuse_a_file_swapped_for_a_symlink() {
        let fixture = fixture();
        fixture
            .ws
            .write("scripts/a.py", b"print(1)", LIMIT)
            .unwrap();
        assert_eq!(
            fixture.ws.read("scripts/a.py", 0, LIMIT).unwrap().bytes,
            b"print(1)"
        );
        std::fs::remove_file(fixture.path("scripts/a.py")).unwrap();
        symlink(fixture.host_passwd(), fixture.path("scripts/a.py")).unwrap();
        assert!(matches!(
            fixture.ws.read("scripts/a.py", 0, LIMIT),
            Err(WorkspaceError::Symlink { .. })
        ));
        assert!(matches!(
            fixture.ws.open_read("scripts/a.py"),
            Err(WorkspaceError::Symlink { .. })
        ));
        assert!(matches!(
            fixture.ws.write("scripts/a.py", b"owned", LIMIT),
            Err(WorkspaceError::Symlink { .. })
        ));
        assert_eq!(
            std::fs::read_to_string(fixture.host_passwd()).unwrap(),
            "root:x:0:0"
        );
    }

    #[test]
    fn read_refuses_a_fifo_without_blocking() {
        let fixture = fixture();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            fixture.path("pipe").as_path(),
            FileType::Fifo,
            Mode::from_raw_mode(0o666),
            0,
        )
        .unwrap();
        let (sender, receiver) = std::sync::mpsc::channel();
        let ws = fixture.ws.clone();
        std::thread::spawn(move || {
            let read = ws.read("pipe", 0, LIMIT).map(drop);
            let opened = ws.open_read("pipe").map(drop);
            sender.send((read, opened)).unwrap();
        });
        let (read, opened) = receiver
            .recv_timeout(Duration::from_secs(10))
            .expect("reading a fifo blocked");
        for result in [read, opened] {
            assert!(matches!(
                result,
                Err(WorkspaceError::NotAFile { kind: "fifo", .. })
            ));
        }
    }

    #[test]
    fn read_refuses_a_directory_and_names_a_missing_file() {
        let fixture = fixture();
        for path in ["scripts", "."] {
            assert!(matches!(
                fixture.ws.read(path, 0, LIMIT),
                Err(WorkspaceError::NotAFile {
                    kind: "directory",
                    ..
                })
            ));
        }
        let error = fixture.ws.read("scripts/missing.py", 0, LIMIT).unwrap_err();
        assert!(matches!(error, WorkspaceError::NotFound { .. }));
        assert!(error.to_string().contains("scripts/missing.py"));
    }

    #[test]
    fn write_then_read_round_trips_and_normalizes_the_path() {
        let fixture = fixture();
        let path = fixture
            .ws
            .write("./scripts//a.py", b"print(1)\n", LIMIT)
            .unwrap();
        assert_eq!(path, "scripts/a.py");
        let read = fixture.ws.read("scripts/a.py", 0, LIMIT).unwrap();
        assert_eq!(
            read,
            FileBytes {
                bytes: b"print(1)\n".to_vec(),
                size: 9,
                truncated: false
            }
        );
        fixture.ws.write("scripts/a.py", b"2", LIMIT).unwrap();
        assert_eq!(
            fixture.ws.read("scripts/a.py", 0, LIMIT).unwrap().bytes,
            b"2"
        );
        let (file, size) = fixture.ws.open_read("scripts/a.py").unwrap();
        assert_eq!(
            (std::io::read_to_string(file).unwrap(), size),
            ("2".to_string(), 1)
        );
    }

    #[test]
    fn write_and_read_keep_binary_data() {
        let fixture = fixture();
        let bytes: Vec<u8> = (0..=255).chain((0..=255).rev()).collect();
        fixture.ws.write("uploads/blob.bin", &bytes, LIMIT).unwrap();
        assert_eq!(
            fixture.ws.read("uploads/blob.bin", 0, LIMIT).unwrap().bytes,
            bytes
        );
        assert_eq!(
            std::fs::read(fixture.path("uploads/blob.bin")).unwrap(),
            bytes
        );
    }

    #[test]
    fn write_creates_parent_directories_the_kernel_user_can_write() {
        let fixture = fixture();
        assert_eq!(
            fixture.ws.write("a/b/c.txt", b"c", LIMIT).unwrap(),
            "a/b/c.txt"
        );
        assert_eq!(std::fs::read(fixture.path("a/b/c.txt")).unwrap(), b"c");
        for path in ["a", "a/b", "a/b/c.txt"] {
            assert_kernel_user_can_write(&fixture.path(path));
        }
    }

    #[test]
    fn write_leaves_no_temporary_file_behind() {
        let fixture = fixture();
        fixture.ws.write("scripts/a.py", b"1", LIMIT).unwrap();
        fixture.ws.write("scripts/a.py", b"2", LIMIT).unwrap();
        assert!(fixture.ws.write("scripts/a.py", b"three", 3).is_err());
        let names: Vec<_> = std::fs::read_dir(fixture.path("scripts"))
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, ["a.py"]);
    }

    #[test]
    fn read_truncates_at_max_bytes_and_reports_the_full_size() {
        let fixture = fixture();
        fixture.ws.write("ten.txt", b"0123456789", LIMIT).unwrap();
        let read = fixture.ws.read("ten.txt", 0, 4).unwrap();
        assert_eq!(
            (read.bytes.as_slice(), read.size, read.truncated),
            (&b"0123"[..], 10, true)
        );
        let read = fixture.ws.read("ten.txt", 0, 10).unwrap();
        assert_eq!((read.bytes.len(), read.truncated), (10, false));
        let read = fixture.ws.read("ten.txt", 0, 0).unwrap();
        assert_eq!((read.bytes.len(), read.truncated), (0, true));
        let read = fixture.ws.read("ten.txt", 6, 3).unwrap();
        assert_eq!((read.bytes.as_slice(), read.truncated), (&b"678"[..], true));
        let read = fixture.ws.read("ten.txt", 6, 10).unwrap();
        assert_eq!(
            (read.bytes.as_slice(), read.truncated),
            (&b"6789"[..], false)
        );
        let read = fixture.ws.read("ten.txt", 99, 10).unwrap();
        assert_eq!(
            (read.bytes.len(), read.size, read.truncated),
            (0, 10, false)
        );
    }

    #[test]
    fn write_refuses_more_than_max_bytes_naming_the_size_and_the_limit() {
        let fixture = fixture();
        let error = fixture.ws.write("big.bin", &[0; 11], 10).unwrap_err();
        assert!(matches!(
            error,
            WorkspaceError::TooLarge {
                size: 11,
                limit: 10,
                ..
            }
        ));
        let message = error.to_string();
        assert!(
            message.contains("11 bytes") && message.contains("10 bytes"),
            "{message}"
        );
        assert!(!fixture.path("big.bin").exists());
    }

    #[test]
    fn write_refuses_the_root_a_directory_and_a_file_as_parent() {
        let fixture = fixture();
        assert!(matches!(
            fixture.ws.write(".", b"x", LIMIT),
            Err(WorkspaceError::InvalidPath { .. })
        ));
        assert!(matches!(
            fixture.ws.write("scripts", b"x", LIMIT),
            Err(WorkspaceError::NotAFile {
                kind: "directory",
                ..
            })
        ));
        fixture.ws.write("notes.txt", b"x", LIMIT).unwrap();
        assert!(matches!(
            fixture.ws.write("notes.txt/inner.txt", b"x", LIMIT),
            Err(WorkspaceError::NotADirectory {
                kind: "regular file",
                ..
            })
        ));
    }

    #[test]
    fn delete_removes_a_file_and_an_empty_directory() {
        let fixture = fixture();
        fixture.ws.write("scripts/a.py", b"1", LIMIT).unwrap();
        fixture.ws.delete("scripts/a.py").unwrap();
        assert!(!fixture.path("scripts/a.py").exists());
        fixture.ws.delete("scripts").unwrap();
        assert!(!fixture.path("scripts").exists());
    }

    #[test]
    fn delete_refuses_the_root_a_non_empty_directory_and_a_missing_path() {
        let fixture = fixture();
        for path in [".", "./"] {
            assert!(matches!(
                fixture.ws.delete(path),
                Err(WorkspaceError::InvalidPath { .. })
            ));
        }
        fixture.ws.write("scripts/a.py", b"1", LIMIT).unwrap();
        let error = fixture.ws.delete("scripts").unwrap_err();
        assert!(matches!(error, WorkspaceError::DirectoryNotEmpty { .. }));
        assert!(error.to_string().contains("not empty"));
        assert!(fixture.path("scripts/a.py").exists());
        assert!(matches!(
            fixture.ws.delete("missing"),
            Err(WorkspaceError::NotFound { .. })
        ));
    }
}
