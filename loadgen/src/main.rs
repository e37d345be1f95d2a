//! `tcp-loadgen`: simulated devices and an embedded Edge sink for measuring tcp-integration.
//!
//! Parses the command line, builds the tokio runtime (`--threads` workers) and calls into the
//! library: the default mode runs the sink and the devices in this process; `--sink-only`,
//! `--no-sink`, `--noop-server` and the hidden `--worker` role run one side only.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use tcp_loadgen::devices::{FleetConfig, Schedule};
use tcp_loadgen::edge_config::IntegrationSettings;
use tcp_loadgen::frames::{Format, check_name_fits, device_name};
use tcp_loadgen::report::Report;
use tcp_loadgen::run::{RunOptions, run};
use tcp_loadgen::sink::{OutagePlan, Sink, SinkConfig};
use tcp_loadgen::{accounting::LatencySummary, noop, plot, procs};

/// Load generator for tcp-integration: simulated devices + an embedded ThingsBoard Edge sink.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Number of simulated devices (one TCP connection each).
    #[arg(long, default_value_t = 100)]
    connections: u64,
    /// Device name prefix; names are prefix + 6-digit number (SN-000001, …).
    #[arg(long, default_value = "SN-")]
    name_prefix: String,
    /// Frame format (= the integration's handler type).
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Frames per second per connection (open loop).
    #[arg(long, conflicts_with_all = ["total_rate", "max", "idle"])]
    rate: Option<f64>,
    /// Frames per second over all connections (open loop).
    #[arg(long, conflicts_with_all = ["max", "idle"])]
    total_rate: Option<f64>,
    /// Send as fast as possible (closed loop on the socket).
    #[arg(long, conflicts_with = "idle")]
    max: bool,
    /// Frames per write in --max mode.
    #[arg(long, default_value_t = 1)]
    frames_per_write: u32,
    /// Open and hold the connections without sending; reports server memory per connection.
    #[arg(long)]
    idle: bool,
    /// Measured window, seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Sending before the measured window, seconds.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Longest wait for late records after the devices stopped, seconds.
    #[arg(long, default_value_t = 3.0)]
    drain: f64,
    /// Connects per second (0 = as fast as possible).
    #[arg(long, default_value_t = 2000.0)]
    connect_rate: f64,
    /// Source addresses for device connections: `127.0.0.2-127.0.0.9` or a comma list.
    #[arg(long)]
    source_ips: Option<String>,
    /// Where devices connect (the integration's device port; also `clientConfiguration.port`).
    #[arg(long, default_value = "127.0.0.1:10560")]
    target: SocketAddr,
    /// Device worker processes (each holds at most ~19,970 sockets here).
    #[arg(long, default_value_t = 1)]
    procs: u32,
    /// Tokio worker threads per process.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Where the sink serves IntegrationTransport.
    #[arg(long, default_value = "127.0.0.1:9090")]
    sink_listen: SocketAddr,
    #[arg(long, default_value = "loadgen-routing-key")]
    routing_key: String,
    #[arg(long, default_value = "loadgen-secret")]
    secret: String,
    /// `clientConfiguration.soBacklogOption` handed to the integration.
    #[arg(long, default_value_t = 4096)]
    so_backlog: u32,
    /// Downlinks per second over all devices (round trip measured at the devices).
    #[arg(long, default_value_t = 0.0)]
    downlink_rate: f64,
    /// Server process to account CPU and memory of.
    #[arg(long)]
    server_pid: Option<u32>,
    /// How long to wait for the integration to connect and open its port, seconds.
    #[arg(long, default_value_t = 60.0)]
    integration_wait: f64,
    /// Run only the sink (for a server started by hand) until Ctrl-C / SIGTERM.
    #[arg(long, conflicts_with_all = ["no_sink", "noop_server"])]
    sink_only: bool,
    /// Run only the devices against --target (no sink; no delivery figures).
    #[arg(long, conflicts_with = "noop_server")]
    no_sink: bool,
    /// Run a TCP server on --target that accepts and discards bytes (generator baseline).
    #[arg(long)]
    noop_server: bool,
    /// Write every figure as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Write the latency percentile curve as SVG to this file.
    #[arg(long)]
    plot: Option<std::path::PathBuf>,
    /// Kill the embedded sink like a crashed Edge at AT seconds after the devices start
    /// sending and bring it back FOR seconds later on the same address (`AT:FOR`, e.g. `5:10`).
    #[arg(long, value_name = "AT:FOR", value_parser = parse_outage, conflicts_with_all = ["sink_only", "no_sink", "noop_server"])]
    sink_outage: Option<(f64, f64)>,
    /// With --sink-outage: stop acknowledging this many ms before the cut while still counting
    /// (UplinkMsgs processed but never confirmed; the integration must resend them).
    #[arg(long, default_value_t = 0.0, requires = "sink_outage")]
    sink_outage_unacked_ms: f64,
    /// No per-second progress line.
    #[arg(long)]
    quiet: bool,
    /// Internal: run one device fleet described by this JSON, controlled over stdin/stdout.
    #[arg(long, hide = true)]
    worker: Option<String>,
}

