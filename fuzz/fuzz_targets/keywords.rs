//! Keyword classification: no panic; a match is the normalised body; quotes, punctuation and spaces around
//! a body never change its class.
#![no_main]

#[allow(dead_code)]
#[path = "../../src/domain/keywords.rs"]
mod keywords;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let body = String::from_utf8_lossy(data);
    let normalized = keywords::normalize(&body);
    let class = keywords::classify(&body);
    if let Some(k) = class {
        assert_eq!(k.word, normalized);
        assert_eq!(keywords::classify(k.word), Some(k));
    }
    let wrapped = format!("« \u{a0}{body}\u{200b} !»");
    assert_eq!(keywords::classify(&wrapped), class, "{wrapped:?}");
});
