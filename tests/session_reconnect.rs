//! A stale reconnect request is dropped, not stored: two back-to-back
//! `SessionHandle::reconnect` calls restart the live stream once. (A stored `Notify` permit
//! from the second call used to end the next stream attempt at once — a second "restarting
//! the stream" with no stream the owner had asked about.) Own test binary: it installs the
//! process-wide log capture.

mod spool_e2e_support;

use std::time::Duration;

use spool_e2e_support::LogCapture;
use tcp_integration::edge_sim::{EXAMPLE_TEXT_JSON, EdgeSim, IntegrationDefinition};
use tcp_integration::uplink::session::{self, SessionConfig, SessionEvent};

/// Guard against a hung test; never a performance bound.
const HANG_GUARD: Duration = Duration::from_secs(20);
const RESTART_LINE: &str = "restarting the stream at the owner's request";

async fn next_event(rx: &mut tokio::sync::mpsc::Receiver<SessionEvent>) -> SessionEvent {
    tokio::time::timeout(HANG_GUARD, rx.recv())
        .await
        .expect("event before the hang guard")
        .expect("session alive")
}

#[tokio::test]
async fn a_second_reconnect_request_without_a_live_stream_is_ignored() {
    let log = LogCapture::install();
    let def = IntegrationDefinition::from_json_str(EXAMPLE_TEXT_JSON).unwrap();
    let sim = EdgeSim::start(def.clone(), "127.0.0.1:0".parse().unwrap(), None, None)
        .await
        .unwrap();
    let mut cfg = SessionConfig::new(
        format!("http://{}", sim.grpc_addr()),
        def.routing_key.clone(),
        def.secret.clone(),
    );
    cfg.reconnect_base = Duration::from_millis(20);
    cfg.reconnect_max = Duration::from_millis(100);
    let (handle, mut rx) = session::spawn(cfg);
    assert!(matches!(
        next_event(&mut rx).await,
        SessionEvent::Connected(_)
    ));

    handle.reconnect();
    handle.reconnect();
    assert!(matches!(
        next_event(&mut rx).await,
        SessionEvent::Connected(_)
    ));
    assert_eq!(log.lines_with(RESTART_LINE).len(), 1, "{}", log.text());

    // The restarted stream is the live one and can be restarted in turn.
    handle.reconnect();
    assert!(matches!(
        next_event(&mut rx).await,
        SessionEvent::Connected(_)
    ));
    assert_eq!(log.lines_with(RESTART_LINE).len(), 2, "{}", log.text());
    handle.shutdown();
    sim.shutdown().await;
}