/// Parses `a.b.c.d-a.b.c.e` or `a,b,c`.
fn parse_source_ips(text: &str) -> anyhow::Result<Vec<Ipv4Addr>> {
    let mut ips = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((from, to)) = part.split_once('-') {
            let from: Ipv4Addr = from
                .trim()
                .parse()
                .with_context(|| format!("bad address {from:?}"))?;
            let to: Ipv4Addr = to
                .trim()
                .parse()
                .with_context(|| format!("bad address {to:?}"))?;
            let (a, b) = (u32::from(from), u32::from(to));
            if b < a {
                bail!("--source-ips range {part:?} runs backwards");
            }
            ips.extend((a..=b).map(Ipv4Addr::from));
        } else {
            ips.push(
                part.parse()
                    .with_context(|| format!("bad address {part:?}"))?,
            );
        }
    }
    Ok(ips)
}

/// Parses `AT:FOR` (seconds, non-negative, FOR > 0).
fn parse_outage(text: &str) -> Result<(f64, f64), String> {
    let (at, lasts) = text
        .split_once(':')
        .ok_or_else(|| format!("expected AT:FOR in seconds, got {text:?}"))?;
    let number = |part: &str| -> Result<f64, String> {
        part.trim()
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v >= 0.0)
            .ok_or_else(|| format!("bad number of seconds {part:?} in {text:?}"))
    };
    let (at, lasts) = (number(at)?, number(lasts)?);
    if lasts <= 0.0 {
        return Err(format!("the outage must last more than 0 s: {text:?}"));
    }
    Ok((at, lasts))
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

impl Args {
    fn schedule(&self) -> anyhow::Result<Schedule> {
        Ok(if self.idle {
            Schedule::Idle
        } else if self.max {
            Schedule::Max {
                frames_per_write: self.frames_per_write.max(1),
            }
        } else if let Some(total) = self.total_rate {
            if self.connections == 0 {
                bail!("--total-rate needs --connections > 0");
            }
            Schedule::Rate {
                per_connection_fps: total / self.connections as f64,
            }
        } else {
            Schedule::Rate {
                per_connection_fps: self.rate.unwrap_or(1.0),
            }
        })
    }

    fn fleet(&self) -> anyhow::Result<FleetConfig> {
        let schedule = self.schedule()?;
        if let Schedule::Rate { per_connection_fps } = schedule
            && !(per_connection_fps > 0.0 && per_connection_fps.is_finite())
        {
            bail!("the frame rate must be positive");
        }
        let last_name = device_name(&self.name_prefix, self.connections.saturating_sub(1));
        check_name_fits(self.format, &last_name)?;
        Ok(FleetConfig {
            first_index: 0,
            connections: self.connections,
            name_prefix: self.name_prefix.clone(),
            format: self.format,
            target: self.target,
            source_ips: match &self.source_ips {
                Some(text) => parse_source_ips(text)?,
                None => Vec::new(),
            },
            schedule,
            connect_rate: self.connect_rate,
            read_downlinks: self.downlink_rate > 0.0,
        })
    }

