//! Volume and user administration (subsystem [`SUBSYSTEM`]); every call
//! needs an encrypted connection of a member of `System:Administrators`
//! (`USER_ADD` carries a password).

use coda_rpc2::codec_struct;

use crate::acl::PrincipalId;
use crate::vice::VolumeRef;

pub const SUBSYSTEM: u16 = 1004;

pub mod op {
    pub const CREATE: u16 = 1;
    pub const LIST: u16 = 2;
    pub const INFO: u16 = 3;
    pub const LOCK: u16 = 4;
    pub const UNLOCK: u16 = 5;
    pub const REMOVE: u16 = 6;
    pub const USER_ADD: u16 = 20;
    pub const USER_LIST: u16 = 21;
    pub const GROUP_ADD: u16 = 22;
    pub const GROUP_ADD_MEMBER: u16 = 23;
    pub const GROUP_LIST: u16 = 24;
}

codec_struct! {
    /// `CREATE`; answered with a `vice::VolumeInfo`.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct CreateVolume {
        pub name: String,
    }
}

codec_struct! {
    /// `INFO`, `LOCK`, `UNLOCK`, `REMOVE`.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct NameVolume {
        pub volume: VolumeRef,
    }
}

codec_struct! {
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct UserAdd {
        pub name: String,
        pub password: String,
    }
}

codec_struct! {
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct User {
        pub name: String,
        pub id: PrincipalId,
    }
}

codec_struct! {
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct GroupAdd {
        pub name: String,
        pub owner: String,
    }
}

codec_struct! {
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct GroupAddMember {
        pub group: String,
        /// A user or another group.
        pub member: String,
    }
}

codec_struct! {
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Group {
        pub name: String,
        pub id: PrincipalId,
        pub owner: String,
        pub members: Vec<String>,
    }
}
