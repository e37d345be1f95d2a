//! Downlink routing: device name → the (shard, connection) that last carried its uplink, and the
//! downlinks held for devices that have no live connection.
//!
//! Pure state, driven by the uplink core:
//! * every shipped uplink record calls [`Router::saw_uplink`] (last uplink wins, as in
//!   ThingsBoard), which also releases the downlinks held for that device onto that connection;
//! * a closed connection ([`Router::connection_closed`]) forgets the routes through it;
//! * a downlink ([`Router::route`]) goes to the live route, or is held — at most
//!   `hold_max_per_device` per device (the oldest is dropped first) and for at most `hold_for`
//!   (expired ones are dropped by [`Router::expire`]). Every drop is returned to the caller, who
//!   counts and logs it.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

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

/// Routes and held downlinks of every device this process has seen.
#[derive(Debug)]
pub struct Router<T> {
    routes: HashMap<String, ConnRef>,
    /// The devices routed through each connection, so a close costs its own devices only.
    by_conn: HashMap<ConnRef, Vec<String>>,
    held: HashMap<String, VecDeque<Held<T>>>,
    hold_max_per_device: usize,
    hold_for: Duration,
}

impl<T> Router<T> {
    pub fn new(hold_max_per_device: usize, hold_for: Duration) -> Self {
        Router {
            routes: HashMap::new(),
            by_conn: HashMap::new(),
            held: HashMap::new(),
            hold_max_per_device,
            hold_for,
        }
    }

    /// Records that `device`'s uplink arrived on `conn`; returns the downlinks held for it,
    /// oldest first, now due on `conn`.
    pub fn saw_uplink(&mut self, device: &str, conn: ConnRef) -> Vec<T> {
        match self.routes.get_mut(device) {
            Some(route) if *route == conn => {}
            Some(route) => {
                *route = conn;
                self.by_conn
                    .entry(conn)
                    .or_default()
                    .push(device.to_owned());
            }
            None => {
                self.routes.insert(device.to_owned(), conn);
                self.by_conn
                    .entry(conn)
                    .or_default()
                    .push(device.to_owned());
            }
        }
        if self.held.is_empty() {
            return Vec::new();
        }
        match self.held.remove(device) {
            Some(queue) => queue.into_iter().map(|h| h.item).collect(),
            None => Vec::new(),
        }
    }

    /// Forgets every route through `conn` (the connection closed).
    pub fn connection_closed(&mut self, conn: ConnRef) {
        for device in self.by_conn.remove(&conn).unwrap_or_default() {
            if self.routes.get(&device) == Some(&conn) {
                self.routes.remove(&device);
            }
        }
    }

    /// Sends `item` to the device's live connection, or holds it.
    pub fn route(&mut self, device: &str, item: T, now: Instant) -> Route<T> {
        if let Some(conn) = self.routes.get(device) {
            return Route::Deliver(*conn, item);
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

    /// Drops held downlinks older than the hold time; returns them with their device names.
    pub fn expire(&mut self, now: Instant) -> Vec<(String, T)> {
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
        assert!(r.saw_uplink("SN-1", A0).is_empty());
        assert!(r.saw_uplink("SN-1", B1).is_empty());
        assert_eq!(r.route("SN-1", "x", now), Route::Deliver(B1, "x"));
    }

    #[test]
    fn downlink_waits_for_next_uplink() {
        let mut r = Router::new(10, Duration::from_secs(60));
        let now = Instant::now();
        assert_eq!(r.route("SN-1", "a", now), Route::Held { dropped: None });
        assert_eq!(r.route("SN-1", "b", now), Route::Held { dropped: None });
        assert_eq!(r.held_count(), 2);
        assert_eq!(r.saw_uplink("SN-1", B1), vec!["a", "b"]);
        assert_eq!(r.held_count(), 0);
        assert_eq!(r.route("SN-1", "c", now), Route::Deliver(B1, "c"));
    }

    #[test]
    fn closed_connection_forgets_its_routes_only() {
        let mut r = Router::new(10, Duration::from_secs(60));
        let now = Instant::now();
        r.saw_uplink("SN-1", A0);
        r.saw_uplink("SN-2", B1);
        r.connection_closed(A0);
        assert_eq!(r.route("SN-1", 1, now), Route::Held { dropped: None });
        assert_eq!(r.route("SN-2", 2, now), Route::Deliver(B1, 2));
        assert_eq!(r.routed_devices(), 1);
    }

    #[test]
    fn device_moved_to_another_connection_survives_the_old_close() {
        let mut r = Router::new(10, Duration::from_secs(60));
        let now = Instant::now();
        r.saw_uplink("SN-1", A0);
        r.saw_uplink("SN-1", B1);
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
        assert_eq!(r.saw_uplink("SN-1", A0), vec![2, 3]);
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
        assert_eq!(r.saw_uplink("SN-1", A0), vec![2]);
    }

    #[test]
    fn zero_hold_limit_drops_at_once() {
        let mut r: Router<u8> = Router::new(0, Duration::from_secs(5));
        assert_eq!(
            r.route("SN-1", 7, Instant::now()),
            Route::Held { dropped: Some(7) }
        );
    }
}
