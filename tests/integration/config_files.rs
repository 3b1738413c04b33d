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
        orchestron::live::LiveConfig::build(&config)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        checked += 1;
    }
    assert!(checked >= 1, "config/ holds at least the bundled config");
}

/// Every example in `config/examples/` passes `check-config`, given the secrets it names in
/// the environment and (for TLS) a certificate made here.
#[test]
fn every_example_passes_check_config() {
    let tls = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(tls.path().join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(tls.path().join("key.pem"), key.serialize_pem()).unwrap();
    let secrets = [
        "ORCHESTRON_API_KEY",
        "GITHUB_WEBHOOK_SECRET",
        "STRIPE_WEBHOOK_SECRET",
        "STRIPE_WEBHOOK_SECRET_PREVIOUS",
        "SHOPIFY_WEBHOOK_SECRET",
        "SLACK_SIGNING_SECRET",
        "INHOUSE_SECRET",
    ];
    let mut checked = 0;
    for entry in std::fs::read_dir("config/examples").unwrap() {
        let path = entry.unwrap().path();
        let mut command = Command::new(env!("CARGO_BIN_EXE_orchestron"));
        command.args(["check-config", "--config"]).arg(&path);
        for name in secrets {
            command.env(name, format!("{name}-value"));
        }
        // Standard Webhooks secrets are base64.
        command.env("BILLING_WEBHOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        command
            .env("ORCHESTRON_SERVER__TLS__CERT", tls.path().join("cert.pem"))
            .env("ORCHESTRON_SERVER__TLS__KEY", tls.path().join("key.pem"))
            .env("ORCHESTRON_SERVER__TLS__CLIENT_CA", tls.path().join("cert.pem"));
        let out = command.output().unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        checked += 1;
    }
    assert!(checked >= 2, "{checked} examples");
}

#[test]
fn hash_key_prints_the_form_api_keys_accept() {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_orchestron"))
        .arg("hash-key")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"example-key\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap();
    // The same value as `printf %s example-key | sha256sum`, as the example config uses.
    assert_eq!(
        printed.trim(),
        "sha256:c018c41c1afaf2c0b66c64f97d0ee135657b699ad260f299234cd40a5d625e0e"
    );
    let example = std::fs::read_to_string("config/examples/sources.yaml").unwrap();
    assert!(example.contains(printed.trim()));
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
    std::fs::write(creds.path().join("admin-token"), "f1".repeat(32)).unwrap();
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

/// `check-config` refuses a short admin token, and warns (exit 0) about a config file every
/// user can read that holds the token in plaintext.
#[test]
fn check_config_refuses_a_short_admin_token_and_warns_about_a_readable_plaintext_one() {
    use std::os::unix::fs::PermissionsExt;
    let bin = env!("CARGO_BIN_EXE_orchestron");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    let bundled = std::fs::read_to_string("config/orchestron.yaml").unwrap();
    let check = |token: &str| {
        let text =
            bundled.replace("  # token: \"${file:admin-token}\"", &format!("  token: \"{token}\""));
        assert_ne!(text, bundled, "the bundled config names the token line");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, PermissionsExt::from_mode(0o644)).unwrap();
        Command::new(bin).args(["check-config", "--config"]).arg(&path).output().unwrap()
    };
    let short = check("too-short-a-token");
    assert!(!short.status.success());
    let stderr = String::from_utf8_lossy(&short.stderr);
    assert!(stderr.contains("admin.token") && stderr.contains("32 bytes"), "{stderr}");

    let long = check(&"f1".repeat(20));
    let stderr = String::from_utf8_lossy(&long.stderr);
    assert!(long.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning:")
            && stderr.contains("admin.token")
            && stderr.contains("chmod o-r"),
        "{stderr}"
    );
    std::fs::set_permissions(&path, PermissionsExt::from_mode(0o600)).unwrap();
    let private = Command::new(bin).args(["check-config", "--config"]).arg(&path).output().unwrap();
    assert!(private.status.success());
    assert!(!String::from_utf8_lossy(&private.stderr).contains("warning:"));
}
