//! Downlink routing: device name → the (shard, connection) that last carried its uplink, and the
//! downlinks held for devices that have no live connection.
//!
//! Pure state, driven by the uplink core:
//! * every shipped uplink record calls [`Router::saw_uplink`] (last uplink wins, as in
//!   ThingsBoard), which also releases the downlinks held for that device onto that connection;
//! * a closed connection ([`Router::connection_closed`]) forgets the routes through it, and
//!   uplinks that still arrive from it (its last records may reach the uplink core after the
//!   close: they wait in the shard's outbox, the close does not) route nothing and release
//!   nothing — otherwise they could point a device that already reconnected elsewhere back at
//!   the dead connection;
//! * a downlink ([`Router::route`]) goes to the live route, or is held — at most
//!   `hold_max_per_device` per device (the oldest is dropped first) and for at most `hold_for`
//!   (expired ones are dropped by [`Router::expire`]). Every drop is returned to the caller, who
//!   counts and logs it.
//!
//! Device names are chosen by devices, so every map here is bounded: routes by the integration's
//! `cacheSize` (least recently written dropped first) and `timeToLiveInMinutes` (expire after
//! write) — the contract's device→peer cache (§3.1) — and by live connections (a close drops its
//! routes); `by_conn` holds each device once per connection and only while it routes there; held
//! downlinks are bounded per device and by age. A dropped route only means the next downlink is
//! held until the device's next uplink, which restores the route.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

/// ThingsBoard's defaults of the device→peer cache (`cacheSize`, `timeToLiveInMinutes`).
pub const DEFAULT_MAX_ROUTES: usize = 1000;
pub const DEFAULT_ROUTE_TTL: Duration = Duration::from_secs(1440 * 60);

/// Closed connections remembered, newest last, so that their late uplinks are not routed.
/// Late records trail their close by the shard outbox's delay (or a backpressure stall), far
/// less than this many closes.
const CLOSED_CONNS_REMEMBERED: usize = 65_536;

/// A route's write time is refreshed by an uplink on the same connection at most this often,
/// so the per-record cost stays one hash lookup.
const ROUTE_REFRESH: Duration = Duration::from_secs(1);

/// A device connection: which shard, and the connection's id within the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnRef {
    pub shard: usize,
    pub conn_id: u64,
}

/// Where a downlink goes now.
#[derive(Debug, PartialEq)]
pub enum Route<T> {
    /// Deliver to this live connection.
    Deliver(ConnRef, T),
    /// Held until the device's next uplink; `dropped` is the held downlink that made room, if any.
    Held { dropped: Option<T> },
}

#[derive(Debug)]
struct Held<T> {
    since: Instant,
    item: T,
}

#[derive(Debug, Clone, Copy)]
struct RouteEntry {
    conn: ConnRef,
    written_at: Instant,
    /// Key of this route in `write_order`.
    stamp: u64,
}

/// Routes and held downlinks of every device this process has seen.
#[derive(Debug)]
pub struct Router<T> {
    routes: HashMap<String, RouteEntry>,
    /// Routes by write order (oldest first): eviction by size and by age.
    write_order: BTreeMap<u64, String>,
    next_stamp: u64,
    /// The devices routed through each connection, so a close costs its own devices only.
    by_conn: HashMap<ConnRef, HashSet<String>>,
    held: HashMap<String, VecDeque<Held<T>>>,
    /// Recently closed connections (set and close order, at most `CLOSED_CONNS_REMEMBERED`).
    closed: HashSet<ConnRef>,
    closed_order: VecDeque<ConnRef>,
    hold_max_per_device: usize,
    hold_for: Duration,
    max_routes: usize,
    route_ttl: Duration,
}

impl<T> Router<T> {
    /// A router with ThingsBoard's default route cache bounds.
    pub fn new(hold_max_per_device: usize, hold_for: Duration) -> Self {
        Router {
            routes: HashMap::new(),
            write_order: BTreeMap::new(),
            next_stamp: 0,
            by_conn: HashMap::new(),
            held: HashMap::new(),
            closed: HashSet::new(),
            closed_order: VecDeque::new(),
            hold_max_per_device,
            hold_for,
            max_routes: DEFAULT_MAX_ROUTES,
            route_ttl: DEFAULT_ROUTE_TTL,
        }
    }

