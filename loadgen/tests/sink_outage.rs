//! The sink's outage on its own, with a hand-driven integration client: the open stream is cut
//! with an error (not a clean end of stream), the port refuses connections while the sink is
//! down, and afterwards the same address accepts a new CONNECT with the configuration; the
//! outage figures say so.

use std::time::Duration;

use tcp_integration::proto::integration::{
    ConnectRequestMsg, ConnectResponseCode, MessageType, RequestMsg, ResponseMsg,
    integration_transport_client::IntegrationTransportClient,
};
use tcp_loadgen::clock::now_us;
use tcp_loadgen::edge_config::IntegrationSettings;
use tcp_loadgen::frames::Format;
use tcp_loadgen::sink::{OutagePlan, Sink, SinkConfig};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const ROUTING_KEY: &str = "rk-outage";
const SECRET: &str = "secret-outage";

/// Opens a stream, sends CONNECT, returns the first reply and the rest of the stream (the
/// request sender is returned too: dropping it would end the stream from our side).
async fn connect(
    addr: std::net::SocketAddr,
) -> (
    ResponseMsg,
    tonic::Streaming<ResponseMsg>,
    mpsc::Sender<RequestMsg>,
) {
    let mut client = IntegrationTransportClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(16);
    tx.send(RequestMsg {
        message_type: MessageType::ConnectRpcMessage as i32,
        connect_request_msg: Some(ConnectRequestMsg {
            integration_routing_key: ROUTING_KEY.into(),
            integration_secret: SECRET.into(),
            service_id: "[test:0]".into(),
        }),
        uplink_msg: None,
    })
    .await
    .unwrap();
    let mut responses = client
        .handle_msgs(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let first = responses.message().await.unwrap().unwrap();
    (first, responses, tx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_cuts_streams_refuses_connections_and_comes_back() {
    let sink = Sink::start(
        "127.0.0.1:0".parse().unwrap(),
        SinkConfig {
            routing_key: ROUTING_KEY.into(),
            secret: SECRET.into(),
            integration: IntegrationSettings {
                format: Format::Text,
                device_port: 10560,
                so_backlog: 128,
                routing_key: ROUTING_KEY.into(),
            },
        },
    )
    .await
    .unwrap();
    let addr = sink.local_addr();
    let (first, mut responses, _keep) = connect(addr).await;
    assert_eq!(
        first.connect_response_msg.unwrap().response_code,
        ConnectResponseCode::Accepted as i32
    );

    let outage = tokio::spawn(sink.outage(
        OutagePlan {
            at: Duration::from_millis(100),
            lasts: Duration::from_secs(2),
            unacked: Duration::ZERO,
        },
        now_us(),
    ));
    // The open stream ends with an error: the connection was reset, no gRPC status came.
    let cut = tokio::time::timeout(Duration::from_secs(10), responses.message())
        .await
        .expect("the stream was never cut");
    assert!(cut.is_err(), "expected a cut stream, got {cut:?}");
    // While the sink is down its port refuses connections.
    let refused = tokio::net::TcpStream::connect(addr).await;
    assert_eq!(
        refused.err().map(|e| e.kind()),
        Some(std::io::ErrorKind::ConnectionRefused)
    );
    let report = sink.outage_report().unwrap();
    assert!(
        report.started_s.is_some() && report.ended_s.is_none(),
        "{report:?}"
    );
    assert_eq!(report.connections_cut, 1);

    outage.await.unwrap();
    let (first, _responses, _keep) = connect(addr).await;
    let accepted = first.connect_response_msg.unwrap();
    assert_eq!(accepted.response_code, ConnectResponseCode::Accepted as i32);
    assert_eq!(
        accepted.configuration.as_ref(),
        Some(sink.configuration()),
        "the same configuration after the outage"
    );
    assert_eq!(sink.sessions_accepted(), 2);
    let report = sink.outage_report().unwrap();
    assert_eq!(report.sessions_accepted, 2);
    assert_eq!(report.at_s, 0.1);
    assert_eq!(report.for_s, 2.0);
    let (started, ended) = (report.started_s.unwrap(), report.ended_s.unwrap());
    assert!(ended > started, "{report:?}");
    assert!(report.reconnect_s.is_some(), "{report:?}");
    assert_eq!(report.records_before + report.records_after, 0);
    sink.shutdown().await;
}