    fn outage_plan(&self) -> anyhow::Result<Option<OutagePlan>> {
        let Some((at_s, for_s)) = self.sink_outage else {
            return Ok(None);
        };
        // The sink must be back while the devices still send, or the after-figures mean nothing.
        if at_s + for_s >= self.warmup + self.duration {
            bail!(
                "--sink-outage {at_s}:{for_s} ends at {} s, not before sending stops at \
                 --warmup + --duration = {} s",
                at_s + for_s,
                self.warmup + self.duration
            );
        }
        let unacked_ms = self.sink_outage_unacked_ms.max(0.0);
        if unacked_ms / 1e3 > at_s {
            bail!("--sink-outage-unacked-ms {unacked_ms} starts before sending does");
        }
        Ok(Some(OutagePlan {
            at: secs(at_s),
            lasts: secs(for_s),
            unacked: secs(unacked_ms / 1e3),
        }))
    }

    fn sink_config(&self) -> SinkConfig {
        SinkConfig {
            routing_key: self.routing_key.clone(),
            secret: self.secret.clone(),
            integration: IntegrationSettings {
                format: self.format,
                device_port: self.target.port(),
                so_backlog: self.so_backlog,
                routing_key: self.routing_key.clone(),
            },
        }
    }
}

fn write_outputs(args: &Args, report: &Report) -> anyhow::Result<()> {
    print!("{}", report.table());
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(report)?;
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &args.plot {
        let mut series: Vec<(&str, &[tcp_loadgen::accounting::CurvePoint])> =
            vec![("uplink latency", &report.latency.curve)];
        if let Some(dl) = &report.downlink {
            series.push(("downlink RTT", &dl.rtt.curve));
        }
        let title = format!(
            "tcp-loadgen: {} {} {} connections",
            report.format, report.schedule, report.connections_established
        );
        std::fs::write(path, plot::percentile_chart(&title, &series))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

async fn run_noop(args: &Args) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.target)
        .await
        .with_context(|| format!("cannot listen on {}", args.target))?;
    let stats = Arc::new(noop::NoopStats::default());
    let server = tokio::spawn(noop::serve(listener, stats.clone()));
    eprintln!("noop server on {}: accepting and discarding", args.target);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut last = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown_signal() => break,
        }
        let lines = stats.lines.load(Ordering::Relaxed);
        if !args.quiet {
            eprintln!(
                "noop: {:>9} lines/s  conns {:>6}  bytes {}",
                lines - last,
                stats.connections.load(Ordering::Relaxed),
                stats.bytes.load(Ordering::Relaxed)
            );
        }
        last = lines;
    }
    server.abort();
    println!(
        "noop server: {} bytes, {} lines",
        stats.bytes.load(Ordering::Relaxed),
        stats.lines.load(Ordering::Relaxed)
    );
    Ok(())
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn run_sink_only(args: &Args) -> anyhow::Result<()> {
    let sink = Sink::start(args.sink_listen, args.sink_config()).await?;
    eprintln!(
        "sink on {} (routing key {:?}); integration devices port {}",
        sink.local_addr(),
        args.routing_key,
        args.target.port()
    );
    let started_us = tcp_loadgen::clock::now_us();
    // Runs until Ctrl-C / SIGTERM; the measured window opens --warmup after the first session.
    let stop = shutdown_signal();
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut window_start_us: Option<u64> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut stop => break,
        }
        let now = tcp_loadgen::clock::now_us();
        if window_start_us.is_none()
            && sink.sessions_accepted() > 0
            && now - started_us >= secs(args.warmup).as_micros() as u64
        {
            sink.tally().start_window(now);
            window_start_us = Some(now);
        }
        let (records, latency) = sink.tally().take_interval();
        if !args.quiet {
            eprintln!(
                "sink: {records:>9} frames/s  p99 {:>7} µs  sessions {}",
                latency.p99_us,
                sink.sessions_accepted()
            );
        }
    }
    let end_us = tcp_loadgen::clock::now_us();
    let window_s = window_start_us.map_or(0.0, |start| (end_us - start) as f64 / 1e6);
    let tally = sink.tally();
    let report = Report {
        mode: "sink-only".into(),
        format: args.format.as_str().into(),
        records_received: tally.records,
        delivered_in_window: tally.delivered_in_window,
        uplink_msgs: tally.uplink_msgs,
        malformed_records: tally.malformed,
        window_s,
        delivered_fps: if window_s > 0.0 {
            tally.delivered_in_window as f64 / window_s
        } else {
            0.0
        },
        latency: LatencySummary::from_histogram(&tally.latency),
        ..Default::default()
    };
    drop(tally);
    write_outputs(args, &report)
}

