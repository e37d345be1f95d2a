//! edge-sim's server rules seen through a raw generated client (no session logic in between):
//! uplinks before CONNECT and a second CONNECT get no reply, a refused CONNECT is followed by
//! the stream ending with status UNKNOWN.

use std::time::Duration;

use tcp_integration::edge_sim::{EXAMPLE_JSON_JSON, EdgeSim, IntegrationDefinition};
use tcp_integration::proto::integration::integration_transport_client::IntegrationTransportClient;
use tcp_integration::proto::integration::{
    ConnectRequestMsg, ConnectResponseCode, DeviceUplinkDataProto, MessageType, RequestMsg,
    ResponseMsg, UplinkMsg,
};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

/// Guard against a hung test; never a performance bound.
const HANG_GUARD: Duration = Duration::from_secs(20);

fn connect_req(def: &IntegrationDefinition, secret: &str) -> RequestMsg {
    RequestMsg {
        message_type: MessageType::ConnectRpcMessage as i32,
        connect_request_msg: Some(ConnectRequestMsg {
            integration_routing_key: def.routing_key.clone(),
            integration_secret: secret.to_owned(),
            service_id: "[test:1]".into(),
        }),
        uplink_msg: None,
    }
}

fn uplink_req(name: &str) -> RequestMsg {
    RequestMsg {
        message_type: MessageType::UplinkRpcMessage as i32,
        connect_request_msg: None,
        uplink_msg: Some(UplinkMsg {
            device_data: vec![DeviceUplinkDataProto {
                device_name: name.into(),
                device_type: "default".into(),
                ..Default::default()
            }],
            ..Default::default()
        }),
    }
}

async fn next(
    inbound: &mut tonic::Streaming<ResponseMsg>,
) -> Option<Result<ResponseMsg, tonic::Status>> {
    tokio::time::timeout(HANG_GUARD, inbound.next())
        .await
        .expect("response before the hang guard")
}

#[tokio::test]
async fn early_uplink_and_second_connect_get_no_reply() {
    let def = IntegrationDefinition::from_json_str(EXAMPLE_JSON_JSON).expect("example");
    let sim = EdgeSim::start(
        def.clone(),
        "127.0.0.1:0".parse().expect("addr"),
        None,
        None,
    )
    .await
    .expect("starts");
    let mut client = IntegrationTransportClient::connect(format!("http://{}", sim.grpc_addr()))
        .await
        .expect("connects");
    let (tx, rx) = mpsc::channel(8);
    tx.send(uplink_req("before-connect")).await.expect("queued");
    tx.send(connect_req(&def, &def.secret))
        .await
        .expect("queued");
    tx.send(connect_req(&def, "second connect is ignored even if wrong"))
        .await
        .expect("queued");
    tx.send(uplink_req("after-connect")).await.expect("queued");
    let mut inbound = client
        .handle_msgs(ReceiverStream::new(rx))
        .await
        .expect("stream opens")
        .into_inner();

    let first = next(&mut inbound).await.expect("message").expect("ok");
    let connect = first.connect_response_msg.expect("connect response first");
    assert_eq!(connect.response_code, ConnectResponseCode::Accepted as i32);
    let cfg = connect.configuration.expect("configuration");
    assert_eq!(cfg.name, "TCP integration (JSON)");
    let second = next(&mut inbound).await.expect("message").expect("ok");
    assert_eq!(
        second,
        ResponseMsg {
            uplink_response_msg: Some(tcp_integration::proto::integration::UplinkResponseMsg {
                success: true,
                error_msg: String::new()
            }),
            ..Default::default()
        }
    );
    let names: Vec<String> = sim.records().into_iter().map(|r| r.name).collect();
    assert_eq!(names, vec!["after-connect".to_owned()]);

    // Closing our side ends the session; the server ends its side too.
    drop(tx);
    assert!(next(&mut inbound).await.is_none());
    sim.shutdown().await;
}

#[tokio::test]
async fn refused_connect_ends_the_stream_with_unknown() {
    let def = IntegrationDefinition::from_json_str(EXAMPLE_JSON_JSON).expect("example");
    let sim = EdgeSim::start(
        def.clone(),
        "127.0.0.1:0".parse().expect("addr"),
        None,
        None,
    )
    .await
    .expect("starts");
    let mut client = IntegrationTransportClient::connect(format!("http://{}", sim.grpc_addr()))
        .await
        .expect("connects");
    let (tx, rx) = mpsc::channel(8);
    tx.send(connect_req(&def, "wrong")).await.expect("queued");
    let mut inbound = client
        .handle_msgs(ReceiverStream::new(rx))
        .await
        .expect("stream opens")
        .into_inner();
    let first = next(&mut inbound).await.expect("message").expect("ok");
    let connect = first.connect_response_msg.expect("connect response");
    assert_eq!(
        connect.response_code,
        ConnectResponseCode::BadCredentials as i32
    );
    assert_eq!(connect.error_msg, "Failed to validate the integration!");
    assert_eq!(connect.configuration, Some(Default::default()));
    let status = next(&mut inbound)
        .await
        .expect("an error ends the stream")
        .expect_err("status, not a message");
    assert_eq!(status.code(), tonic::Code::Unknown);
    assert_eq!(status.message(), "Failed to validate the integration!");
    sim.shutdown().await;
}
