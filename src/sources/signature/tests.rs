//! Vectors from independent implementations: the Standard Webhooks specification's published
//! vector, the examples in GitHub's and Slack's documentation, and for Stripe and Shopify
//! (whose documentation shows no complete example) signatures made with OpenSSL:
//! `printf '%s' "$signed" | openssl dgst -sha256 -hmac "$secret"` (`-binary | base64` for
//! Shopify).

use super::*;
use axum::http::HeaderValue;

fn verifier(yaml: serde_json::Value) -> Verifier {
    let config: VerifyConfig = serde_json::from_value(yaml).unwrap();
    Verifier::from_config(&config).unwrap()
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
    }
    h
}

/// A scheme with a request that verifies at `now`.
struct Case {
    name: &'static str,
    verifier: Verifier,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    now: i64,
}

impl Case {
    fn check(&self, headers: &[(&str, String)], body: &[u8]) -> Result<(), SignatureError> {
        let pairs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.verifier.verify(&self::headers(&pairs), body, self.now)
    }
}

const SW_BODY: &str = r#"{"test": 2432232314}"#;
const SLACK_BODY: &str = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
const STRIPE_BODY: &str =
    r#"{"id":"evt_1NG8Du2eZvKYlo2CUI79vXWy","type":"payment_intent.succeeded"}"#;
const SHOPIFY_BODY: &str = r#"{"id":820982911946154508,"email":"jon@example.com"}"#;

fn cases() -> Vec<Case> {
    use serde_json::json;
    vec![
        Case {
            name: "standard-webhooks",
            verifier: verifier(json!({
                "scheme": "standard-webhooks",
                "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
            })),
            headers: vec![
                ("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek".into()),
                ("webhook-timestamp", "1614265330".into()),
                ("webhook-signature", "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=".into()),
            ],
            body: SW_BODY.into(),
            now: 1614265330,
        },
        Case {
            name: "github",
            verifier: verifier(
                json!({ "scheme": "github", "secret": "It's a Secret to Everybody" }),
            ),
            headers: vec![(
                "x-hub-signature-256",
                "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17".into(),
            )],
            body: b"Hello, World!".to_vec(),
            now: 0,
        },
        Case {
            name: "slack",
            verifier: verifier(
                json!({ "scheme": "slack", "secret": "8f742231b10e8888abcd99yyyzzz85a5" }),
            ),
            headers: vec![
                ("x-slack-request-timestamp", "1531420618".into()),
                (
                    "x-slack-signature",
                    "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503".into(),
                ),
            ],
            body: SLACK_BODY.into(),
            now: 1531420618,
        },
        Case {
            name: "stripe",
            verifier: verifier(json!({ "scheme": "stripe", "secret": "whsec_9a8f7e6d5c4b3a29" })),
            headers: vec![(
                "stripe-signature",
                "t=1700000000,v1=22c0facd1a596abbf82d1184a3efa6e6df3a7befafcb08dda5201052a997acd0"
                    .into(),
            )],
            body: STRIPE_BODY.into(),
            now: 1700000000,
        },
        Case {
            name: "shopify",
            verifier: verifier(json!({ "scheme": "shopify", "secret": "shpss_5e3c1b0a" })),
            headers: vec![(
                "x-shopify-hmac-sha256",
                "bPGs12tOgqozOJObxaCl4124R3YPQ0IBguN57gEnBs0=".into(),
            )],
            body: SHOPIFY_BODY.into(),
            now: 0,
        },
        Case {
            name: "hmac-sha256 (hex with prefix)",
            verifier: verifier(json!({
                "scheme": "hmac-sha256",
                "secret": "It's a Secret to Everybody",
                "header": "X-Signature",
                "prefix": "sha256="
            })),
            headers: vec![(
                "x-signature",
                "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17".into(),
            )],
            body: b"Hello, World!".to_vec(),
            now: 0,
        },
        Case {
            name: "hmac-sha256 (base64)",
            verifier: verifier(json!({
                "scheme": "hmac-sha256",
                "secret": "shpss_5e3c1b0a",
                "header": "X-Signature",
                "encoding": "base64"
            })),
            headers: vec![("x-signature", "bPGs12tOgqozOJObxaCl4124R3YPQ0IBguN57gEnBs0=".into())],
            body: SHOPIFY_BODY.into(),
            now: 0,
        },
    ]
}

