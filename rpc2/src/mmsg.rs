//! Batched datagram I/O for the glommio driver.
//!
//! `sendmmsg` hands the kernel many datagrams per system call, and a run of
//! equal-size datagrams to one peer leaves as one UDP GSO super-datagram
//! that the kernel (or the NIC) cuts up. `recvmmsg` takes many per call, and
//! with UDP GRO a run arrives coalesced and is cut here at the segment size
//! the kernel reports. Every call is non-blocking: the driver waits for the
//! socket on io_uring and comes back here to move the data.

use std::collections::VecDeque;
use std::io;
use std::mem::size_of;
use std::net::SocketAddr;
use std::os::fd::RawFd;

use socket2::{SockAddr, SockAddrStorage};

use crate::packet::DATAGRAM_BYTES_MAX;

/// Runs per `sendmmsg` and datagrams (or coalesced runs) per `recvmmsg`.
pub const BATCH: usize = 32;
/// The kernel's limit on segments in one GSO send (UDP_MAX_SEGMENTS).
const SEGMENTS_MAX: usize = 64;
/// A coalesced receive is at most one IP datagram: 64 KiB.
const RECEIVE_BYTES: usize = 1 << 16;
/// Room for one control message carrying an int, kept aligned for `cmsghdr`.
type Control = [u64; 8];

/// Counters of the batching and offload at work, for `cmon`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Offload {
    /// Whether the kernel took UDP GSO for sends and GRO for receives.
    pub gso: bool,
    pub gro: bool,
    pub send_calls: u64,
    pub datagrams_sent: u64,
    /// Super-datagrams of two or more segments sent.
    pub gso_sends: u64,
    pub receive_calls: u64,
    pub datagrams_received: u64,
    /// Coalesced receives of two or more segments.
    pub gro_receives: u64,
}

/// Turns on what the kernel offers: GSO needs nothing but asking per send,
/// GRO is a socket option.
pub fn enable_offload(fd: RawFd) -> Offload {
    let mut value: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: fd is a live socket; value and len outlive the calls.
    let gso = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_UDP,
            libc::UDP_SEGMENT,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    } == 0;
    let on: libc::c_int = 1;
    // SAFETY: as above.
    let gro = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_UDP,
            libc::UDP_GRO,
            (&on as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    } == 0;
    Offload {
        gso,
        gro,
        ..Offload::default()
    }
}

/// Datagrams to one peer, back to back: all `segment` bytes long but the
/// last, which may be shorter.
pub struct Run {
    pub dest: SocketAddr,
    pub data: Vec<u8>,
    pub segment: usize,
    count: usize,
}

impl Run {
    pub fn datagrams(&self) -> impl Iterator<Item = &[u8]> {
        self.data.chunks(self.segment)
    }

    fn takes(&self, dest: SocketAddr, len: usize) -> bool {
        self.dest == dest
            && self.count < SEGMENTS_MAX
            && len <= self.segment
            && self.data.len() == self.segment * self.count
            && self.data.len() + len <= DATAGRAM_BYTES_MAX
    }
}

/// Datagrams waiting for `sendmmsg`.
pub struct Outbox {
    runs: VecDeque<Run>,
    spare: Vec<Vec<u8>>,
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    names: Vec<SockAddr>,
    controls: Vec<Control>,
    pub offload: Offload,
}