async fn run_main(args: Args) -> anyhow::Result<()> {
    if let Some(spec) = &args.worker {
        let config: FleetConfig = serde_json::from_str(spec).context("bad --worker spec")?;
        return procs::worker_main(config).await;
    }
    if args.noop_server {
        return run_noop(&args).await;
    }
    if args.sink_only {
        return run_sink_only(&args).await;
    }
    let fleet = args.fleet()?;
    let opts = RunOptions {
        fleet,
        procs: args.procs,
        threads: args.threads,
        warmup: secs(args.warmup),
        duration: secs(args.duration),
        drain: secs(args.drain),
        downlink_rate: args.downlink_rate,
        server_pid: args.server_pid,
        integration_wait: secs(args.integration_wait),
        progress: !args.quiet,
        sink_outage: args.outage_plan()?,
    };
    let report = if args.no_sink {
        run(&opts, None).await?
    } else {
        let sink = Sink::start(args.sink_listen, args.sink_config()).await?;
        eprintln!(
            "sink on {}; waiting for the integration (routing key {:?}) …",
            sink.local_addr(),
            args.routing_key
        );
        let report = run(&opts, Some(&sink)).await;
        sink.shutdown().await;
        report?
    };
    write_outputs(&args, &report)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let nofile_limit = procs::raise_nofile_limit();
    if args.worker.is_none() && !args.noop_server && !args.sink_only {
        procs::check_capacity(args.connections, args.procs, nofile_limit)?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(run_main(args))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_ip_ranges_and_lists() {
        assert_eq!(
            parse_source_ips("127.0.0.2-127.0.0.4").unwrap(),
            vec![
                Ipv4Addr::new(127, 0, 0, 2),
                Ipv4Addr::new(127, 0, 0, 3),
                Ipv4Addr::new(127, 0, 0, 4)
            ]
        );
        assert_eq!(
            parse_source_ips("127.0.0.9, 127.0.0.2").unwrap(),
            vec![Ipv4Addr::new(127, 0, 0, 9), Ipv4Addr::new(127, 0, 0, 2)]
        );
        assert!(parse_source_ips("127.0.0.9-127.0.0.2").is_err());
        assert!(parse_source_ips("x").is_err());
    }

    #[test]
    fn sink_outage_parses_and_checks_the_run_length() {
        assert_eq!(parse_outage("5:10"), Ok((5.0, 10.0)));
        assert_eq!(parse_outage(" 0.5 : 2.25 "), Ok((0.5, 2.25)));
        assert!(parse_outage("5").is_err());
        assert!(parse_outage("5:0").is_err());
        assert!(parse_outage("-1:3").is_err());
        assert!(parse_outage("x:3").is_err());
        let args = Args::parse_from([
            "tcp-loadgen",
            "--sink-outage",
            "5:10",
            "--sink-outage-unacked-ms",
            "200",
            "--warmup",
            "2",
            "--duration",
            "20",
        ]);
        assert_eq!(
            args.outage_plan().unwrap(),
            Some(OutagePlan {
                at: Duration::from_secs(5),
                lasts: Duration::from_secs(10),
                unacked: Duration::from_millis(200),
            })
        );
        let short = Args::parse_from(["tcp-loadgen", "--sink-outage", "5:10", "--duration", "13"]);
        assert!(short.outage_plan().is_err());
        assert!(
            Args::try_parse_from(["tcp-loadgen", "--sink-outage", "1:2", "--no-sink"]).is_err()
        );
    }

    #[test]
    fn total_rate_splits_over_connections() {
        let args = Args::parse_from(["tcp-loadgen", "--connections", "4", "--total-rate", "100"]);
        assert_eq!(
            args.schedule().unwrap(),
            Schedule::Rate {
                per_connection_fps: 25.0
            }
        );
    }
}
