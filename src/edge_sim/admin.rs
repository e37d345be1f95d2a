//! edge-sim's HTTP admin API (axum): inject downlinks and definition updates, read what the
//! emulator received. Routes:
//!
//! | route | does |
//! |---|---|
//! | `POST /downlink` | [`DownlinkRequest`] → `DownlinkMsg` to the live session (200, or 503 without one) |
//! | `GET /devices`, `GET /assets` | latest values per entity |
//! | `GET /devices/{name}/telemetry`, `…/attributes` | latest typed values of one device |
//! | `GET /uplinks?after=SEQ&limit=N` | records with `seq > SEQ` (record-file format, JSON array) |
//! | `GET /statistics?after=SEQ` | integration statistics with `seq > SEQ` (JSON array) |
//! | `PUT /integration` | replace the definition, push Integration/ConverterUpdateMsg |
//! | `PUT /reject`, `GET /reject`, `DELETE /reject` | set, read, clear the [`RejectRule`] |
//! | `GET /health` | liveness plus session and record counts |

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::definition::{IntegrationDefinition, device_id, random_uuid_text};
use super::record::EntityKind;
use super::reject::RejectRule;
use super::service::{EdgeSimError, Shared, now_ms};
use crate::proto::integration::DeviceDownlinkDataProto;
use crate::proto::msgqueue::{TbMsgMetaDataProto, TbMsgProto};

/// Rule-engine message type used when a downlink request names none.
pub const DEFAULT_DOWNLINK_MSG_TYPE: &str = "ATTRIBUTES_UPDATED";

/// The body of `POST /downlink`: the rule-engine message a ThingsBoard "integration downlink"
/// node would forward.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DownlinkRequest {
    pub device_name: String,
    /// Defaults to the type the device was created with, else `default`.
    #[serde(default)]
    pub device_type: Option<String>,
    /// Defaults to [`DEFAULT_DOWNLINK_MSG_TYPE`].
    #[serde(default)]
    pub msg_type: Option<String>,
    /// An object/array is sent as its JSON text, a string as that string; absent = `{}`.
    #[serde(default)]
    pub data: Option<Value>,
    /// Values that are not strings are sent as their JSON text.
    #[serde(default)]
    pub metadata: BTreeMap<String, Value>,
}

impl DownlinkRequest {
    /// The `DeviceDownlinkDataProto` ThingsBoard would send for this message.
    pub fn to_proto(&self, known_device_type: Option<&str>) -> DeviceDownlinkDataProto {
        let data = match &self.data {
            None | Some(Value::Null) => "{}".to_owned(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
        };
        let metadata = self
            .metadata
            .iter()
            .map(|(k, v)| {
                let text = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), text)
            })
            .collect();
        let (id_msb, id_lsb) = device_id(&self.device_name);
        let device_type = self
            .device_type
            .clone()
            .or_else(|| known_device_type.map(str::to_owned))
            .unwrap_or_else(|| "default".to_owned());
        #[allow(deprecated)]
        DeviceDownlinkDataProto {
            device_name: self.device_name.clone(),
            device_type,
            tb_msg: Vec::new(),
            tb_msg_proto: Some(TbMsgProto {
                id: random_uuid_text(),
                r#type: self
                    .msg_type
                    .clone()
                    .unwrap_or_else(|| DEFAULT_DOWNLINK_MSG_TYPE.to_owned()),
                entity_type: "DEVICE".to_owned(),
                entity_id_msb: id_msb,
                entity_id_lsb: id_lsb,
                meta_data: Some(TbMsgMetaDataProto { data: metadata }),
                // Ordinal of TbMsgDataType::JSON.
                data_type: 0,
                data,
                ts: now_ms(),
                ..Default::default()
            }),
        }
    }
}

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/downlink", post(post_downlink))
        .route("/devices", get(get_devices))
        .route("/assets", get(get_assets))
        .route("/devices/{name}/telemetry", get(get_device_telemetry))
        .route("/devices/{name}/attributes", get(get_device_attributes))
        .route("/uplinks", get(get_uplinks))
        .route("/statistics", get(get_statistics))
        .route("/integration", put(put_integration))
        .route(
            "/reject",
            put(put_reject).get(get_reject).delete(delete_reject),
        )
        .route("/health", get(get_health))
        .with_state(shared)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": message.into()}))).into_response()
}

