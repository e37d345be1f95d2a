//! `ServerOptions::from_settings` for the session: the secret never shows in `Debug` output of
//! the options that carry it, and `rpc.keep_alive_secs = 0` reaches the session as "no pings".

use std::time::Duration;

use tcp_integration::demo::settings_for;
use tcp_integration::edge_sim::{EXAMPLE_TEXT_JSON, IntegrationDefinition};
use tcp_integration::server::ServerOptions;

const SECRET: &str = "s3cr3t-never-printed";

fn options(extra: &[(&str, String)]) -> ServerOptions {
    let mut definition = IntegrationDefinition::from_json_str(EXAMPLE_TEXT_JSON).unwrap();
    definition.secret = SECRET.to_owned();
    let spool = std::env::temp_dir().join("tcpi-server-options-test");
    let mut env = vec![("TCPI_SPOOL_DIR", spool.display().to_string())];
    env.extend(extra.iter().cloned());
    let settings = settings_for("127.0.0.1:9090".parse().unwrap(), &definition, &env).unwrap();
    ServerOptions::from_settings(&settings)
}

#[test]
fn the_secret_is_not_in_the_debug_output_of_the_options() {
    let options = options(&[]);
    assert_eq!(options.uplink.session.secret.expose(), SECRET);
    for text in [
        format!("{options:?}"),
        format!("{:?}", options.uplink),
        format!("{:?}", options.uplink.session),
        format!("{options:#?}"),
    ] {
        assert!(!text.contains(SECRET), "{text}");
        assert!(text.contains("secret: ***"), "{text}");
    }
}

#[test]
fn keep_alive_zero_means_no_pings() {
    let options = options(&[("RPC_KEEP_ALIVE_TIME_SEC", "0".to_owned())]);
    assert_eq!(options.uplink.session.keepalive, None);
}

#[test]
fn keep_alive_defaults_to_300_seconds_and_is_never_below_it() {
    assert_eq!(
        options(&[]).uplink.session.keepalive,
        Some(Duration::from_secs(300))
    );
    let options = options(&[("RPC_KEEP_ALIVE_TIME_SEC", "10".to_owned())]);
    assert_eq!(
        options.uplink.session.keepalive,
        Some(Duration::from_secs(300))
    );
    let options = self::options(&[("RPC_KEEP_ALIVE_TIME_SEC", "900".to_owned())]);
    assert_eq!(
        options.uplink.session.keepalive,
        Some(Duration::from_secs(900))
    );
}
