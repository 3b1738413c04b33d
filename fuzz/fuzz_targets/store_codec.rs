//! The store's record codec on arbitrary bytes (a damaged file): decoding answers a record
//! or an error, never a panic, and a record that decodes encodes back to bytes that decode to
//! the same record (after one pass: encoding writes the newest format and bounds error
//! texts, so the first re-encoding may differ from the input).
#![no_main]

use libfuzzer_sys::fuzz_target;
use orchestron::store::{
    decode_delivery, decode_dlq, decode_event, encode_delivery, encode_dlq, encode_event,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(event) = decode_event(data) {
        let again = encode_event(&event);
        let back = decode_event(&again).expect("an encoded event decodes");
        assert_eq!(encode_event(&back), again, "event round trip");
    }
    if let Ok(delivery) = decode_delivery(data) {
        let again = encode_delivery(&delivery);
        let back = decode_delivery(&again).expect("an encoded delivery decodes");
        assert_eq!(encode_delivery(&back), again, "delivery round trip");
    }
    if let Ok(record) = decode_dlq(data) {
        let again = encode_dlq(&record);
        let back = decode_dlq(&again).expect("an encoded DLQ record decodes");
        assert_eq!(encode_dlq(&back), again, "DLQ record round trip");
    }
});
