//! Venus, the client cache manager (DESIGN.md §4).
//!
//! - [`link`]: RPC2 connections to the servers, per user.
//! - [`cache`]: the persistent cache — RVM metadata and [`container`] files.
//! - [`fsobj`]: a cached object; [`volume`]: where volumes live;
//!   [`replica`]: updates to every replica of a replicated volume.
//! - [`core`]: the file-system calls as a Rust API.
//! - [`cml`]: the one write path — updates as CML records; [`emulate`]:
//!   logged while disconnected; [`reint`]: reintegrated on reconnection.
//! - [`callback`]: breaks from servers, passed on to the kernel.
//! - [`conflict`], [`repair`]: refused updates and their settling;
//!   [`diverged`]: objects whose replicas hold different versions;
//!   [`hoard`]: what to keep cached for disconnection.
//! - [`fuse`]: the FUSE adapter; [`control`]: the tools' local socket.

pub mod cache;
pub mod callback;
pub mod checkpoint;
pub mod cml;
pub mod conflict;
pub mod container;
pub mod control;
pub mod core;
pub mod diverged;
pub mod emulate;
pub mod fsobj;
pub mod fuse;
pub mod hoard;
pub mod link;
pub mod reint;
pub mod repair;
pub mod replica;
pub mod volume;