pub(crate) fn post_downlink_request(
    shared: &Shared,
    req: &DownlinkRequest,
) -> Result<DeviceDownlinkDataProto, EdgeSimError> {
    let known_type = shared
        .lock()
        .entities
        .get(&(EntityKind::Device, req.device_name.clone()))
        .map(|e| e.entity_type.clone());
    let proto = req.to_proto(known_type.as_deref());
    shared.send_downlink(proto.clone())?;
    Ok(proto)
}

async fn post_downlink(
    State(shared): State<Arc<Shared>>,
    Json(req): Json<DownlinkRequest>,
) -> Response {
    match post_downlink_request(&shared, &req) {
        Ok(proto) => {
            let id = proto.tb_msg_proto.map(|m| m.id).unwrap_or_default();
            Json(json!({"sent": true, "id": id})).into_response()
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

fn entities_json(shared: &Shared, kind: EntityKind) -> Value {
    let state = shared.lock();
    let map = state
        .entities
        .iter()
        .filter(|((k, _), _)| *k == kind)
        .map(|((_, name), e)| (name.clone(), e.to_json()))
        .collect();
    Value::Object(map)
}

async fn get_devices(State(shared): State<Arc<Shared>>) -> Json<Value> {
    Json(entities_json(&shared, EntityKind::Device))
}

async fn get_assets(State(shared): State<Arc<Shared>>) -> Json<Value> {
    Json(entities_json(&shared, EntityKind::Asset))
}

async fn get_device_telemetry(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
) -> Response {
    let state = shared.lock();
    match state.entities.get(&(EntityKind::Device, name.clone())) {
        Some(e) => Json(e.telemetry_json()).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no device named {name:?}")),
    }
}

async fn get_device_attributes(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
) -> Response {
    let state = shared.lock();
    match state.entities.get(&(EntityKind::Device, name.clone())) {
        Some(e) => Json(e.attributes_json()).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no device named {name:?}")),
    }
}

#[derive(Debug, Deserialize)]
struct UplinksQuery {
    #[serde(default)]
    after: u64,
    limit: Option<usize>,
}

async fn get_uplinks(State(shared): State<Arc<Shared>>, Query(q): Query<UplinksQuery>) -> Response {
    let state = shared.lock();
    // seq N lives at index N-1, so records after `after` start at index `after`.
    let start = usize::try_from(q.after)
        .unwrap_or(usize::MAX)
        .min(state.records.len());
    let end = q.limit.map_or(state.records.len(), |l| {
        start.saturating_add(l).min(state.records.len())
    });
    Json(&state.records[start..end]).into_response()
}

#[derive(Debug, Deserialize)]
struct StatisticsQuery {
    #[serde(default)]
    after: u64,
}

async fn get_statistics(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<StatisticsQuery>,
) -> Response {
    let state = shared.lock();
    // seq N lives at index N-1.
    let start = usize::try_from(q.after)
        .unwrap_or(usize::MAX)
        .min(state.statistics.len());
    Json(&state.statistics[start..]).into_response()
}

async fn put_integration(
    State(shared): State<Arc<Shared>>,
    Json(def): Json<IntegrationDefinition>,
) -> Response {
    match shared.replace_definition(def) {
        Ok((changes, delivered)) => Json(json!({
            "integrationUpdate": changes.integration_update.is_some(),
            "converterUpdates": changes.converter_updates.iter().map(|c| c.name.clone()).collect::<Vec<_>>(),
            "delivered": delivered,
        }))
        .into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

fn reject_json(shared: &Shared) -> Value {
    let state = shared.lock();
    json!({"rule": state.reject, "rejectedUplinks": state.nr_rejected_uplinks})
}

async fn put_reject(
    State(shared): State<Arc<Shared>>,
    Json(rule): Json<RejectRule>,
) -> Json<Value> {
    shared.lock().reject = Some(rule);
    Json(reject_json(&shared))
}

async fn get_reject(State(shared): State<Arc<Shared>>) -> Json<Value> {
    Json(reject_json(&shared))
}

async fn delete_reject(State(shared): State<Arc<Shared>>) -> Json<Value> {
    shared.lock().reject = None;
    Json(reject_json(&shared))
}

async fn get_health(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let connected = shared.is_connected();
    let records = shared.lock().records.len();
    Json(json!({"status": "ok", "connected": connected, "records": records}))
}