    /// Sets the route bounds (the integration's `cacheSize` and `timeToLiveInMinutes`); either
    /// at zero keeps no routes, as a zero-sized or zero-lived cache does. Routes over the new
    /// size are dropped at once, oldest first.
    pub fn set_route_bounds(&mut self, max_routes: usize, route_ttl: Duration) {
        self.max_routes = if route_ttl.is_zero() { 0 } else { max_routes };
        self.route_ttl = route_ttl;
        while self.routes.len() > self.max_routes {
            if !self.evict_oldest_route() {
                break;
            }
        }
    }

    /// Records that `device`'s uplink arrived on `conn` at `now`; returns the downlinks held
    /// for it, oldest first, now due on `conn`.
    pub fn saw_uplink(&mut self, device: &str, conn: ConnRef, now: Instant) -> Vec<T> {
        if self.closed.contains(&conn) {
            return Vec::new();
        }
        self.write_route(device, conn, now);
        if self.held.is_empty() {
            return Vec::new();
        }
        match self.held.remove(device) {
            Some(queue) => queue.into_iter().map(|h| h.item).collect(),
            None => Vec::new(),
        }
    }

    /// Records that `device`'s uplink arrived on `conn` at `now`, leaving what is held for it
    /// held (the caller cannot deliver it now).
    pub fn note_uplink(&mut self, device: &str, conn: ConnRef, now: Instant) {
        if !self.closed.contains(&conn) {
            self.write_route(device, conn, now);
        }
    }

    /// Callers check `closed` first (one lookup per record on the uplink core).
    fn write_route(&mut self, device: &str, conn: ConnRef, now: Instant) {
        if self.max_routes == 0 {
            return;
        }
        let stamp = self.next_stamp;
        match self.routes.get_mut(device) {
            Some(route)
                if route.conn == conn && now.duration_since(route.written_at) < ROUTE_REFRESH => {}
            Some(route) => {
                let old = *route;
                *route = RouteEntry {
                    conn,
                    written_at: now,
                    stamp,
                };
                self.next_stamp += 1;
                let name = self
                    .write_order
                    .remove(&old.stamp)
                    .unwrap_or_else(|| device.to_owned());
                if old.conn != conn {
                    self.unlink(old.conn, device);
                    self.by_conn.entry(conn).or_default().insert(name.clone());
                }
                self.write_order.insert(stamp, name);
            }
            None => {
                self.next_stamp += 1;
                if self.routes.len() >= self.max_routes {
                    self.evict_oldest_route();
                }
                self.routes.insert(
                    device.to_owned(),
                    RouteEntry {
                        conn,
                        written_at: now,
                        stamp,
                    },
                );
                self.write_order.insert(stamp, device.to_owned());
                self.by_conn
                    .entry(conn)
                    .or_default()
                    .insert(device.to_owned());
            }
        }
    }

    /// Removes `device` from the devices of `conn` (and `conn` itself when it has none left).
    fn unlink(&mut self, conn: ConnRef, device: &str) {
        if let Some(devices) = self.by_conn.get_mut(&conn) {
            devices.remove(device);
            if devices.is_empty() {
                self.by_conn.remove(&conn);
            }
        }
    }

    fn evict_oldest_route(&mut self) -> bool {
        let Some((_, device)) = self.write_order.pop_first() else {
            return false;
        };
        if let Some(route) = self.routes.remove(&device) {
            self.unlink(route.conn, &device);
        }
        true
    }

    /// Forgets every route through `conn` (the connection closed).
    pub fn connection_closed(&mut self, conn: ConnRef) {
        if self.closed.insert(conn) {
            self.closed_order.push_back(conn);
            if self.closed_order.len() > CLOSED_CONNS_REMEMBERED
                && let Some(oldest) = self.closed_order.pop_front()
            {
                self.closed.remove(&oldest);
            }
        }
        for device in self.by_conn.remove(&conn).unwrap_or_default() {
            if let Some(route) = self.routes.get(&device)
                && route.conn == conn
            {
                self.write_order.remove(&route.stamp);
                self.routes.remove(&device);
            }
        }
    }

