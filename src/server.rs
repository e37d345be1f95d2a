//! The running integration: wires the shards and the uplink core together with channels created
//! once at start-up, and owns their threads.
//!
//! `Server::start` returns a handle so tests and the demo run the real server in-process;
//! `run` is the blocking form the `run` subcommand uses (it stops on SIGINT/SIGTERM).

use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::{mpsc, watch};

use crate::metrics::http::MetricsEndpoint;
use crate::shard::{self, ShardChannels, ShardConfig, ShardSettings};
use crate::uplink::core::{self, UplinkCoreChannels, UplinkCoreOptions};

/// Records messages (one per connection read) buffered between the shards and the uplink
/// core per configured record of capacity: a read carries tens of records on average, so the
/// channel is sized in messages as `shard_channel_records / RECORDS_PER_MESSAGE_GUESS`.
const RECORDS_PER_MESSAGE_GUESS: usize = 16;

/// A shard hands its outbox over at the latest when it holds this many records (or one batch,
/// if batches are smaller), so that at high rates the outbox never waits on its timer.
const OUTBOX_FLUSH_RECORDS_MAX: usize = 512;

/// How the process is laid out and what each part is given.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub uplink: UplinkCoreOptions,
    pub shard: ShardSettings,
    /// Cores for shards, in order; shorter than `nr_shards` (or empty) leaves the rest unpinned.
    pub shard_cores: Vec<usize>,
    /// Core for the uplink core thread; `None` leaves it unpinned.
    pub uplink_core: Option<usize>,
    pub shard_channel_records: usize,
    pub downlink_inbox: usize,
    /// Where `/metrics` is served; `None` = off.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// A started server.
pub struct Server {
    shutdown: watch::Sender<bool>,
    shards: Vec<glommio::ExecutorJoinHandle<()>>,
    uplink: Option<JoinHandle<anyhow::Result<()>>>,
    config: watch::Receiver<ShardConfig>,
    metrics: Option<MetricsEndpoint>,
}

impl Server {
    /// Starts the shards and the uplink core; returns at once.
    pub fn start(options: ServerOptions) -> anyhow::Result<Server> {
        let nr_shards = options.shard.nr_shards.max(1);
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        // Bound first: a taken metrics address fails start-up before any thread exists.
        let metrics = options
            .metrics_listen
            .map(|listen| MetricsEndpoint::start(listen, shutdown_rx.clone()))
            .transpose()?;
        let (config_tx, config_rx) = watch::channel::<ShardConfig>(None);
        let capacity = (options.shard_channel_records / RECORDS_PER_MESSAGE_GUESS).max(1);
        let (records_tx, records_rx) = mpsc::channel(capacity);
        let (events_tx, events_rx) = mpsc::unbounded_channel();

        let mut shard_downlinks = Vec::with_capacity(nr_shards);
        let mut shards = Vec::with_capacity(nr_shards);
        for index in 0..nr_shards {
            let (downlink_tx, downlink_rx) = mpsc::channel(options.downlink_inbox.max(1));
            shard_downlinks.push(downlink_tx);
            let channels = ShardChannels {
                records: records_tx.clone(),
                events: events_tx.clone(),
                config: config_rx.clone(),
                downlinks: downlink_rx,
                shutdown: shutdown_rx.clone(),
            };
            let mut settings = options.shard.clone();
            settings.nr_shards = nr_shards;
            let core = options.shard_cores.get(index).copied();
            shards.push(shard::spawn(index, core, settings, channels)?);
        }
        drop(records_tx);
        drop(events_tx);

        let uplink_options = options.uplink.clone();
        let uplink_core = options.uplink_core;
        let channels = UplinkCoreChannels {
            records: records_rx,
            events: events_rx,
            shard_downlinks,
            shard_config: config_tx,
            shutdown: shutdown_rx,
        };
        let uplink = std::thread::Builder::new()
            .name("tcp-integration-uplink".to_owned())
            .spawn(move || -> anyhow::Result<()> {
                if let Some(core) = uplink_core {
                    pin_current_thread(core);
                }
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("cannot build the uplink core's runtime")?;
                runtime.block_on(core::run(uplink_options, channels))?;
                Ok(())
            })
            .context("cannot start the uplink core thread")?;
        Ok(Server {
            shutdown: shutdown_tx,
            shards,
            uplink: Some(uplink),
            config: config_rx,
            metrics,
        })
    }

