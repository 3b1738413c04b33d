//! Every signature scheme's header parsing and verification, over arbitrary headers and
//! bodies. Input: one byte choosing the scheme, then `name: value` header lines, an empty
//! line, and the body. The verifier must answer Ok or a refusal, never panic; a refusal's
//! text must not carry the secret.
#![no_main]

use std::sync::OnceLock;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use orchestron::config::VerifyConfig;
use orchestron::sources::signature::Verifier;

/// The time the seeds were signed at (seconds since the epoch).
const NOW: i64 = 1_700_000_000;
const SECRET: &str = "fuzz-secret-0123456789";

const SCHEMES: [&str; 6] = [
    // whsec_ + base64("fuzz-secret-0123456789")
    "scheme: standard-webhooks\nsecret: whsec_ZnV6ei1zZWNyZXQtMDEyMzQ1Njc4OQ==",
    "scheme: github\nsecret: fuzz-secret-0123456789",
    "scheme: stripe\nsecret: fuzz-secret-0123456789",
    "scheme: shopify\nsecret: fuzz-secret-0123456789",
    "scheme: slack\nsecret: fuzz-secret-0123456789",
    "scheme: hmac-sha256\nsecret: fuzz-secret-0123456789\nheader: x-signature\nprefix: \"sha256=\"",
];

fn verifiers() -> &'static Vec<Verifier> {
    static VERIFIERS: OnceLock<Vec<Verifier>> = OnceLock::new();
    VERIFIERS.get_or_init(|| {
        SCHEMES
            .iter()
            .map(|yaml| {
                let config: VerifyConfig = verify_config(yaml);
                Verifier::from_config(&config).expect("a valid verify config")
            })
            .collect()
    })
}

/// The verify config from its YAML text, through the daemon's own config loader.
fn verify_config(yaml: &str) -> VerifyConfig {
    let text = format!(
        "{}sources:\n  s:\n    verify:\n{}\n",
        orchestron_fuzz::BASE,
        yaml.lines().map(|l| format!("      {l}\n")).collect::<String>()
    );
    let config = orchestron::config::load_str("fuzz.yaml".as_ref(), &text, &[])
        .expect("the fuzz config loads");
    config.sources["s"].verify.clone().expect("verify is set")
}

fuzz_target!(|data: &[u8]| {
    let Some((&choice, rest)) = data.split_first() else { return };
    let verifier = &verifiers()[usize::from(choice) % SCHEMES.len()];
    let (head, body) = match rest.windows(2).position(|w| w == b"\n\n") {
        Some(at) => (&rest[..at], &rest[at + 2..]),
        None => (rest, &[][..]),
    };
    let mut headers = HeaderMap::new();
    for line in head.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        let value = line[colon + 1..].strip_prefix(b" ").unwrap_or(&line[colon + 1..]);
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(&line[..colon]), HeaderValue::from_bytes(value))
        {
            headers.append(name, value);
        }
    }
    if let Err(refusal) = verifier.verify(&headers, body, NOW) {
        assert!(!refusal.to_string().contains(SECRET), "a refusal names the secret");
    }
});