    /// Sends `item` to the device's live connection, or holds it.
    pub fn route(&mut self, device: &str, item: T, now: Instant) -> Route<T> {
        if let Some(route) = self.routes.get(device) {
            return Route::Deliver(route.conn, item);
        }
        self.hold(device, item, now)
    }

    /// Holds `item` for `device` (its connection turned out to be gone).
    pub fn hold(&mut self, device: &str, item: T, now: Instant) -> Route<T> {
        if self.hold_max_per_device == 0 {
            return Route::Held {
                dropped: Some(item),
            };
        }
        let queue = self.held.entry(device.to_owned()).or_default();
        let dropped = if queue.len() >= self.hold_max_per_device {
            queue.pop_front().map(|h| h.item)
        } else {
            None
        };
        queue.push_back(Held { since: now, item });
        Route::Held { dropped }
    }

    /// Drops routes written longer than the route TTL ago and held downlinks older than the
    /// hold time; returns the dropped downlinks with their device names.
    pub fn expire(&mut self, now: Instant) -> Vec<(String, T)> {
        while let Some((_, device)) = self.write_order.first_key_value() {
            let stale = self
                .routes
                .get(device)
                .is_none_or(|r| now.duration_since(r.written_at) >= self.route_ttl);
            if !stale {
                break;
            }
            self.evict_oldest_route();
        }
        let mut expired = Vec::new();
        let hold_for = self.hold_for;
        self.held.retain(|device, queue| {
            while let Some(front) = queue.front() {
                if now.duration_since(front.since) < hold_for {
                    break;
                }
                if let Some(h) = queue.pop_front() {
                    expired.push((device.clone(), h.item));
                }
            }
            !queue.is_empty()
        });
        expired
    }

    /// Number of downlinks held across all devices.
    pub fn held_count(&self) -> usize {
        self.held.values().map(VecDeque::len).sum()
    }

    /// Number of devices with a live route.
    pub fn routed_devices(&self) -> usize {
        self.routes.len()
    }