    /// What the shards serve now (`None` until ThingsBoard sent a configuration).
    pub fn serving(&self) -> ShardConfig {
        self.config.borrow().clone()
    }

    /// Where `/metrics` is served, when it is.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics.as_ref().map(|m| m.local_addr)
    }

    /// Waits until the shards serve a configuration, up to `timeout`.
    pub fn wait_serving(&mut self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if self.config.borrow().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// Stops accepting, lets connections finish what they read, drains in-flight batches
    /// (bounded by the drain timeout) and joins every thread.
    pub fn shutdown(mut self) -> anyhow::Result<()> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(true);
        for shard in self.shards.drain(..) {
            if let Err(e) = shard.join() {
                tracing::error!("shard ended with an error: {e}");
            }
        }
        let uplink = match self.uplink.take() {
            Some(uplink) => uplink
                .join()
                .map_err(|_| anyhow::anyhow!("the uplink core panicked"))
                .and_then(|result| result),
            None => Ok(()),
        };
        // Last: the drain above is still visible to a scrape.
        if let Some(metrics) = self.metrics.take() {
            metrics.join();
        }
        uplink
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.uplink.is_some() {
            let _ = self.stop_and_join();
        }
    }
}

/// Runs until SIGINT or SIGTERM, then shuts down cleanly.
pub fn run(options: ServerOptions) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let signals = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Handlers first: a signal that arrives while the threads start must not kill the process.
    let (mut interrupt, mut terminate) = signals.block_on(async {
        anyhow::Ok((
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
        ))
    })?;
    let nr_shards = options.shard.nr_shards;
    let server = Server::start(options)?;
    tracing::info!(
        nr_shards,
        "started; waiting for the configuration from ThingsBoard (SIGINT/SIGTERM stops)"
    );
    signals.block_on(async {
        tokio::select! {
            _ = interrupt.recv() => tracing::info!("SIGINT: shutting down"),
            _ = terminate.recv() => tracing::info!("SIGTERM: shutting down"),
        }
    });
    server.shutdown()
}

/// Pins the calling thread to `core`; warns and carries on unpinned when that fails.
pub fn pin_current_thread(core: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and sched_setaffinity only
    // touch the set we own.
    let result = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if result != 0 {
        tracing::warn!(
            core,
            "cannot pin thread to core {core}: {}; running unpinned",
            std::io::Error::last_os_error()
        );
    }
}

