//! Which build of its executable this process runs, for a host to tell
//! whether a worker it started from its own executable runs the same
//! build: the running image's device, inode, size and modification time.
//! Cheap (one `stat`, once per process) and exact while the host runs: an
//! executable in use cannot be rewritten in place, so a rebuild is a new
//! file (a new inode), and the host's image keeps its inode from reuse.

use std::sync::OnceLock;

/// This process's executable as `device:inode:size:mtime`, taken once; empty
/// if the OS would not say.
pub(crate) fn executable_identity() -> &'static str {
    static IDENTITY: OnceLock<String> = OnceLock::new();
    IDENTITY.get_or_init(|| identify().unwrap_or_default())
}

/// The running image's identity: on Linux `/proc/self/exe` (the image
/// itself, even when its file was replaced or deleted); elsewhere the file
/// at the executable's path.
fn identify() -> std::io::Result<String> {
    use std::os::unix::fs::MetadataExt;
    let image = if cfg!(target_os = "linux") {
        std::path::PathBuf::from("/proc/self/exe")
    } else {
        std::env::current_exe()?
    };
    let meta = std::fs::metadata(image)?;
    Ok(format!(
        "{:x}:{}:{}:{}.{:09}",
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_identity_is_the_running_images() {
        let identity = executable_identity();
        let path = std::env::current_exe().unwrap();
        let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(path).unwrap());
        assert_eq!(identity.split(':').nth(1), Some(inode.to_string().as_str()));
        assert_eq!(executable_identity(), identity);
    }
}
