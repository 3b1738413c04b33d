//! The YAML config loader through to the live config build, as start-up, reload and
//! `check-config` run it: a config either builds or is refused with a message, never a panic.
//! Secret references to files are resolved too, so the target runs in a directory of its
//! own (`scripts/fuzz`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match orchestron::config::load_str("fuzz.yaml".as_ref(), text, &[]) {
        Ok(config) => {
            if let Err(error) = orchestron::live::LiveConfig::build(&config) {
                assert!(!error.to_string().is_empty(), "a refusal says why");
            }
        }
        Err(error) => assert!(!error.to_string().is_empty(), "a refusal says why"),
    }
});
