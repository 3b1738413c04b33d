//! Every config file shipped in the repository loads and passes `check-config`.

use std::process::Command;

#[test]
fn every_file_in_config_dir_loads_and_builds() {
    let mut checked = 0;
    for entry in std::fs::read_dir("config").unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let config = orchestron::config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        orchestron::app::LiveConfig::build(&config)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        checked += 1;
    }
    assert!(checked >= 1, "config/ holds at least the bundled config");
}

#[test]
fn check_config_exits_zero_on_good_and_nonzero_with_the_key_on_bad() {
    let bin = env!("CARGO_BIN_EXE_orchestron");
    let ok = Command::new(bin)
        .args(["check-config", "--config", "config/orchestron.yaml"])
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    let text =
        std::fs::read_to_string("config/orchestron.yaml").unwrap().replace("relay:", "relya:");
    std::fs::write(&bad, text).unwrap();
    let out = Command::new(bin).args(["check-config", "--config"]).arg(&bad).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("relya") && stderr.contains("bad.yaml"), "{stderr}");
}

#[test]
fn packaged_config_resolves_systemd_credentials_and_env_overrides() {
    let creds = tempfile::tempdir().unwrap();
    std::fs::write(creds.path().join("api-key"), "k-from-credential\n").unwrap();
    std::fs::write(creds.path().join("admin-token"), "t0ken").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_orchestron"))
        .args(["check-config", "--config", "packaging/config.yaml"])
        .env("CREDENTIALS_DIRECTORY", creds.path())
        // The packaged schema directory is /etc/orchestron/schemas; point it at the repo's.
        .env("ORCHESTRON_SCHEMAS__DIR", "config/schemas")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Without the credential, the reference is an error that names it, not an empty key.
    let out = Command::new(env!("CARGO_BIN_EXE_orchestron"))
        .args(["check-config", "--config", "packaging/config.yaml"])
        .env("CREDENTIALS_DIRECTORY", tempfile::tempdir().unwrap().path())
        .env("ORCHESTRON_SCHEMAS__DIR", "config/schemas")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot read secret file"), "{stderr}");
}
