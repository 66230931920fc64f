//! Reply codes. Zero is success; POSIX errors keep their Linux numbers so
//! Venus hands them to the kernel as they are; Coda's own start at 1000.

use std::fmt;

/// A reply's code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Errno(pub u16);

macro_rules! errnos {
    ($($name:ident = $value:expr, $text:literal;)*) => {
        impl Errno {
            $(pub const $name: Errno = Errno($value as u16);)*

            fn text(self) -> Option<&'static str> {
                match self {
                    $(Errno::$name => Some($text),)*
                    _ => None,
                }
            }
        }
    };
}

errnos! {
    OK = 0, "success";
    EPERM = libc_values::EPERM, "operation not permitted";
    ENOENT = libc_values::ENOENT, "no such file or directory";
    EIO = libc_values::EIO, "input/output error";
    EBADF = libc_values::EBADF, "bad file descriptor";
    EAGAIN = libc_values::EAGAIN, "try again";
    EACCES = libc_values::EACCES, "permission denied";
    EBUSY = libc_values::EBUSY, "busy";
    EEXIST = libc_values::EEXIST, "file exists";
    EXDEV = libc_values::EXDEV, "cross-volume link or rename";
    ENOTDIR = libc_values::ENOTDIR, "not a directory";
    EISDIR = libc_values::EISDIR, "is a directory";
    EINVAL = libc_values::EINVAL, "invalid argument";
    EFBIG = libc_values::EFBIG, "file too large";
    ENOSPC = libc_values::ENOSPC, "no space left";
    EROFS = libc_values::EROFS, "read-only volume";
    EMLINK = libc_values::EMLINK, "too many links";
    ENAMETOOLONG = libc_values::ENAMETOOLONG, "name too long";
    ENOTEMPTY = libc_values::ENOTEMPTY, "directory not empty";
    ELOOP = libc_values::ELOOP, "too many levels of symbolic links";
    ETIMEDOUT = libc_values::ETIMEDOUT, "timed out";
    EALREADY = libc_values::EALREADY, "already done";
    EDQUOT = libc_values::EDQUOT, "quota exceeded";
    // Coda's own.
    CONFLICT = 1000, "conflicting update (the object changed since it was last seen)";
    NO_SUCH_VOLUME = 1001, "no such volume";
    WRONG_SHARD = 1002, "volume served elsewhere";
    VOLUME_LOCKED = 1003, "volume locked";
    TOKEN_EXPIRED = 1004, "token expired";
    BAD_REQUEST = 1005, "malformed request";
    UNKNOWN_CALL = 1006, "unknown call";
    AUTH_FAILED = 1007, "wrong user name or password";
    NOT_ADMIN = 1008, "administrators only";
    NOT_SCM = 1009, "only the cell's SCM (its first server) does that";
    INCONSISTENT = 1010, "the replicas hold different versions (settle it with repair)";
    BARREN = 1011, "this replica is empty until resolution fills it (read another)";
}

/// Linux's numbers, written out so this crate needs no libc.
mod libc_values {
    pub const EPERM: u16 = 1;
    pub const ENOENT: u16 = 2;
    pub const EIO: u16 = 5;
    pub const EBADF: u16 = 9;
    pub const EAGAIN: u16 = 11;
    pub const EACCES: u16 = 13;
    pub const EBUSY: u16 = 16;
    pub const EEXIST: u16 = 17;
    pub const EXDEV: u16 = 18;
    pub const ENOTDIR: u16 = 20;
    pub const EISDIR: u16 = 21;
    pub const EINVAL: u16 = 22;
    pub const EFBIG: u16 = 27;
    pub const ENOSPC: u16 = 28;
    pub const EROFS: u16 = 30;
    pub const EMLINK: u16 = 31;
    pub const ENAMETOOLONG: u16 = 36;
    pub const ENOTEMPTY: u16 = 39;
    pub const ELOOP: u16 = 40;
    pub const ETIMEDOUT: u16 = 110;
    pub const EALREADY: u16 = 114;
    pub const EDQUOT: u16 = 122;
}

impl Errno {
    pub fn is_ok(self) -> bool {
        self == Errno::OK
    }

    /// The errno a program should see for this code.
    pub fn posix(self) -> i32 {
        match self {
            Errno(n) if n < 1000 => i32::from(n),
            Errno::NO_SUCH_VOLUME => i32::from(libc_values::ENOENT),
            Errno::TOKEN_EXPIRED | Errno::AUTH_FAILED | Errno::NOT_ADMIN => {
                i32::from(libc_values::EACCES)
            }
            Errno::VOLUME_LOCKED => i32::from(libc_values::EBUSY),
            Errno::BAD_REQUEST | Errno::UNKNOWN_CALL => i32::from(libc_values::EINVAL),
            _ => i32::from(libc_values::EIO),
        }
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.text() {
            Some(text) => f.write_str(text),
            None => write!(f, "error {}", self.0),
        }
    }
}

impl std::error::Error for Errno {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_name_themselves_and_map_to_posix() {
        assert_eq!(Errno::ENOENT.0, 2);
        assert_eq!(Errno::ENOTEMPTY.posix(), 39);
        assert_eq!(Errno::CONFLICT.posix(), 5);
        assert_eq!(Errno::NOT_ADMIN.posix(), 13);
        assert_eq!(Errno::EXDEV.to_string(), "cross-volume link or rename");
        assert_eq!(Errno(4242).to_string(), "error 4242");
    }
}
