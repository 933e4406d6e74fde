//! Opening a path beneath a workspace root without ever leaving it: `openat2` with
//! `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_SYMLINKS` and `O_NOFOLLOW`, or, on
//! kernels without `openat2` (before 5.6), a walk one name at a time with `O_NOFOLLOW`. Both
//! refuse every symlink, so a path means the same thing on every kernel. It only opens: it must
//! not read, write or delete anything, and it must never follow a symlink.

use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// Opens `path` (workspace-relative, `.` for `dir` itself) beneath `dir` with `flags`, which
/// must not create anything. A symlink anywhere on the way is `ELOOP`; as the last component it
/// is `ELOOP` too, except that with `O_PATH` the link itself is opened (and with `O_DIRECTORY`
/// it is `ENOTDIR`). A path that would leave `dir` (`..`, absolute) is `EXDEV`.
pub(super) fn open_beneath(
    dir: impl AsFd,
    path: &str,
    flags: OFlags,
) -> rustix::io::Result<OwnedFd> {
    let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS | ResolveFlags::NO_SYMLINKS;
    match rustix::fs::openat2(dir.as_fd(), path, flags, Mode::empty(), resolve) {
        Err(Errno::NOSYS) => open_beneath_by_walking(dir, path, flags),
        result => result,
    }
}

