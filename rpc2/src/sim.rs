//! A simulated network that drives real endpoints in virtual time. One seed
//! decides every loss, duplication, delay and reordering, so a failing run
//! replays exactly from its seed.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::endpoint::{Endpoint, Event};
use crate::time::Time;
use crate::Config;

/// The faults and shape of the simulated network.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Probability that a datagram is lost.
    pub loss: f64,
    /// Probability that a datagram arrives twice.
    pub duplicate: f64,
    /// Probability that a datagram is held back so later ones overtake it.
    pub reorder: f64,
    /// One-way delay, and up to this much more at random.
    pub delay: Duration,
    pub jitter: Duration,
    /// Bytes per second on each directed link; None: unlimited.
    pub bandwidth: Option<u64>,
    /// Datagrams larger than this are dropped.
    pub mtu: usize,
}

impl Default for NetConfig {
    fn default() -> NetConfig {
        NetConfig {
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            delay: Duration::from_millis(5),
            jitter: Duration::from_millis(1),
            bandwidth: None,
            mtu: crate::packet::DATAGRAM_BYTES_MAX,
        }
    }
}

/// The virtual clock starts on 2026-01-01 so token lifetimes make sense.
pub const EPOCH: Time = Time(1_767_225_600_000_000);

pub type NodeId = usize;

/// What a node's handler may do with events.
pub struct Ctx<'a> {
    pub now: Time,
    pub endpoint: &'a mut Endpoint,
    later: &'a mut Vec<(Time, Action)>,
}

impl Ctx<'_> {
    /// Runs `action` on this node's endpoint at `at`.
    pub fn at(&mut self, at: Time, action: impl FnOnce(&mut Endpoint, Time) + 'static) {
        self.later.push((at, Box::new(action)));
    }
}

type Action = Box<dyn FnOnce(&mut Endpoint, Time)>;
type Handler = Box<dyn FnMut(&mut Ctx<'_>, Event) -> Option<Event>>;

pub struct Node {
    pub name: String,
    pub addr: SocketAddr,
    pub endpoint: Endpoint,
    /// Events the handler did not consume, for the test to read.
    pub events: VecDeque<Event>,
    handler: Option<Handler>,
}

struct InFlight {
    at: Time,
    order: u64,
    to: NodeId,
    from: SocketAddr,
    data: Vec<u8>,
}

impl PartialEq for InFlight {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.order) == (other.at, other.order)
    }
}
impl Eq for InFlight {}
impl PartialOrd for InFlight {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for InFlight {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.order).cmp(&(other.at, other.order))
    }
}

#[derive(Debug, Default, Clone)]
pub struct NetStats {
    pub sent: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub partitioned: u64,
    pub delivered: u64,
}

pub struct Sim {
    pub now: Time,
    pub net: NetConfig,
    pub seed: u64,
    rng: ChaCha8Rng,
    pub nodes: Vec<Node>,
    flights: BinaryHeap<Reverse<InFlight>>,
    later: BinaryHeap<Reverse<(Time, u64, NodeId)>>,
    actions: std::collections::HashMap<u64, Action>,
    order: u64,
    cut: BTreeSet<(NodeId, NodeId)>,
    link_free: std::collections::HashMap<(NodeId, NodeId), Time>,
    pub stats: NetStats,
    buf: Vec<u8>,
    filter: Option<Filter>,
    same_time_steps: u64,
}

/// Sees every datagram as it is sent; false drops it. Tests tamper here.
type Filter = Box<dyn FnMut(NodeId, NodeId, &mut Vec<u8>) -> bool>;

impl Sim {
    pub fn new(seed: u64, net: NetConfig) -> Sim {
        Sim {
            now: EPOCH,
            net,
            seed,
            rng: ChaCha8Rng::seed_from_u64(seed),
            nodes: Vec::new(),
            flights: BinaryHeap::new(),
            later: BinaryHeap::new(),
            actions: Default::default(),
            order: 0,
            cut: BTreeSet::new(),
            link_free: Default::default(),
            stats: NetStats::default(),
            buf: Vec::new(),
            filter: None,
            same_time_steps: 0,
        }
    }

