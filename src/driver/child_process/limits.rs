//! Resource limits a child worker starts with ([`ChildProcess::limit`]):
//! which resources can be limited, and setting the limits in the child,
//! between `fork` and `exec`.
//!
//! [`Resource`] is this crate's own enum rather than a re-export of the
//! system-call crate's, so that the public API does not change with that
//! crate; its variants keep the C names (`RLIMIT_AS`), as `setrlimit(2)`
//! and the earlier re-export of `nix`'s enum spelled them.
//!
//! [`ChildProcess::limit`]: super::ChildProcess::limit

use std::io;

use rustix::process::{Resource as SysResource, Rlimit};

/// A resource whose use a child worker's limit bounds (see
/// [`ChildProcess::limit`](super::ChildProcess::limit) and `setrlimit(2)`).
///
/// ```no_run
/// use isolated_workers::driver::child_process::Resource;
/// use isolated_workers::ChildProcess;
/// let driver = ChildProcess::current_exe("calc").limit(Resource::RLIMIT_AS, 512 << 20, 512 << 20);
/// ```
#[allow(non_camel_case_types)] // the names of setrlimit(2)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Resource {
    /// The most virtual memory the process may map, in bytes.
    #[cfg(not(target_os = "openbsd"))]
    RLIMIT_AS,
    /// The largest core file it may dump, in bytes.
    RLIMIT_CORE,
    /// The most CPU time it may use, in seconds.
    RLIMIT_CPU,
    /// The largest its data segment may grow, in bytes.
    RLIMIT_DATA,
    /// The largest file it may make, in bytes.
    RLIMIT_FSIZE,
    /// One more than the highest descriptor number it may open.
    RLIMIT_NOFILE,
    /// The largest its main thread's stack may grow, in bytes.
    RLIMIT_STACK,
    /// The most `flock` locks and `fcntl` leases it may hold.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    RLIMIT_LOCKS,
    /// The most memory it may lock (`mlock`), in bytes.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    RLIMIT_MEMLOCK,
    /// The most bytes its user's POSIX message queues may hold.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    RLIMIT_MSGQUEUE,
    /// The ceiling of its nice value (as `20 - limit`).
    #[cfg(any(target_os = "linux", target_os = "android"))]
    RLIMIT_NICE,
    /// The most processes (threads) its real user may have.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    RLIMIT_NPROC,
    /// The most resident memory it may use, in bytes (advisory on Linux).
    #[cfg(any(target_os = "linux", target_os = "android"))]
    RLIMIT_RSS,
    /// The ceiling of its real-time priority.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    RLIMIT_RTPRIO,
    /// The most CPU time it may use under a real-time policy without a
    /// blocking call, in microseconds.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    RLIMIT_RTTIME,
    /// The most signals its real user may have queued.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    RLIMIT_SIGPENDING,
}

impl Resource {
    /// The same resource as the system-call crate names it.
    fn to_sys(self) -> SysResource {
        match self {
            #[cfg(not(target_os = "openbsd"))]
            Resource::RLIMIT_AS => SysResource::As,
            Resource::RLIMIT_CORE => SysResource::Core,
            Resource::RLIMIT_CPU => SysResource::Cpu,
            Resource::RLIMIT_DATA => SysResource::Data,
            Resource::RLIMIT_FSIZE => SysResource::Fsize,
            Resource::RLIMIT_NOFILE => SysResource::Nofile,
            Resource::RLIMIT_STACK => SysResource::Stack,
            #[cfg(any(target_os = "linux", target_os = "android"))]
            Resource::RLIMIT_LOCKS => SysResource::Locks,
            #[cfg(any(target_os = "linux", target_os = "android"))]
            Resource::RLIMIT_MEMLOCK => SysResource::Memlock,
            #[cfg(any(target_os = "linux", target_os = "android"))]
            Resource::RLIMIT_MSGQUEUE => SysResource::Msgqueue,
            #[cfg(any(target_os = "linux", target_os = "android"))]
            Resource::RLIMIT_NICE => SysResource::Nice,
            #[cfg(any(target_os = "linux", target_os = "android"))]
            Resource::RLIMIT_NPROC => SysResource::Nproc,
            #[cfg(any(target_os = "linux", target_os = "android"))]
            Resource::RLIMIT_RSS => SysResource::Rss,
            #[cfg(any(target_os = "linux", target_os = "android"))]
            Resource::RLIMIT_RTPRIO => SysResource::Rtprio,
            #[cfg(any(target_os = "linux", target_os = "android"))]
            Resource::RLIMIT_RTTIME => SysResource::Rttime,
            #[cfg(any(target_os = "linux", target_os = "android"))]
            Resource::RLIMIT_SIGPENDING => SysResource::Sigpending,
        }
    }
}

/// Sets each `(resource, soft, hard)` limit on this process, the values
/// passed to the kernel as given. Runs in the child between `fork` and
/// `exec`: one system call per limit, nothing allocated.
pub(super) fn set(limits: &[(Resource, u64, u64)]) -> io::Result<()> {
    for &(resource, soft, hard) in limits {
        let limit = Rlimit {
            current: Some(soft),
            maximum: Some(hard),
        };
        rustix::process::setrlimit(resource.to_sys(), limit)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_resource_is_the_system_resource_of_its_c_name() {
        // Numbered as in <sys/resource.h> on Linux.
        #[cfg(target_os = "linux")]
        for (resource, number) in [
            (Resource::RLIMIT_CPU, 0),
            (Resource::RLIMIT_FSIZE, 1),
            (Resource::RLIMIT_DATA, 2),
            (Resource::RLIMIT_STACK, 3),
            (Resource::RLIMIT_CORE, 4),
            (Resource::RLIMIT_RSS, 5),
            (Resource::RLIMIT_NPROC, 6),
            (Resource::RLIMIT_NOFILE, 7),
            (Resource::RLIMIT_MEMLOCK, 8),
            (Resource::RLIMIT_AS, 9),
            (Resource::RLIMIT_LOCKS, 10),
            (Resource::RLIMIT_SIGPENDING, 11),
            (Resource::RLIMIT_MSGQUEUE, 12),
            (Resource::RLIMIT_NICE, 13),
            (Resource::RLIMIT_RTPRIO, 14),
            (Resource::RLIMIT_RTTIME, 15),
        ] {
            assert_eq!(resource.to_sys() as u32, number, "{resource:?}");
        }
    }
}