impl Outbox {
    pub fn new(offload: Offload) -> Outbox {
        Outbox {
            runs: VecDeque::new(),
            spare: Vec::new(),
            hdrs: Vec::with_capacity(BATCH),
            iovs: Vec::with_capacity(BATCH),
            names: Vec::with_capacity(BATCH),
            controls: vec![[0; 8]; BATCH],
            offload,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.runs.len() >= BATCH
    }

    /// An empty buffer to write the next datagram into.
    pub fn buffer(&mut self) -> Vec<u8> {
        self.spare.pop().unwrap_or_default()
    }

    pub fn recycle(&mut self, mut buf: Vec<u8>) {
        buf.clear();
        if self.spare.len() < BATCH {
            self.spare.push(buf);
        }
    }

    /// Queues a datagram, joining the last run when GSO can carry both.
    pub fn push(&mut self, dest: SocketAddr, datagram: Vec<u8>) {
        if self.offload.gso {
            if let Some(run) = self.runs.back_mut() {
                if run.takes(dest, datagram.len()) {
                    run.data.extend_from_slice(&datagram);
                    run.count += 1;
                    self.recycle(datagram);
                    return;
                }
            }
        }
        self.runs.push_back(Run {
            dest,
            segment: datagram.len().max(1),
            data: datagram,
            count: 1,
        });
    }

    /// The first run, to be sent another way when the socket buffer is full.
    pub fn pop_front(&mut self) -> Option<Run> {
        self.runs.pop_front()
    }

    /// Sends everything it can without blocking; `WouldBlock` when the
    /// socket buffer fills first. A datagram the kernel refuses is lost, as
    /// on the wire: retransmission covers it.
    pub fn send(&mut self, fd: RawFd) -> io::Result<()> {
        while !self.runs.is_empty() {
            match self.send_some(fd) {
                Ok(n) => {
                    for _ in 0..n {
                        let run = self.runs.pop_front().expect("sent runs are queued");
                        self.count_sent(&run);
                        self.recycle(run.data);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(e),
                Err(e) => {
                    let run = self.runs.pop_front().expect("a run failed");
                    let gso_refused = matches!(e.raw_os_error(), Some(libc::EIO | libc::EINVAL));
                    if run.count > 1 && gso_refused {
                        // The device or route cannot segment: send singly from now on.
                        self.offload.gso = false;
                        for d in run.data.rchunks(run.segment).map(<[u8]>::to_vec) {
                            self.runs.push_front(Run {
                                dest: run.dest,
                                segment: d.len(),
                                data: d,
                                count: 1,
                            });
                        }
                    } else {
                        self.recycle(run.data);
                    }
                }
            }
        }
        Ok(())
    }

    pub fn count_sent(&mut self, run: &Run) {
        self.offload.datagrams_sent += run.count as u64;
        if run.count > 1 {
            self.offload.gso_sends += 1;
        }
    }

    fn send_some(&mut self, fd: RawFd) -> io::Result<usize> {
        let n = self.runs.len().min(BATCH);
        self.hdrs.clear();
        self.iovs.clear();
        self.names.clear();
        for run in self.runs.iter().take(n) {
            self.iovs.push(libc::iovec {
                iov_base: run.data.as_ptr() as *mut libc::c_void,
                iov_len: run.data.len(),
            });
            self.names.push(SockAddr::from(run.dest));
        }
        for (i, run) in self.runs.iter().take(n).enumerate() {
            // SAFETY: all-zero is a valid mmsghdr (null pointers, zero lengths).
            let mut hdr: libc::mmsghdr = unsafe { std::mem::zeroed() };
            hdr.msg_hdr.msg_name = self.names[i].as_ptr() as *mut libc::c_void;
            hdr.msg_hdr.msg_namelen = self.names[i].len();
            hdr.msg_hdr.msg_iov = &mut self.iovs[i];
            hdr.msg_hdr.msg_iovlen = 1;
            if run.count > 1 {
                write_segment_size(&mut hdr.msg_hdr, &mut self.controls[i], run.segment as u16);
            }
            self.hdrs.push(hdr);
        }
        self.offload.send_calls += 1;
        // SAFETY: every header points into `iovs`, `names`, `controls` and
        // the runs' buffers, all alive and unmoved until the call returns.
        let rc = unsafe {
            libc::sendmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(rc as usize)
    }
}

/// Puts a UDP_SEGMENT control message (the GSO segment size) on `msg`.
fn write_segment_size(msg: &mut libc::msghdr, control: &mut Control, segment: u16) {
    msg.msg_control = control.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE of two bytes fits `Control`; the header and data
    // pointers CMSG_FIRSTHDR and CMSG_DATA return lie inside it.
    unsafe {
        msg.msg_controllen = libc::CMSG_SPACE(size_of::<u16>() as u32) as usize;
        let cmsg = libc::CMSG_FIRSTHDR(msg);
        (*cmsg).cmsg_level = libc::SOL_UDP;
        (*cmsg).cmsg_type = libc::UDP_SEGMENT;
        (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), segment);
    }
}

/// The GRO segment size the kernel reported on a receive, if any.
fn read_segment_size(msg: &libc::msghdr) -> Option<usize> {
    // SAFETY: the kernel filled `msg_control` up to `msg_controllen`; the
    // CMSG macros walk only within it.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_UDP && (*cmsg).cmsg_type == libc::UDP_GRO {
                let size = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>());
                return usize::try_from(size).ok().filter(|&s| s > 0);
            }
            cmsg = libc::CMSG_NXTHDR(msg, cmsg);
        }
    }
    None
}

