//! Segment counting: no panic; a non-empty body is at least one segment; the units and the segment count
//! agree with the encoding's sizes; adding a character never removes a segment.
#![no_main]

#[allow(dead_code)]
#[path = "../../src/domain/sms_segments.rs"]
mod sms_segments;

use libfuzzer_sys::fuzz_target;
use sms_segments::{analyze, gsm7_septets, Encoding};

fuzz_target!(|data: &[u8]| {
    let body = String::from_utf8_lossy(data);
    let info = analyze(&body);
    if body.is_empty() {
        assert_eq!((info.segments, info.units), (0, 0));
        return;
    }
    assert!(info.segments >= 1, "{body:?}: {info:?}");
    assert!(info.segments <= info.units, "{body:?}: {info:?}");
    match info.encoding {
        Encoding::Gsm7 => {
            assert!(info.non_gsm_chars.is_empty());
            let septets: u32 = body.chars().map(|c| gsm7_septets(c).expect("GSM-7 body")).sum();
            assert_eq!(info.units, septets);
        }
        Encoding::Ucs2 => {
            assert!(!info.non_gsm_chars.is_empty());
            assert!(info.non_gsm_chars.iter().all(|c| gsm7_septets(*c).is_none()));
            assert_eq!(info.units as usize, body.encode_utf16().count());
        }
    }
    let (single, multi) = (info.encoding.single_segment_units(), info.encoding.multi_segment_units());
    assert_eq!(info.segments == 1, info.units <= single, "{info:?}");
    if info.segments > 1 {
        assert!(info.segments * multi >= info.units, "{info:?}");
        // A character never straddles two segments, so a segment wastes at most one unit.
        assert!(info.segments <= info.units.div_ceil(multi - 1), "{info:?}");
    }
    let longer = analyze(&format!("{body}a"));
    assert!(longer.segments >= info.segments, "{info:?} then {longer:?}");
});