    /// Number of (connection, device) links kept for closing connections.
    pub fn nr_connection_links(&self) -> usize {
        self.by_conn.values().map(HashSet::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A0: ConnRef = ConnRef {
        shard: 0,
        conn_id: 1,
    };
    const B1: ConnRef = ConnRef {
        shard: 1,
        conn_id: 2,
    };

    #[test]
    fn downlink_to_connected_device_is_delivered_on_its_last_connection() {
        let mut r = Router::new(10, Duration::from_secs(60));
        let now = Instant::now();
        assert!(r.saw_uplink("SN-1", A0, now).is_empty());
        assert!(r.saw_uplink("SN-1", B1, now).is_empty());
        assert_eq!(r.route("SN-1", "x", now), Route::Deliver(B1, "x"));
    }

    #[test]
    fn downlink_waits_for_next_uplink() {
        let mut r = Router::new(10, Duration::from_secs(60));
        let now = Instant::now();
        assert_eq!(r.route("SN-1", "a", now), Route::Held { dropped: None });
        assert_eq!(r.route("SN-1", "b", now), Route::Held { dropped: None });
        assert_eq!(r.held_count(), 2);
        assert_eq!(r.saw_uplink("SN-1", B1, now), vec!["a", "b"]);
        assert_eq!(r.held_count(), 0);
        assert_eq!(r.route("SN-1", "c", now), Route::Deliver(B1, "c"));
    }

    #[test]
    fn late_uplinks_of_a_closed_connection_route_nothing() {
        let mut r = Router::new(10, Duration::from_secs(60));
        let now = Instant::now();
        r.saw_uplink("SN-1", A0, now);
        r.connection_closed(A0);
        // The device reconnected on the other shard and sent there first...
        assert!(r.saw_uplink("SN-1", B1, now).is_empty());
        // ...then its old connection's last records arrive.
        assert!(r.saw_uplink("SN-1", A0, now).is_empty());
        r.note_uplink("SN-1", A0, now);
        assert_eq!(r.route("SN-1", "x", now), Route::Deliver(B1, "x"));
        // A held downlink stays held for a late record of a closed connection.
        r.saw_uplink("SN-2", A0, now);
        assert_eq!(r.route("SN-2", "y", now), Route::Held { dropped: None });
        assert!(r.saw_uplink("SN-2", A0, now).is_empty());
        assert_eq!(r.held_count(), 1);
        assert_eq!(r.saw_uplink("SN-2", B1, now), vec!["y"]);
    }

    #[test]
    fn closed_connections_are_remembered_up_to_a_bound() {
        let mut r: Router<()> = Router::new(10, Duration::from_secs(60));
        let now = Instant::now();
        let conn = |id| ConnRef {
            shard: 0,
            conn_id: id,
        };
        for id in 0..(CLOSED_CONNS_REMEMBERED as u64 + 10) {
            r.connection_closed(conn(id));
        }
        assert_eq!(r.closed.len(), CLOSED_CONNS_REMEMBERED);
        assert_eq!(r.closed_order.len(), CLOSED_CONNS_REMEMBERED);
        // The oldest closes were forgotten: such a connection routes again (conn ids are never
        // reused, so in practice no uplink comes from it any more).
        r.saw_uplink("SN-1", conn(0), now);
        assert_eq!(r.route("SN-1", (), now), Route::Deliver(conn(0), ()));
        r.saw_uplink("SN-2", conn(20), now);
        assert_eq!(r.route("SN-2", (), now), Route::Held { dropped: None });
    }

    #[test]
    fn closed_connection_forgets_its_routes_only() {
        let mut r = Router::new(10, Duration::from_secs(60));
        let now = Instant::now();
        r.saw_uplink("SN-1", A0, now);
        r.saw_uplink("SN-2", B1, now);
        r.connection_closed(A0);
        assert_eq!(r.route("SN-1", 1, now), Route::Held { dropped: None });
        assert_eq!(r.route("SN-2", 2, now), Route::Deliver(B1, 2));
        assert_eq!(r.routed_devices(), 1);
    }

    #[test]
    fn device_moved_to_another_connection_survives_the_old_close() {
        let mut r = Router::new(10, Duration::from_secs(60));
        let now = Instant::now();
        r.saw_uplink("SN-1", A0, now);
        r.saw_uplink("SN-1", B1, now);
        r.connection_closed(A0);
        assert_eq!(r.route("SN-1", 1, now), Route::Deliver(B1, 1));
        r.connection_closed(B1);
        assert_eq!(r.route("SN-1", 2, now), Route::Held { dropped: None });
    }

    #[test]
    fn hold_limit_drops_oldest() {
        let mut r = Router::new(2, Duration::from_secs(60));
        let now = Instant::now();
        r.route("SN-1", 1, now);
        r.route("SN-1", 2, now);
        assert_eq!(r.route("SN-1", 3, now), Route::Held { dropped: Some(1) });
        assert_eq!(r.saw_uplink("SN-1", A0, now), vec![2, 3]);
    }

    #[test]
    fn held_downlinks_expire_after_hold_time() {
        let mut r = Router::new(10, Duration::from_secs(5));
        let t0 = Instant::now();
        r.route("SN-1", 1, t0);
        r.route("SN-1", 2, t0 + Duration::from_secs(3));
        assert!(r.expire(t0 + Duration::from_secs(4)).is_empty());
        assert_eq!(
            r.expire(t0 + Duration::from_secs(5)),
            vec![("SN-1".to_owned(), 1)]
        );
        assert_eq!(r.saw_uplink("SN-1", A0, t0), vec![2]);
    }

    #[test]
    fn zero_hold_limit_drops_at_once() {
        let mut r: Router<u8> = Router::new(0, Duration::from_secs(5));
        assert_eq!(
            r.route("SN-1", 7, Instant::now()),
            Route::Held { dropped: Some(7) }
        );
    }

    #[test]
    fn noting_an_uplink_routes_without_releasing_held_downlinks() {
        let mut router: Router<u32> = Router::new(10, Duration::from_secs(60));
        let now = Instant::now();
        let conn = ConnRef {
            shard: 1,
            conn_id: 7,
        };
        assert!(matches!(router.route("d", 1, now), Route::Held { .. }));
        router.note_uplink("d", conn, now);
        assert_eq!(router.held_count(), 1, "still held");
        assert!(matches!(router.route("d", 2, now), Route::Deliver(c, 2) if c == conn));
        assert_eq!(router.saw_uplink("d", conn, now), vec![1]);
        assert_eq!(router.held_count(), 0);
    }

    #[test]
    fn device_moving_back_and_forth_is_linked_once() {
        let mut r: Router<u8> = Router::new(10, Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..1000u64 {
            let conn = if i % 2 == 0 { A0 } else { B1 };
            r.saw_uplink("SN-1", conn, t0 + Duration::from_secs(i));
        }
        // Last uplink was on B1; A0 no longer lists the device at all.
        assert_eq!(r.nr_connection_links(), 1);
        assert_eq!(r.routed_devices(), 1);
        assert_eq!(r.route("SN-1", 1, t0), Route::Deliver(B1, 1));
        r.connection_closed(B1);
        assert_eq!(r.nr_connection_links(), 0);
        assert_eq!(r.routed_devices(), 0);
    }

    #[test]
    fn routes_are_bounded_by_the_cache_size_oldest_write_first() {
        let mut r: Router<u8> = Router::new(10, Duration::from_secs(60));
        r.set_route_bounds(3, Duration::from_secs(600));
        let t0 = Instant::now();
        for (i, name) in ["SN-1", "SN-2", "SN-3"].into_iter().enumerate() {
            r.saw_uplink(name, A0, t0 + Duration::from_secs(i as u64 * 2));
        }
        // SN-1 writes again: SN-2 is now the least recently written.
        r.saw_uplink("SN-1", A0, t0 + Duration::from_secs(10));
        r.saw_uplink("SN-4", B1, t0 + Duration::from_secs(11));
        assert_eq!(r.routed_devices(), 3);
        assert_eq!(r.nr_connection_links(), 3);
        assert_eq!(r.route("SN-2", 2, t0), Route::Held { dropped: None });
        assert_eq!(r.route("SN-1", 1, t0), Route::Deliver(A0, 1));
        assert_eq!(r.route("SN-3", 3, t0), Route::Deliver(A0, 3));
        assert_eq!(r.route("SN-4", 4, t0), Route::Deliver(B1, 4));
        // The held downlink still reaches SN-2 on its next uplink.
        assert_eq!(
            r.saw_uplink("SN-2", B1, t0 + Duration::from_secs(12)),
            vec![2]
        );
        // Shrinking the cache drops the oldest at once (SN-3, then SN-1).
        r.set_route_bounds(2, Duration::from_secs(600));
        assert_eq!(r.routed_devices(), 2);
        assert_eq!(r.route("SN-3", 5, t0), Route::Held { dropped: None });
        assert_eq!(r.route("SN-1", 6, t0), Route::Held { dropped: None });
        assert_eq!(r.route("SN-4", 7, t0), Route::Deliver(B1, 7));
    }

    #[test]
    fn routes_expire_after_write() {
        let mut r: Router<u8> = Router::new(10, Duration::from_secs(60));
        r.set_route_bounds(100, Duration::from_secs(60));
        let t0 = Instant::now();
        r.saw_uplink("SN-1", A0, t0);
        r.saw_uplink("SN-2", A0, t0 + Duration::from_secs(30));
        assert!(r.expire(t0 + Duration::from_secs(59)).is_empty());
        assert_eq!(r.routed_devices(), 2);
        r.expire(t0 + Duration::from_secs(60));
        assert_eq!(r.routed_devices(), 1);
        assert_eq!(r.nr_connection_links(), 1);
        assert_eq!(
            r.route("SN-1", 1, t0 + Duration::from_secs(60)),
            Route::Held { dropped: None }
        );
        // A later uplink refreshes the write time.
        r.saw_uplink("SN-2", A0, t0 + Duration::from_secs(80));
        r.expire(t0 + Duration::from_secs(100));
        assert_eq!(
            r.route("SN-2", 2, t0 + Duration::from_secs(100)),
            Route::Deliver(A0, 2)
        );
    }

    #[test]
    fn zero_cache_size_keeps_no_routes_but_releases_held_downlinks() {
        let mut r: Router<u8> = Router::new(10, Duration::from_secs(60));
        r.set_route_bounds(0, Duration::from_secs(60));
        let now = Instant::now();
        assert_eq!(r.route("SN-1", 1, now), Route::Held { dropped: None });
        assert_eq!(r.saw_uplink("SN-1", A0, now), vec![1]);
        assert_eq!(r.routed_devices(), 0);
        assert_eq!(r.nr_connection_links(), 0);
    }
}
