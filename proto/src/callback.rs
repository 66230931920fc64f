//! The calls a server makes of its clients (subsystem [`SUBSYSTEM`]) on the
//! connection the client opened with `NEW_CONNECT`.

use coda_rpc2::codec_struct;

use crate::fid::{Fid, VolumeId};

pub const SUBSYSTEM: u16 = 1002;

pub mod op {
    /// Promises broken: the client must revalidate before using its copies.
    pub const BREAK: u16 = 1;
    /// Are you there?
    pub const PROBE: u16 = 2;
}

codec_struct! {
    #[derive(Debug, Clone, PartialEq, Eq, Default)]
    pub struct Break {
        pub fids: Vec<Fid>,
        pub volumes: Vec<VolumeId>,
    }
}
