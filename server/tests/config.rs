//! Config parsing: every error names its key; the command line overrides the file; the shipped example
//! config (systemd/server.toml) is valid.

use std::path::{Path, PathBuf};

use ccfd_server::config::{Cli, ConfigError, Settings};
use clap::Parser as _;

fn parse(text: &str) -> Result<Settings, ConfigError> {
    let file = Settings::parse_file(Path::new("test.toml"), text)?;
    Settings::merge(&Cli::default(), file)
}

fn error_text(text: &str) -> String {
    match parse(text) {
        Ok(settings) => panic!("accepted {text:?} as {settings:?}"),
        Err(error) => error.to_string(),
    }
}

#[test]
fn unknown_key_is_refused_and_named() {
    let message = error_text("root = \"/srv\"\nmax-rat = \"5mbit\"\n");
    assert!(message.contains("max-rat"), "{message}");
    let message = error_text("root = \"/srv\"\n[limits]\nmax-sesions = 3\n");
    assert!(message.contains("max-sesions"), "{message}");
}

#[test]
fn type_errors_name_the_key() {
    let message = error_text("root = \"/srv\"\n[limits]\nmax-sessions = \"many\"\n");
    assert!(message.contains("max-sessions"), "{message}");
    let message = error_text("root = \"/srv\"\nmax-rate = \"fast\"\n");
    assert!(message.contains("max-rate"), "{message}");
    let message = error_text("root = \"/srv\"\nlisten = \"nowhere\"\n");
    assert!(message.contains("listen"), "{message}");
    let message = error_text("root = \"/srv\"\n[limits]\nsession-idle-timeout = \"soon\"\n");
    assert!(message.contains("session-idle-timeout"), "{message}");
    let message = error_text("root = \"/srv\"\n[coding]\nsegment-size = \"3 parsecs\"\n");
    assert!(message.contains("segment-size"), "{message}");
}

#[test]
fn range_errors_name_the_key() {
    let cases = [
        ("shards = 0", "shards"),
        (
            "udp-base = 65000\n[limits]\nmax-sessions = 1000",
            "limits.max-sessions",
        ),
        ("[limits]\nmax-clients = 0", "limits.max-clients"),
        ("[coding]\nsymbol-size = 8", "coding.symbol-size"),
        (
            "[pacing]\nloss-backoff-threshold = 1.5",
            "pacing.loss-backoff-threshold",
        ),
    ];
    for (body, key) in cases {
        let text = format!("root = \"/srv\"\n{body}\n");
        match parse(&text) {
            Err(ConfigError::Invalid { key: got, .. }) => assert_eq!(got, key, "{body}"),
            other => panic!("{body}: expected Invalid {{ key: {key} }}, got {other:?}"),
        }
    }
}

#[test]
fn root_is_required() {
    assert!(matches!(
        parse("shards = 1\n"),
        Err(ConfigError::Missing { key: "root" })
    ));
}

#[test]
fn file_values_are_read_and_cli_overrides_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("server.toml");
    std::fs::write(
        &path,
        "root = \"/from/file\"\nlisten = \"127.0.0.1:9000\"\nudp-base = 20000\nshards = 3\n\
         max-rate = \"2gbit\"\n[limits]\nmax-sessions = 10\nclient-heartbeat-timeout = \"3s\"\n\
         [coding]\nsegment-size = \"4MiB\"\n",
    )
    .unwrap();
    let cli = Cli::try_parse_from([
        "ccfd-server",
        "--config",
        path.to_str().unwrap(),
        "--root",
        "/from/cli",
        "--max-rate",
        "500mbit",
    ])
    .unwrap();
    let settings = Settings::load(&cli).unwrap();
    assert_eq!(settings.root, PathBuf::from("/from/cli"));
    assert_eq!(settings.listen, "127.0.0.1:9000".parse().unwrap());
    assert_eq!(settings.udp_base, 20000);
    assert_eq!(settings.shards, 3);
    assert_eq!(settings.max_rate.unwrap().bits_per_sec(), 500_000_000);
    assert_eq!(settings.limits.max_sessions, 10);
    assert_eq!(settings.limits.client_heartbeat_timeout.as_secs(), 3);
    assert_eq!(settings.coding.segment_size, 4 << 20);
}

#[test]
fn cli_defaults() {
    let cli = Cli::try_parse_from(["ccfd-server", "--root", "/srv"]).unwrap();
    let settings = Settings::load(&cli).unwrap();
    assert_eq!(settings.listen, "0.0.0.0:7653".parse().unwrap());
    assert_eq!(settings.udp_base, 7655);
    assert!(settings.shards >= 1);
    assert_eq!(settings.max_rate, None);
    assert_eq!(settings.coding.segment_size, 32 << 20);
    assert!(Cli::try_parse_from(["ccfd-server", "--root", "/srv", "--max-rate", "lots"]).is_err());
}

#[test]
fn missing_config_file_is_a_read_error() {
    let cli = Cli::try_parse_from(["ccfd-server", "--config", "/nonexistent/ccfd.toml"]).unwrap();
    assert!(matches!(
        Settings::load(&cli),
        Err(ConfigError::Read { .. })
    ));
}

#[test]
fn shipped_example_config_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/server.toml");
    let cli = Cli {
        config: Some(path),
        ..Cli::default()
    };
    let settings = Settings::load(&cli).expect("systemd/server.toml must be valid");
    assert_eq!(settings.root, PathBuf::from("/srv/ccfd"));
}
