//! The `tcp-integration run` command as a user meets it: the printed default configuration is
//! the built-in defaults, `--help` names every flag and environment variable, missing
//! credentials stop the process with what to set, and the secret never reaches the log.

use std::process::{Command, Output};

use tcp_integration::config::local::{DEFAULT_CONFIG_TOML, SettingsFile, keys};

/// The binary with every variable our settings read removed, so the host's environment cannot
/// leak into the test.
fn binary() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tcp-integration"));
    for key in keys::ALL {
        for var in key.env {
            cmd.env_remove(var);
        }
    }
    cmd.env_remove("RUST_BACKTRACE");
    cmd
}

/// Starts `run` (which serves until a signal), waits until its output contains `needle`, then
/// stops it with SIGTERM as an operator would; returns its exit status and output.
fn run_until_logged(cmd: &mut Command, needle: &str) -> (std::process::ExitStatus, String, String) {
    use std::io::Read;
    use std::sync::{Arc, Mutex};
    let spool = tempfile::tempdir().unwrap();
    let mut child = cmd
        .env("TCPI_SPOOL_DIR", spool.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let collect = |mut pipe: Box<dyn Read + Send>| {
        let text = Arc::new(Mutex::new(String::new()));
        let sink = text.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        (text, reader)
    };
    let (stdout, out_reader) = collect(Box::new(child.stdout.take().unwrap()));
    let (stderr, err_reader) = collect(Box::new(child.stderr.take().unwrap()));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !format!("{}{}", stdout.lock().unwrap(), stderr.lock().unwrap()).contains(needle) {
        assert!(
            std::time::Instant::now() < deadline,
            "never logged {needle:?}"
        );
        if let Some(status) = child.try_wait().unwrap() {
            panic!("run exited early with {status}: {}", stderr.lock().unwrap());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // SAFETY: sending SIGTERM to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    out_reader.join().unwrap();
    err_reader.join().unwrap();
    let out = stdout.lock().unwrap().clone();
    let err = stderr.lock().unwrap().clone();
    (status, out, err)
}

fn run(cmd: &mut Command) -> (Output, String, String) {
    let output = cmd.output().unwrap();
    let stdout = String::from_utf8(output.stdout.clone()).unwrap();
    let stderr = String::from_utf8(output.stderr.clone()).unwrap();
    (output, stdout, stderr)
}

#[test]
fn print_default_config_round_trips_to_the_builtin_defaults() {
    let (output, stdout, _) = run(binary().args(["run", "--print-default-config"]));
    assert!(output.status.success());
    assert_eq!(stdout, DEFAULT_CONFIG_TOML);
    assert_eq!(
        SettingsFile::from_toml(&stdout).unwrap(),
        SettingsFile::defaults()
    );
}

#[test]
fn printed_default_config_is_accepted_by_run_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tcpi.toml");
    let (_, printed, _) = run(binary().args(["run", "--print-default-config"]));
    std::fs::write(&path, printed).unwrap();
    let (status, stdout, stderr) = run_until_logged(
        binary()
            .args(["run", "--config", path.to_str().unwrap()])
            .env("INTEGRATION_ROUTING_KEY", "rk")
            .env("INTEGRATION_SECRET", "sec")
            .env("RPC_PORT", "1"),
        "started; waiting for the configuration",
    );
    assert!(status.success(), "{stderr}");
    assert!(stdout.contains("effective settings"), "{stdout}");
}

#[test]
fn run_without_credentials_says_what_to_set() {
    let (output, stdout, stderr) = run(binary().arg("run"));
    assert!(!output.status.success());
    assert_eq!(stdout, "");
    assert_eq!(
        stderr,
        "tcp-integration: cannot start: the integration key (routing key) is not set: set the \
         environment variable INTEGRATION_ROUTING_KEY or pass --routing-key (or \
         `integration.routing_key` in the --config file); the integration secret is not set: set \
         the environment variable INTEGRATION_SECRET or pass --secret (or `integration.secret` \
         in the --config file). Copy the values from the integration's page in ThingsBoard \
         (\"Integration key\" and \"Integration secret\").\n"
    );
}

#[test]
fn run_logs_effective_settings_with_the_secret_masked() {
    let (status, stdout, stderr) = run_until_logged(
        binary()
            .args(["run", "--routing-key", "rk-42", "--rpc-host", "edge.test"])
            .env("INTEGRATION_SECRET", "very-secret-value")
            .env("RPC_KEEP_ALIVE_TIME_SEC", "10"),
        "started; waiting for the configuration",
    );
    assert!(status.success(), "{stderr}");
    let log = format!("{stdout}{stderr}");
    assert!(!log.contains("very-secret-value"), "{log}");
    assert!(log.contains("secret: ***"), "{log}");
    assert!(log.contains("routing_key: \"rk-42\""), "{log}");
    assert!(log.contains("http://edge.test:9090"), "{log}");
    assert!(log.contains("[remote:8082]"), "{log}");
    assert!(log.contains("using 300 s"), "{log}");
}

#[test]
fn bad_flag_value_is_reported_without_backtrace() {
    let (output, _, stderr) = run(binary()
        .args([
            "run",
            "--routing-key",
            "rk",
            "--secret",
            "s",
            "--inflight-batches",
            "0",
        ])
        .env("RUST_BACKTRACE", "1"));
    assert!(!output.status.success());
    assert_eq!(
        stderr,
        "tcp-integration: invalid setting `uplink.inflight_batches` (flag --inflight-batches, \
         env TCPI_INFLIGHT_BATCHES): 0; allowed: 1..=1024\n"
    );
}

#[test]
fn help_names_every_flag_and_environment_variable() {
    let (output, stdout, _) = run(binary().args(["run", "--help"]));
    assert!(output.status.success());
    for key in keys::ALL {
        if let Some(flag) = key.flag {
            assert!(stdout.contains(flag), "{flag} missing from --help");
        }
        for var in key.env {
            assert!(stdout.contains(var), "{var} missing from --help");
        }
    }
    for flag in ["--config", "--print-default-config"] {
        assert!(stdout.contains(flag), "{flag}");
    }
}
