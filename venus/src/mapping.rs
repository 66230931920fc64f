//! Files that processes map. The kernel hands a mapping of a passthrough
//! file to the container and tells Venus nothing at munmap, so writes
//! through a mapping that outlives close(2) are found by looking in /proc.

use std::path::Path;

/// Whether process `pid` maps inode `ino` of the mount at `mount`.
pub fn mapped_by(pid: u32, mount: &Path, ino: u64) -> bool {
    let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
        return false;
    };
    let ino = ino.to_string();
    maps.lines().any(|l| {
        // address perms offset dev inode path
        let mut f = l.split_whitespace().skip(4);
        f.next() == Some(ino.as_str()) && f.next().is_some_and(|p| Path::new(p).starts_with(mount))
    })
}
