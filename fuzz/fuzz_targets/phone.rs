//! Phone parsing: no panic on any input and region; a parsed number formats to E.164 that parses back to
//! itself, and its masked form keeps the length.
//!
//! Input: `REGION|number` when the first `|` is within 4 bytes, else the number (region CA).
#![no_main]

#[allow(dead_code)]
#[path = "../../src/domain/phone.rs"]
mod phone;

use libfuzzer_sys::fuzz_target;
use phone::Phone;

fuzz_target!(init: {
    // Loading the metadata (hundreds of regexes) takes seconds under the sanitizer: not on the first input's
    // clock, where libFuzzer would report it as a timeout.
    let _ = Phone::parse("+15145550123");
}, |data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (region, input) = match text.find('|') {
        Some(i) if i <= 4 => (&text[..i], &text[i + 1..]),
        _ => ("CA", &text[..]),
    };
    let _ = Phone::parse_with_region(input, region);
    let Ok(p) = Phone::parse(input) else { return };
    let e164 = p.as_str().to_owned();
    assert!(e164.starts_with('+') && e164[1..].bytes().all(|b| b.is_ascii_digit()), "{e164}");
    assert_eq!(p.to_string(), e164);
    assert_eq!(Phone::parse(&e164).as_ref(), Ok(&p), "parse(format(parse(x))) == parse(x) for {input:?}");
    assert_eq!(Phone::parse_with_region(&e164, "FR").as_ref(), Ok(&p), "the + form ignores the region");
    assert_eq!(p.masked().chars().count(), e164.len());
    let _ = p.region();
});