    /// Adds an endpoint at 10.0.0.N:2432; its RNG seed derives from the sim's.
    pub fn add(&mut self, name: &str, mut config: Config) -> NodeId {
        let id = self.nodes.len();
        config.rng_seed = self.seed.wrapping_mul(1_000_003).wrapping_add(id as u64);
        let addr = SocketAddr::from((
            Ipv4Addr::new(10, 0, (id / 250) as u8, (id % 250 + 1) as u8),
            2432,
        ));
        self.nodes.push(Node {
            name: name.to_owned(),
            addr,
            endpoint: Endpoint::new(config),
            events: VecDeque::new(),
            handler: None,
        });
        id
    }

    /// Events of `node` go to `handler` first; what it returns is kept.
    pub fn set_handler(
        &mut self,
        node: NodeId,
        handler: impl FnMut(&mut Ctx<'_>, Event) -> Option<Event> + 'static,
    ) {
        self.nodes[node].handler = Some(Box::new(handler));
    }

    pub fn addr(&self, node: NodeId) -> SocketAddr {
        self.nodes[node].addr
    }

    pub fn endpoint(&mut self, node: NodeId) -> &mut Endpoint {
        &mut self.nodes[node].endpoint
    }

    /// Cuts the link between two nodes both ways.
    pub fn partition(&mut self, a: NodeId, b: NodeId) {
        self.cut.insert((a.min(b), a.max(b)));
    }

    pub fn heal(&mut self, a: NodeId, b: NodeId) {
        self.cut.remove(&(a.min(b), a.max(b)));
    }

    fn is_cut(&self, a: NodeId, b: NodeId) -> bool {
        self.cut.contains(&(a.min(b), a.max(b)))
    }

    /// Passes every datagram through `filter` (from, to, bytes) as it is sent.
    pub fn set_filter(
        &mut self,
        filter: impl FnMut(NodeId, NodeId, &mut Vec<u8>) -> bool + 'static,
    ) {
        self.filter = Some(Box::new(filter));
    }

    /// Delivers `data` to `to` as if `from` had sent it, after the usual delay.
    pub fn inject(&mut self, from: SocketAddr, to: NodeId, data: Vec<u8>) {
        self.order += 1;
        let at = self.now + self.net.delay;
        self.flights.push(Reverse(InFlight {
            at,
            order: self.order,
            to,
            from,
            data,
        }));
    }

    /// Replaces a node's endpoint with a fresh one: a crash and restart.
    pub fn restart(&mut self, node: NodeId, config: Config) {
        let mut config = config;
        self.order += 1;
        config.rng_seed = self.seed ^ self.order.wrapping_mul(0x9e37_79b9);
        self.nodes[node].endpoint = Endpoint::new(config);
        self.nodes[node].events.clear();
    }

    fn node_of(&self, addr: SocketAddr) -> Option<NodeId> {
        self.nodes.iter().position(|n| n.addr == addr)
    }

    /// Moves every datagram the endpoints want to send into the network.
    fn collect(&mut self) {
        for from in 0..self.nodes.len() {
            loop {
                let now = self.now;
                let mut buf = std::mem::take(&mut self.buf);
                let Some(dest) = self.nodes[from].endpoint.poll_transmit(now, &mut buf) else {
                    self.buf = buf;
                    break;
                };
                self.launch(from, dest, &buf);
                self.buf = buf;
            }
        }
    }

    fn launch(&mut self, from: NodeId, dest: SocketAddr, data: &[u8]) {
        self.stats.sent += 1;
        let Some(to) = self.node_of(dest) else { return };
        let mut data = data.to_vec();
        if let Some(filter) = self.filter.as_mut() {
            if !filter(from, to, &mut data) {
                self.stats.lost += 1;
                return;
            }
        }
        if data.len() > self.net.mtu || self.rng.random_bool(self.net.loss) {
            self.stats.lost += 1;
            return;
        }
        if self.is_cut(from, to) {
            self.stats.partitioned += 1;
            return;
        }
        let copies = if self.rng.random_bool(self.net.duplicate) {
            self.stats.duplicated += 1;
            2
        } else {
            1
        };
        let mut depart = self.now;
        if let Some(bw) = self.net.bandwidth {
            let free = self.link_free.entry((from, to)).or_insert(self.now);
            depart = (*free).max(self.now)
                + Duration::from_micros(data.len() as u64 * 1_000_000 / bw.max(1));
            *free = depart;
        }
        for _ in 0..copies {
            let jitter = self.net.jitter.as_micros() as u64;
            let mut at =
                depart + self.net.delay + Duration::from_micros(self.rng.random_range(0..=jitter));
            if self.rng.random_bool(self.net.reorder) {
                at = at + self.net.delay * 2;
            }
            self.order += 1;
            let from = self.nodes[from].addr;
            self.flights.push(Reverse(InFlight {
                at,
                order: self.order,
                to,
                from,
                data: data.clone(),
            }));
        }
    }

    /// Runs `action` on `node`'s endpoint at `at` (from the test).
    pub fn at(
        &mut self,
        at: Time,
        node: NodeId,
        action: impl FnOnce(&mut Endpoint, Time) + 'static,
    ) {
        self.order += 1;
        self.actions.insert(self.order, Box::new(action));
        self.later.push(Reverse((at, self.order, node)));
    }

    fn dispatch_events(&mut self, node: NodeId) {
        let n = &mut self.nodes[node];
        let mut later = Vec::new();
        while let Some(event) = n.endpoint.poll_event() {
            let kept = match n.handler.as_mut() {
                Some(h) => {
                    let mut ctx = Ctx {
                        now: self.now,
                        endpoint: &mut n.endpoint,
                        later: &mut later,
                    };
                    h(&mut ctx, event)
                }
                None => Some(event),
            };
            n.events.extend(kept);
        }
        for (at, action) in later {
            self.order += 1;
            self.actions.insert(self.order, action);
            self.later.push(Reverse((at, self.order, node)));
        }
    }

    /// Advances to the next thing that happens; false when nothing is left.
    pub fn step(&mut self) -> bool {
        self.step_within(None)
    }

    /// As `step`, but never past `horizon` (moving there if nothing is left).
    fn step_within(&mut self, horizon: Option<Time>) -> bool {
        for node in 0..self.nodes.len() {
            self.dispatch_events(node);
        }
        self.collect();
        let mut next: Option<Time> = self.flights.peek().map(|f| f.0.at);
        if let Some(Reverse((t, _, _))) = self.later.peek() {
            next = Some(next.map_or(*t, |n| n.min(*t)));
        }
        for n in &mut self.nodes {
            if let Some(t) = n.endpoint.poll_timeout() {
                next = Some(next.map_or(t, |x| x.min(t)));
            }
        }
        let next = match (next, horizon) {
            (Some(n), Some(h)) => n.min(h),
            (Some(n), None) => n,
            (None, Some(h)) if h > self.now => h,
            (None, _) => return false,
        };
        if next <= self.now {
            self.same_time_steps += 1;
            assert!(
                self.same_time_steps < 1_000_000,
                "simulation stuck at {:?} (seed {})",
                self.now,
                self.seed
            );
        } else {
            self.same_time_steps = 0;
        }
        self.now = self.now.max(next);
        let now = self.now;
        while self.flights.peek().is_some_and(|f| f.0.at <= now) {
            let Reverse(mut f) = self.flights.pop().unwrap();
            // An injected datagram may come from an address no node has.
            let from = self.node_of(f.from);
            if from.is_some_and(|from| self.is_cut(from, f.to)) {
                self.stats.partitioned += 1;
                continue;
            }
            self.stats.delivered += 1;
            self.nodes[f.to].endpoint.handle(now, f.from, &mut f.data);
        }
        while self.later.peek().is_some_and(|l| l.0 .0 <= now) {
            let Reverse((_, order, node)) = self.later.pop().unwrap();
            let action = self.actions.remove(&order).unwrap();
            action(&mut self.nodes[node].endpoint, now);
        }
        for n in &mut self.nodes {
            n.endpoint.handle_timeout(now);
        }
        // Hand out what happened now, so a test sees it before time moves on.
        for node in 0..self.nodes.len() {
            self.dispatch_events(node);
        }
        true
    }

    /// Steps until `done` holds or `limit` of virtual time has passed (time
    /// stops exactly there); true if `done` held.
    pub fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&mut Sim) -> bool) -> bool {
        let end = self.now + limit;
        loop {
            if done(self) {
                return true;
            }
            if self.now >= end || !self.step_within(Some(end)) {
                return done(self);
            }
        }
    }

    /// Steps for a span of virtual time.
    pub fn run_for(&mut self, span: Duration) {
        let end = self.now + span;
        self.run_until(span, |s| s.now >= end);
    }
}