/// `open_beneath` for kernels without `openat2`: opens each directory on the way with
/// `O_PATH | O_NOFOLLOW` and checks with `fstat` that it is a directory, then opens the last
/// name with `flags | O_NOFOLLOW`. It gives the same answers as `openat2` with the flags
/// `open_beneath` uses.
pub(super) fn open_beneath_by_walking(
    dir: impl AsFd,
    path: &str,
    flags: OFlags,
) -> rustix::io::Result<OwnedFd> {
    let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    if path.starts_with('/') {
        return Err(Errno::XDEV);
    }
    let names: Vec<&str> = path
        .split('/')
        .filter(|name| !name.is_empty() && *name != ".")
        .collect();
    if names.contains(&"..") {
        return Err(Errno::XDEV);
    }
    let Some((last, parents)) = names.split_last() else {
        return rustix::fs::openat(dir, ".", flags, Mode::empty());
    };
    let mut current: Option<OwnedFd> = None;
    for name in parents {
        let parent = current.as_ref().map_or(dir.as_fd(), AsFd::as_fd);
        let next = rustix::fs::openat(
            parent,
            *name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        current = Some(directory(next)?);
    }
    let parent = current.as_ref().map_or(dir.as_fd(), AsFd::as_fd);
    rustix::fs::openat(parent, *last, flags, Mode::empty())
}

/// Opens the directory `path` beneath `dir` as an `O_PATH` descriptor for `*at` calls. A
/// symlink is `ELOOP`; anything else that is not a directory is `ENOTDIR`.
pub(super) fn open_dir_beneath(dir: impl AsFd, path: &str) -> rustix::io::Result<OwnedFd> {
    directory(open_beneath(dir, path, OFlags::PATH)?)
}

pub(super) fn file_type(fd: impl AsFd) -> rustix::io::Result<FileType> {
    Ok(FileType::from_raw_mode(rustix::fs::fstat(fd)?.st_mode))
}

fn directory(fd: OwnedFd) -> rustix::io::Result<OwnedFd> {
    match file_type(&fd)? {
        FileType::Directory => Ok(fd),
        FileType::Symlink => Err(Errno::LOOP),
        _ => Err(Errno::NOTDIR),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    /// A workspace-like directory holding `dir/file`, with a host directory beside it holding
    /// `secret`, and symlinks to both kinds of target.
    struct Fixture {
        _temp: tempfile::TempDir,
        root: OwnedFd,
    }

    fn fixture() -> Fixture {
        let temp = tempfile::tempdir().unwrap();
        let root = temp.path().join("ws");
        let host = temp.path().join("host");
        std::fs::create_dir_all(root.join("dir")).unwrap();
        std::fs::create_dir(&host).unwrap();
        std::fs::write(root.join("dir/file"), "inside").unwrap();
        std::fs::write(host.join("secret"), "host").unwrap();
        symlink(host.join("secret"), root.join("to_host_file")).unwrap();
        symlink(&host, root.join("to_host_dir")).unwrap();
        symlink("../host", root.join("up_to_host_dir")).unwrap();
        symlink("dir", root.join("to_inside_dir")).unwrap();
        symlink("/proc/self/root", root.join("magic")).unwrap();
        let root = rustix::fs::openat(
            rustix::fs::CWD,
            &root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        Fixture { _temp: temp, root }
    }

    type Resolver = fn(&OwnedFd, &str, OFlags) -> rustix::io::Result<OwnedFd>;

    const RESOLVERS: [(&str, Resolver); 2] = [
        ("openat2", |dir, path, flags| open_beneath(dir, path, flags)),
        ("walking", |dir, path, flags| {
            open_beneath_by_walking(dir, path, flags)
        }),
    ];

    fn read_with(resolve: Resolver, root: &OwnedFd, path: &str) -> rustix::io::Result<String> {
        let fd = resolve(root, path, OFlags::RDONLY)?;
        Ok(std::io::read_to_string(std::fs::File::from(fd)).unwrap())
    }

    #[test]
    fn both_resolvers_open_a_plain_path_and_the_root() {
        let fixture = fixture();
        for (name, resolve) in RESOLVERS {
            assert_eq!(
                read_with(resolve, &fixture.root, "dir/file").unwrap(),
                "inside",
                "{name}"
            );
            assert_eq!(
                read_with(resolve, &fixture.root, "./dir//file").unwrap(),
                "inside",
                "{name}"
            );
            let root = resolve(&fixture.root, ".", OFlags::PATH).unwrap();
            assert_eq!(file_type(root).unwrap(), FileType::Directory, "{name}");
        }
    }

    #[test]
    fn both_resolvers_refuse_dot_dot_and_absolute_paths_with_exdev() {
        let fixture = fixture();
        for (name, resolve) in RESOLVERS {
            for path in ["../host/secret", "dir/../../host/secret", "/etc/passwd"] {
                assert_eq!(
                    resolve(&fixture.root, path, OFlags::RDONLY).err(),
                    Some(Errno::XDEV),
                    "{name}: {path}"
                );
            }
        }
    }

    #[test]
    fn both_resolvers_refuse_a_symlink_as_the_last_component() {
        let fixture = fixture();
        for (name, resolve) in RESOLVERS {
            for path in ["to_host_file", "to_host_dir", "to_inside_dir", "magic"] {
                assert_eq!(
                    resolve(&fixture.root, path, OFlags::RDONLY).err(),
                    Some(Errno::LOOP),
                    "{name}: {path}"
                );
                assert_eq!(
                    resolve(&fixture.root, path, OFlags::RDONLY | OFlags::DIRECTORY).err(),
                    Some(Errno::NOTDIR),
                    "{name}: {path}"
                );
            }
        }
    }

    #[test]
    fn both_resolvers_refuse_to_go_through_a_symlinked_directory() {
        let fixture = fixture();
        for (name, resolve) in RESOLVERS {
            for path in [
                "to_host_dir/secret",
                "up_to_host_dir/secret",
                "to_inside_dir/file",
                "magic/etc/passwd",
            ] {
                assert_eq!(
                    resolve(&fixture.root, path, OFlags::RDONLY).err(),
                    Some(Errno::LOOP),
                    "{name}: {path}"
                );
            }
        }
    }

    #[test]
    fn both_resolvers_open_a_symlink_itself_with_o_path() {
        let fixture = fixture();
        for (name, resolve) in RESOLVERS {
            let link = resolve(&fixture.root, "to_host_file", OFlags::PATH).unwrap();
            assert_eq!(file_type(link).unwrap(), FileType::Symlink, "{name}");
        }
    }

    #[test]
    fn both_resolvers_say_enotdir_for_a_file_on_the_way() {
        let fixture = fixture();
        for (name, resolve) in RESOLVERS {
            assert_eq!(
                resolve(&fixture.root, "dir/file/x", OFlags::RDONLY).err(),
                Some(Errno::NOTDIR),
                "{name}"
            );
        }
    }

    #[test]
    fn open_dir_beneath_refuses_symlinks_and_files() {
        let fixture = fixture();
        assert!(open_dir_beneath(&fixture.root, "dir").is_ok());
        assert_eq!(
            open_dir_beneath(&fixture.root, "to_inside_dir").err(),
            Some(Errno::LOOP)
        );
        assert_eq!(
            open_dir_beneath(&fixture.root, "dir/file").err(),
            Some(Errno::NOTDIR)
        );
    }
}
