//! What a worker keeps on disk, and only while it listens for its host: a
//! private directory (mode 0700, named after the worker's pid) holding its
//! attach socket (mode 0600). Making it, listening in it, removing it, and
//! sweeping the ones whose owner died before it could remove its own.

use std::ffi::OsStr;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use interprocess::local_socket::tokio::{prelude::*, Listener};
use interprocess::local_socket::{GenericFilePath, ListenerOptions};

use super::peer::is_running;

/// Prefix of the private directories attach sockets live in.
pub(crate) const DIR_PREFIX: &str = "isolated-workers-";

/// The socket a worker accepts its host on again, in its private directory.
const ATTACH_SOCKET: &str = "attach.sock";

/// Makes this process's private attach directory (mode 0700, named after
/// its pid so that a later process can tell a leftover whose owner is dead)
/// and returns the socket path in it. Leftovers of dead processes are swept
/// first.
pub(crate) fn attach_directory() -> io::Result<PathBuf> {
    let tmp = std::env::temp_dir();
    sweep_leftovers(&tmp);
    let dir = tempfile::Builder::new()
        .prefix(&format!("{DIR_PREFIX}{}-", std::process::id()))
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir_in(&tmp)?
        .keep();
    Ok(dir.join(ATTACH_SOCKET))
}

/// Listens on a socket at `path` (in a private directory) that only this
/// user may connect to, so that a change of the directory's mode does not
/// open it up.
pub(crate) fn listen(path: &Path) -> io::Result<Listener> {
    let listener = path
        .as_os_str()
        .to_fs_name::<GenericFilePath>()
        .and_then(|name| ListenerOptions::new().name(name).create_tokio())?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Removes the directories in `tmp` left by worker processes that are gone
/// (killed before they could remove their own). A directory whose owner
/// runs, or whose name does not say who made it, is left alone.
pub(crate) fn sweep_leftovers(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let owner = name
            .to_str()
            .and_then(|name| name.strip_prefix(DIR_PREFIX))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok());
        if owner.is_some_and(|pid| !is_running(pid)) {
            remove_socket_directory(&entry.path());
        }
    }
}

/// Removes a worker's private socket directory; only a directory of the
/// shape workers make is touched. Whoever comes second finds nothing.
pub(crate) fn remove_socket_directory(dir: &Path) {
    let ours = dir
        .file_name()
        .and_then(OsStr::to_str)
        .is_some_and(|name| name.starts_with(DIR_PREFIX));
    if ours {
        let _ = std::fs::remove_dir_all(dir);
    }
}