#[test]
fn published_and_independent_vectors_verify() {
    for case in cases() {
        assert_eq!(case.check(&case.headers, &case.body), Ok(()), "{}", case.name);
    }
}

#[test]
fn every_single_byte_mutation_is_rejected() {
    for case in cases() {
        let mut tried = 0;
        for i in 0..case.body.len() {
            for b in 0..=255u8 {
                if b == case.body[i] {
                    continue;
                }
                let mut body = case.body.clone();
                body[i] = b;
                assert!(case.check(&case.headers, &body).is_err(), "{}: body[{i}]={b}", case.name);
                tried += 1;
            }
        }
        for (h, (name, value)) in case.headers.iter().enumerate() {
            for i in 0..value.len() {
                for b in 0x21..=0x7eu8 {
                    if b == value.as_bytes()[i] {
                        continue;
                    }
                    let mut mutated = value.clone().into_bytes();
                    mutated[i] = b;
                    let mut headers = case.headers.clone();
                    headers[h] = (name, String::from_utf8(mutated).unwrap());
                    let result = case.check(&headers, &case.body);
                    // The generic scheme takes hex in either case: a case flip is the same
                    // signature, not a mutation of it.
                    let original = value.as_bytes()[i];
                    let same_value = case.name.starts_with("hmac-sha256 (hex")
                        && i >= "sha256=".len()
                        && original.is_ascii_hexdigit()
                        && original.eq_ignore_ascii_case(&b);
                    assert_eq!(
                        result.is_err(),
                        !same_value,
                        "{}: {name}[{i}]={}",
                        case.name,
                        b as char
                    );
                    tried += 1;
                }
            }
        }
        assert!(tried > 1000, "{}: {tried} mutations", case.name);
    }
}

#[test]
fn missing_empty_or_malformed_headers_never_pass() {
    for case in cases() {
        for h in 0..case.headers.len() {
            let mut without = case.headers.clone();
            without.remove(h);
            assert!(
                matches!(case.check(&without, &case.body), Err(SignatureError::Missing(_))),
                "{}: without {}",
                case.name,
                case.headers[h].0
            );
            let mut empty = case.headers.clone();
            empty[h].1 = String::new();
            assert!(case.check(&empty, &case.body).is_err(), "{}: empty", case.name);
        }
    }
}

#[test]
fn timestamps_outside_the_tolerance_are_rejected() {
    for mut case in cases() {
        let signed_at = case.now;
        if !["standard-webhooks", "slack", "stripe"].contains(&case.name) {
            continue;
        }
        for (now, ok) in [
            (signed_at + 300, true),
            (signed_at - 300, true),
            (signed_at + 301, false),
            (signed_at - 301, false),
        ] {
            case.now = now;
            let result = case.check(&case.headers, &case.body);
            if ok {
                assert_eq!(result, Ok(()), "{} at {now}", case.name);
            } else {
                assert_eq!(result, Err(SignatureError::Stale), "{} at {now}", case.name);
            }
        }
    }
}

#[test]
fn any_of_several_secrets_and_signatures_is_enough() {
    let v = verifier(serde_json::json!({
        "scheme": "standard-webhooks",
        // The first is a new secret being rolled out; the sender still signs with the old one.
        "secrets": ["whsec_bmV3LXNlY3JldC1iZWluZy1yb2xsZWQtb3V0", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]
    }));
    let h = headers(&[
        ("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek"),
        ("webhook-timestamp", "1614265330"),
        // A sender in rotation signs with both; an unknown version is skipped.
        (
            "webhook-signature",
            "v1a,AAAA v1,bm9wZQ== v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        ),
    ]);
    assert_eq!(v.verify(&h, SW_BODY.as_bytes(), 1614265330), Ok(()));
}

#[test]
fn configuration_mistakes_are_reported() {
    let bad = |yaml: serde_json::Value| {
        Verifier::from_config(&serde_json::from_value::<VerifyConfig>(yaml).unwrap()).err()
    };
    use serde_json::json;
    assert!(bad(json!({ "scheme": "github" })).is_some(), "no secret");
    assert!(bad(json!({ "scheme": "github", "secret": "" })).is_some(), "empty secret");
    assert!(bad(json!({ "scheme": "standard-webhooks", "secret": "whsec_!!" })).is_some());
    assert!(bad(json!({ "scheme": "hmac-sha256", "secret": "s" })).is_some(), "no header");
    assert!(bad(json!({ "scheme": "github", "secret": "s", "header": "x" })).is_some());
}