/// Buffers for `recvmmsg`.
pub struct Inbox {
    bufs: Vec<Vec<u8>>,
    names: Vec<libc::sockaddr_storage>,
    controls: Vec<Control>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

impl Default for Inbox {
    fn default() -> Inbox {
        Inbox {
            bufs: vec![vec![0; RECEIVE_BYTES]; BATCH],
            // SAFETY: all-zero is a valid sockaddr_storage.
            names: vec![unsafe { std::mem::zeroed() }; BATCH],
            controls: vec![[0; 8]; BATCH],
            iovs: Vec::with_capacity(BATCH),
            hdrs: Vec::with_capacity(BATCH),
        }
    }
}

impl Inbox {
    /// Receives what waits without blocking and hands each datagram to
    /// `each`, cutting coalesced runs apart; `WouldBlock` when nothing waits.
    /// Fewer than [`BATCH`] receives mean the socket was found empty.
    pub fn receive(
        &mut self,
        fd: RawFd,
        offload: &mut Offload,
        mut each: impl FnMut(SocketAddr, &mut [u8]),
    ) -> io::Result<usize> {
        self.iovs.clear();
        self.hdrs.clear();
        for buf in &mut self.bufs {
            self.iovs.push(libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            });
        }
        for i in 0..BATCH {
            // SAFETY: all-zero is a valid mmsghdr.
            let mut hdr: libc::mmsghdr = unsafe { std::mem::zeroed() };
            hdr.msg_hdr.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
            hdr.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            hdr.msg_hdr.msg_iov = &mut self.iovs[i];
            hdr.msg_hdr.msg_iovlen = 1;
            hdr.msg_hdr.msg_control = self.controls[i].as_mut_ptr().cast();
            hdr.msg_hdr.msg_controllen = size_of::<Control>();
            self.hdrs.push(hdr);
        }
        offload.receive_calls += 1;
        // SAFETY: every header points into `bufs`, `names`, `iovs` and
        // `controls`, all alive and unmoved until the call returns.
        let rc = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let received = rc as usize;
        for i in 0..received {
            let hdr = &self.hdrs[i];
            let len = hdr.msg_len as usize;
            if hdr.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                continue; // larger than any datagram of ours
            }
            let Some(from) = socket_addr(&self.names[i], hdr.msg_hdr.msg_namelen) else {
                continue;
            };
            let segment = read_segment_size(&hdr.msg_hdr).unwrap_or(len).max(1);
            if len > segment {
                offload.gro_receives += 1;
            }
            for d in self.bufs[i][..len].chunks_mut(segment) {
                offload.datagrams_received += 1;
                each(from, d);
            }
        }
        Ok(received)
    }
}

fn socket_addr(name: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let mut storage = SockAddrStorage::zeroed();
    // SAFETY: sockaddr_storage is one of the platform's sockaddr types, and
    // the kernel wrote `len` bytes of a valid address into `name`.
    unsafe {
        *storage.view_as::<libc::sockaddr_storage>() = *name;
        SockAddr::new(storage, len).as_socket()
    }
}