impl ServerOptions {
    /// Lays the process out from the validated local settings: by default one shard per core
    /// but one, pinned in core order, and the uplink core on the next core (unpinned when the
    /// machine has a single core).
    pub fn from_settings(settings: &crate::config::local::Settings) -> ServerOptions {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let nr_shards = settings
            .shards
            .nr_shards
            .or(settings.shards.shard_cores.as_ref().map(Vec::len))
            .unwrap_or(cores.saturating_sub(1))
            .max(1);
        let shard_cores = settings.shards.shard_cores.clone().unwrap_or_else(|| {
            if cores > 1 {
                (0..nr_shards.min(cores)).collect()
            } else {
                Vec::new()
            }
        });
        let uplink_core = settings
            .shards
            .uplink_core
            .or_else(|| default_uplink_core(cores, &shard_cores));
        let rpc = &settings.rpc;
        let session = crate::uplink::session::SessionConfig {
            endpoint: rpc.endpoint_uri(),
            routing_key: rpc.routing_key.clone(),
            secret: rpc.secret.clone(),
            service_id: rpc.service_id(),
            tls_ca_pem: rpc.ssl_cert.clone(),
            // `None` (keep_alive_secs = 0) means no pings, as documented.
            keepalive: rpc.keep_alive,
            reconnect_base: rpc.reconnect_base,
            reconnect_max: (rpc.reconnect_base * 20).max(std::time::Duration::from_secs(60)),
        };
        let spool = spool_options(&settings.spool);
        let uplink = UplinkCoreOptions {
            session,
            spool,
            batch_max_records: settings.uplink.batch_max_records,
            batch_max_bytes: settings.uplink.batch_max_bytes,
            linger: settings.uplink.batch_linger,
            inflight_batches: settings.uplink.inflight_batches,
            ack_timeout: rpc.ack_timeout,
            socket: settings.socket.clone(),
            downlink_hold_max: settings.downlink.hold_max,
            downlink_hold_for: settings.downlink.hold_max_age,
            drain_timeout: DRAIN_TIMEOUT,
            statistics: settings.statistics.clone(),
        };
        let shard = ShardSettings {
            nr_shards,
            max_connections: settings.socket.max_connections.div_ceil(nr_shards).max(1),
            idle_timeout: settings.socket.idle_timeout,
            downlink_suffix: settings.downlink.suffix,
            script_limits: crate::convert::ScriptLimits {
                call_timeout: settings.script.timeout,
                memory_limit_bytes: settings.script.memory_limit_bytes,
                ..crate::convert::ScriptLimits::default()
            },
            ring_depth: settings.shards.ring_depth as usize,
            read_bytes: READ_BYTES,
            // Half the linger: records wait in the shard for at most that, then the uplink
            // core's linger (counted from the read) covers the rest.
            outbox_delay: settings.uplink.batch_linger / 2,
            outbox_flush_records: settings
                .uplink
                .batch_max_records
                .clamp(1, OUTBOX_FLUSH_RECORDS_MAX),
        };
        ServerOptions {
            uplink,
            shard,
            shard_cores,
            uplink_core,
            shard_channel_records: settings.uplink.shard_channel_records,
            downlink_inbox: settings.downlink.inbox_capacity,
            metrics_listen: settings.metrics_listen,
        }
    }
}

/// The uplink core's default core: the first core no shard is pinned to; unpinned on a
/// single-core machine or when the shards are pinned to every core.
fn default_uplink_core(cores: usize, shard_cores: &[usize]) -> Option<usize> {
    if cores < 2 {
        return None;
    }
    (0..cores).find(|core| !shard_cores.contains(core))
}

/// How long shutdown waits for in-flight batches to be acknowledged.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes asked of the kernel per device socket read: large enough for a burst of small frames
/// from a batching device, small enough to keep one read's records a modest channel message.
pub const READ_BYTES: usize = 16 * 1024;

/// The spool's options from the validated settings.
fn spool_options(
    settings: &crate::config::local::SpoolSettings,
) -> crate::uplink::spool::SpoolOptions {
    use crate::config::local::SpoolFullPolicy;
    use crate::uplink::spool::{FullPolicy, SpoolOptions};
    SpoolOptions {
        max_bytes: settings.max_bytes,
        fsync: settings.fsync,
        full_policy: match settings.full_policy {
            SpoolFullPolicy::Backpressure => FullPolicy::Backpressure,
            SpoolFullPolicy::DropOldest => FullPolicy::DropOldest,
        },
        // Several segments per spool, so acknowledged ones are deleted while newer ones fill.
        segment_bytes: (settings.max_bytes / 8)
            .clamp(4096, crate::uplink::spool::DEFAULT_SEGMENT_BYTES),
        ..SpoolOptions::new(&settings.dir)
    }
}

#[cfg(test)]
mod tests {
    use super::default_uplink_core;

    #[test]
    fn uplink_core_defaults_to_a_core_without_a_shard() {
        assert_eq!(default_uplink_core(4, &[0, 1, 2]), Some(3));
        assert_eq!(default_uplink_core(4, &[2, 3]), Some(0));
        assert_eq!(default_uplink_core(2, &[0]), Some(1));
        assert_eq!(default_uplink_core(2, &[0, 1]), None);
        assert_eq!(default_uplink_core(1, &[]), None);
    }
}
