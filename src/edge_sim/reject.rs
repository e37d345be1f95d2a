//! edge-sim's reject mode: answer chosen uplinks with `UplinkResponseMsg{success=false,
//! errorMsg}`, the way ThingsBoard answers an uplink whose processing failed (contract §2.6), so
//! the integration's dead-letter handling can be exercised end to end.
//!
//! A [`RejectRule`] picks uplinks by content (any uplink, or those carrying a record of one
//! device/asset name) and optionally by count. Invariants: a rejected uplink is answered in its
//! place in the acknowledgement order and is **not** recorded (ThingsBoard did not process it);
//! a rule with a count is removed once that many uplinks were rejected.

use serde::{Deserialize, Serialize};

use crate::proto::integration::UplinkMsg;

/// Which uplinks to reject and with what error text (`PUT /reject` body).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RejectRule {
    /// Only uplinks carrying at least one record of this device or asset name (the whole
    /// uplink is rejected, as ThingsBoard fails the whole message); absent = every uplink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_name: Option<String>,
    /// How many matching uplinks to reject before the rule ends; absent = until cleared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// Sent as `UplinkResponseMsg.errorMsg`.
    #[serde(default)]
    pub error_msg: String,
}

impl RejectRule {
    /// Rejects every uplink until cleared.
    pub fn all(error_msg: impl Into<String>) -> Self {
        RejectRule {
            device_name: None,
            count: None,
            error_msg: error_msg.into(),
        }
    }

    /// Rejects every uplink carrying a record of `device_name` until cleared.
    pub fn device(device_name: impl Into<String>, error_msg: impl Into<String>) -> Self {
        RejectRule {
            device_name: Some(device_name.into()),
            count: None,
            error_msg: error_msg.into(),
        }
    }

    /// The same rule, ending after `count` rejected uplinks.
    pub fn times(mut self, count: u64) -> Self {
        self.count = Some(count);
        self
    }

    fn matches(&self, msg: &UplinkMsg) -> bool {
        match &self.device_name {
            None => true,
            Some(name) => {
                msg.device_data.iter().any(|d| &d.device_name == name)
                    || msg.asset_data.iter().any(|a| &a.asset_name == name)
            }
        }
    }
}

/// Applies the current rule to one uplink: `Some(error_msg)` when it is rejected. Consumes one
/// from the rule's count and clears the rule when the count is used up.
pub(crate) fn judge(rule: &mut Option<RejectRule>, msg: &UplinkMsg) -> Option<String> {
    let current = rule.as_mut()?;
    if current.count == Some(0) {
        *rule = None;
        return None;
    }
    if !current.matches(msg) {
        return None;
    }
    let error_msg = current.error_msg.clone();
    if let Some(count) = current.count.as_mut() {
        *count -= 1;
        if *count == 0 {
            *rule = None;
        }
    }
    Some(error_msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::integration::DeviceUplinkDataProto;

    fn uplink(devices: &[&str]) -> UplinkMsg {
        UplinkMsg {
            device_data: devices
                .iter()
                .map(|d| DeviceUplinkDataProto {
                    device_name: (*d).to_owned(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn counted_rule_rejects_that_many_then_ends() {
        let mut rule = Some(RejectRule::all("boom").times(2));
        assert_eq!(judge(&mut rule, &uplink(&["a"])), Some("boom".to_owned()));
        assert_eq!(rule.as_ref().and_then(|r| r.count), Some(1));
        assert_eq!(judge(&mut rule, &uplink(&["b"])), Some("boom".to_owned()));
        assert_eq!(rule, None);
        assert_eq!(judge(&mut rule, &uplink(&["c"])), None);
    }

    #[test]
    fn device_rule_rejects_only_uplinks_carrying_that_device() {
        let mut rule = Some(RejectRule::device("bad", "no such device"));
        assert_eq!(judge(&mut rule, &uplink(&["good"])), None);
        assert_eq!(
            judge(&mut rule, &uplink(&["good", "bad"])),
            Some("no such device".to_owned())
        );
        assert_eq!(judge(&mut rule, &uplink(&["good"])), None);
        assert!(rule.is_some(), "uncounted rules stay until cleared");
    }

    #[test]
    fn zero_count_rejects_nothing() {
        let mut rule = Some(RejectRule::all("x").times(0));
        assert_eq!(judge(&mut rule, &uplink(&["a"])), None);
        assert_eq!(rule, None);
    }

    #[test]
    fn json_body_uses_camel_case_and_optional_fields() {
        let rule: RejectRule =
            serde_json::from_str(r#"{"deviceName":"SN-1","count":3,"errorMsg":"Rate limit"}"#)
                .unwrap();
        assert_eq!(rule, RejectRule::device("SN-1", "Rate limit").times(3));
        let rule: RejectRule = serde_json::from_str(r#"{"errorMsg":"x"}"#).unwrap();
        assert_eq!(rule, RejectRule::all("x"));
    }
}
