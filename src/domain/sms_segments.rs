//! SMS encoding detection (GSM 03.38 / 3GPP TS 23.038) and segment counting.
//!
//! A body whose every character is in the GSM-7 default alphabet or its
//! extension table is sent as GSM-7; anything else forces UCS-2 for the whole
//! message. Segment sizes account for the 6-byte concatenation header (UDH).

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

/// Character encoding a message will be sent with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    Gsm7,
    Ucs2,
}

impl Encoding {
    /// Units (septets or UTF-16 code units) that fit in a single-segment message.
    pub const fn single_segment_units(self) -> u32 {
        match self {
            Encoding::Gsm7 => 160,
            Encoding::Ucs2 => 70,
        }
    }

    /// Units that fit in each segment of a concatenated (multi-part) message.
    pub const fn multi_segment_units(self) -> u32 {
        match self {
            Encoding::Gsm7 => 153,
            Encoding::Ucs2 => 67,
        }
    }
}

/// Result of [`analyze`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentInfo {
    pub encoding: Encoding,
    /// Number of SMS parts; 0 for an empty body.
    pub segments: u32,
    /// Septets for GSM-7 (extension characters count 2), UTF-16 code units for UCS-2.
    pub units: u32,
    /// Distinct characters that forced UCS-2, in order of first appearance.
    pub non_gsm_chars: Vec<char>,
}

/// GSM 03.38 default alphabet, in code order 0x00..=0x7F. 0x1B (escape to the
/// extension table) is not a character of its own and is left out.
const GSM7_BASIC: &str = concat!(
    "@£$¥èéùìòÇ\nØø\rÅå",
    "Δ_ΦΓΛΩΠΨΣΘΞ",
    "ÆæßÉ",
    " !\"#¤%&'()*+,-./",
    "0123456789:;<=>?",
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§",
    "¿abcdefghijklmnopqrstuvwxyzäöñüà",
);

/// GSM 03.38 extension table: each costs 2 septets (escape + code).
const GSM7_EXTENSION: &str = "\u{c}^{}\\[~]|€";

/// Septets needed for `c` in GSM-7, or `None` if it is not representable.
pub fn gsm7_septets(c: char) -> Option<u32> {
    if GSM7_BASIC.contains(c) {
        Some(1)
    } else if GSM7_EXTENSION.contains(c) {
        Some(2)
    } else {
        None
    }
}

/// Detects the encoding of `body` and counts its segments.
///
/// An empty body is GSM-7 with 0 units and 0 segments: nothing would be
/// sent (callers refuse empty bodies anyway).
pub fn analyze(body: &str) -> SegmentInfo {
    let mut non_gsm_chars = Vec::new();
    let mut seen = HashSet::new();
    let mut septets = Vec::with_capacity(body.len());
    for c in body.chars() {
        match gsm7_septets(c) {
            Some(n) => septets.push(n),
            None => {
                if seen.insert(c) {
                    non_gsm_chars.push(c);
                }
            }
        }
    }

    if non_gsm_chars.is_empty() {
        let (units, segments) = count(Encoding::Gsm7, septets.into_iter());
        SegmentInfo { encoding: Encoding::Gsm7, segments, units, non_gsm_chars }
    } else {
        let widths = body.chars().map(|c| c.len_utf16() as u32);
        let (units, segments) = count(Encoding::Ucs2, widths);
        SegmentInfo { encoding: Encoding::Ucs2, segments, units, non_gsm_chars }
    }
}

/// Returns `(units, segments)` for characters of the given unit widths.
/// A character never straddles two segments: if it does not fit in the
/// room left, it starts the next segment.
fn count(encoding: Encoding, widths: impl Iterator<Item = u32> + Clone) -> (u32, u32) {
    let units: u32 = widths.clone().fold(0, |acc, w| acc.saturating_add(w));
    if units == 0 {
        return (0, 0);
    }
    if units <= encoding.single_segment_units() {
        return (units, 1);
    }
    let per_segment = encoding.multi_segment_units();
    let mut segments = 1u32;
    let mut used = 0u32;
    for w in widths {
        if used + w > per_segment {
            segments = segments.saturating_add(1);
            used = 0;
        }
        used += w;
    }
    (units, segments)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(body: &str, encoding: Encoding, units: u32, segments: u32) {
        let info = analyze(body);
        assert_eq!(
            (info.encoding, info.units, info.segments),
            (encoding, units, segments),
            "body of {} chars starting {:?}",
            body.chars().count(),
            body.chars().take(12).collect::<String>()
        );
    }

    #[test]
    fn the_basic_table_has_127_characters_and_the_extension_table_10() {
        assert_eq!(GSM7_BASIC.chars().count(), 127);
        assert_eq!(GSM7_EXTENSION.chars().count(), 10);
        let mut all: Vec<char> = GSM7_BASIC.chars().chain(GSM7_EXTENSION.chars()).collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 137, "no character is listed twice");
    }

    #[test]
    fn an_empty_body_is_gsm7_with_zero_segments() {
        assert_eq!(analyze(""), SegmentInfo { encoding: Encoding::Gsm7, segments: 0, units: 0, non_gsm_chars: vec![] });
    }

    #[test]
    fn gsm7_boundaries_match_160_and_153() {
        use Encoding::Gsm7;
        for (len, segments) in [
            (1, 1),
            (159, 1),
            (160, 1),
            (161, 2),
            (153 * 2, 2),
            (153 * 2 + 1, 3),
            (153 * 3, 3),
            (153 * 3 + 1, 4),
            (1530, 10),
        ] {
            check(&"a".repeat(len), Gsm7, len as u32, segments);
        }
    }

    #[test]
    fn ucs2_boundaries_match_70_and_67() {
        use Encoding::Ucs2;
        for (len, segments) in
            [(1, 1), (69, 1), (70, 1), (71, 2), (67 * 2, 2), (67 * 2 + 1, 3), (67 * 3, 3), (67 * 3 + 1, 4)]
        {
            check(&"ê".repeat(len), Ucs2, len as u32, segments);
        }
    }

    #[test]
    fn extension_characters_count_two_septets() {
        use Encoding::Gsm7;
        for c in ['^', '{', '}', '\\', '[', '~', ']', '|', '€', '\u{c}'] {
            assert_eq!(gsm7_septets(c), Some(2), "{c:?}");
            check(&c.to_string(), Gsm7, 2, 1);
        }
        check(&"€".repeat(80), Gsm7, 160, 1);
        check(&"€".repeat(81), Gsm7, 162, 2);
        check(&format!("{}€", "a".repeat(158)), Gsm7, 160, 1);
        check(&format!("{}€", "a".repeat(159)), Gsm7, 161, 2);
    }

    #[test]
    fn an_extension_character_is_never_split_across_segments() {
        use Encoding::Gsm7;
        // 152 septets then € (2): € cannot take the last slot, it opens segment 2.
        let body = format!("{}€{}", "a".repeat(152), "a".repeat(10));
        check(&body, Gsm7, 164, 2);
        // 152 + € + 151 = 305: segment 1 wastes a slot, segment 2 is full.
        let body = format!("{}€{}", "a".repeat(152), "a".repeat(151));
        check(&body, Gsm7, 305, 2);
        // 152 + € + 152 = 306 = 2×153, but € cannot be split: 3 segments.
        let body = format!("{}€{}", "a".repeat(152), "a".repeat(152));
        check(&body, Gsm7, 306, 3);
        // € exactly filling the end of segment 1 is fine.
        let body = format!("{}€{}", "a".repeat(151), "a".repeat(153));
        check(&body, Gsm7, 306, 2);
        // Only extension characters: 76 per segment (152 septets), not 76.5.
        check(&"[".repeat(76 * 2), Gsm7, 304, 2);
        check(&"[".repeat(76 * 2 + 1), Gsm7, 306, 3);
    }

    #[test]
    fn a_surrogate_pair_is_never_split_across_segments() {
        use Encoding::Ucs2;
        check(&"😀".repeat(35), Ucs2, 70, 1);
        check(&"😀".repeat(36), Ucs2, 72, 2);
        // 66 units then an emoji (2): it opens segment 2.
        let body = format!("{}😀{}", "ê".repeat(66), "ê".repeat(10));
        check(&body, Ucs2, 78, 2);
        // 66 + 2 + 66 = 134 = 2×67 units but the pair cannot be split.
        let body = format!("{}😀{}", "ê".repeat(66), "ê".repeat(66));
        check(&body, Ucs2, 134, 3);
        // Emojis only: 33 per segment.
        check(&"😀".repeat(66), Ucs2, 132, 2);
        check(&"😀".repeat(67), Ucs2, 134, 3);
    }

    #[test]
    fn french_accents_in_the_gsm7_table_stay_gsm7() {
        for c in "éèàùìòÇÉÄÖÑÜßäöñüÅåÆæØø".chars() {
            assert_eq!(gsm7_septets(c), Some(1), "{c:?} is GSM-7");
        }
        let info = analyze("Alerte: intrusion détectée à l'entrée. Répondez ARRET pour arrêter");
        assert_eq!(info.encoding, Encoding::Ucs2, "ê in arrêter forces UCS-2");
        assert_eq!(info.non_gsm_chars, vec!['ê']);

        let info = analyze("Alerte: intrusion détectée à l'entrée principale. Ça va?");
        assert_eq!(info.encoding, Encoding::Gsm7);
        assert!(info.non_gsm_chars.is_empty());
    }

    #[test]
    fn common_french_letters_outside_the_gsm7_table_force_ucs2() {
        for c in "êâîôûçëïÊÂÎÔÛËÏœŒÿŸÀÈÙá".chars() {
            assert_eq!(gsm7_septets(c), None, "{c:?} is not GSM-7");
            let info = analyze(&format!("Bonjour {c}"));
            assert_eq!(info.encoding, Encoding::Ucs2, "{c:?}");
            assert_eq!(info.non_gsm_chars, vec![c]);
        }
    }

    #[test]
    fn only_uppercase_c_cedilla_is_gsm7() {
        assert_eq!(analyze("Ç").encoding, Encoding::Gsm7);
        assert_eq!(analyze("ç").encoding, Encoding::Ucs2);
        assert_eq!(analyze("garçon").non_gsm_chars, vec!['ç']);
    }

    #[test]
    fn emoji_forces_ucs2_and_counts_two_units() {
        let info = analyze("Alarm 🚨");
        assert_eq!(info.encoding, Encoding::Ucs2);
        assert_eq!(info.units, 8);
        assert_eq!(info.segments, 1);
        assert_eq!(info.non_gsm_chars, vec!['🚨']);
    }

    #[test]
    fn in_ucs2_extension_characters_count_one_unit() {
        let info = analyze("€ ê");
        assert_eq!(info.encoding, Encoding::Ucs2);
        assert_eq!(info.units, 3);
    }

    #[test]
    fn the_euro_sign_is_gsm7_extension() {
        check("Total: 25€", Encoding::Gsm7, 11, 1);
    }

    #[test]
    fn cr_and_lf_are_single_septets() {
        check("a\r\nb", Encoding::Gsm7, 4, 1);
        check("\n", Encoding::Gsm7, 1, 1);
        check(&"\r\n".repeat(80), Encoding::Gsm7, 160, 1);
    }

    #[test]
    fn tab_and_other_controls_are_not_gsm7() {
        for c in ['\t', '\u{0}', '\u{1b}', '\u{7f}'] {
            assert_eq!(gsm7_septets(c), None, "{c:?}");
        }
        assert_eq!(analyze("a\tb").encoding, Encoding::Ucs2);
    }

    #[test]
    fn ascii_characters_outside_the_gsm7_table_force_ucs2() {
        assert_eq!(gsm7_septets('`'), None);
        let printable_ascii_in_gsm = (' '..='~').filter(|c| gsm7_septets(*c).is_some()).count();
        assert_eq!(printable_ascii_in_gsm, 94, "every printable ASCII except `");
    }

    #[test]
    fn look_alike_punctuation_forces_ucs2() {
        for c in ['’', '‘', '“', '”', '«', '»', '…', '–', '—', '\u{a0}'] {
            assert_eq!(gsm7_septets(c), None, "{c:?}");
        }
    }

    #[test]
    fn non_gsm_chars_are_distinct_and_in_order_of_first_appearance() {
        let info = analyze("ê😀çê a ç 😀 ô");
        assert_eq!(info.non_gsm_chars, vec!['ê', '😀', 'ç', 'ô']);
        assert_eq!(info.encoding, Encoding::Ucs2);
    }

    #[test]
    fn units_are_septets_for_gsm7_and_utf16_units_for_ucs2() {
        check("Hello", Encoding::Gsm7, 5, 1);
        check("Hello{}", Encoding::Gsm7, 9, 1);
        check("Héllo ê", Encoding::Ucs2, 7, 1);
        check("ê😀", Encoding::Ucs2, 3, 1);
    }

    #[test]
    fn encoding_serialises_in_lowercase() {
        assert_eq!(serde_json::to_string(&Encoding::Gsm7).unwrap(), "\"gsm7\"");
        assert_eq!(serde_json::to_string(&Encoding::Ucs2).unwrap(), "\"ucs2\"");
        let back: Encoding = serde_json::from_str("\"ucs2\"").unwrap();
        assert_eq!(back, Encoding::Ucs2);
        let json = serde_json::to_value(analyze("ê")).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "encoding": "ucs2", "segments": 1, "units": 1, "non_gsm_chars": ["ê"]
            })
        );
    }

    /// Deterministic xorshift generator for the property-style test.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn generated_bodies_satisfy_the_segment_invariants() {
        let gsm_only: Vec<char> = "aZ09 .,!?éàÇ\n€[]^{}~|\\".chars().collect();
        let mixed: Vec<char> = "aZ09 éàÇ€[êç😀🚨中\u{a0}".chars().collect();
        let mut rng = Rng(0x0360_5EC0_1234_5678);
        for round in 0..4_000 {
            let pool = if round % 2 == 0 { &gsm_only } else { &mixed };
            let len = rng.below(480);
            let body: String = (0..len).map(|_| pool[rng.below(pool.len())]).collect();
            let info = analyze(&body);
            let enc = info.encoding;

            let expected_units: u32 = match enc {
                Encoding::Gsm7 => body.chars().map(|c| gsm7_septets(c).unwrap()).sum(),
                Encoding::Ucs2 => body.encode_utf16().count() as u32,
            };
            assert_eq!(info.units, expected_units, "{body:?}");
            assert_eq!(enc == Encoding::Gsm7, info.non_gsm_chars.is_empty(), "{body:?}");
            for c in &info.non_gsm_chars {
                assert!(gsm7_septets(*c).is_none() && body.contains(*c));
            }

            if info.units == 0 {
                assert_eq!(info.segments, 0);
                continue;
            }
            if info.units <= enc.single_segment_units() {
                assert_eq!(info.segments, 1, "{body:?}");
                continue;
            }
            let per = enc.multi_segment_units();
            assert!(info.segments >= 2);
            assert!(info.segments * per >= info.units, "{body:?}");
            assert!(info.segments >= info.units.div_ceil(per));
            // Each segment loses at most one unit to an unsplittable char.
            assert!(info.segments <= info.units.div_ceil(per - 1), "{body:?}");
        }
    }

    #[test]
    fn very_long_bodies_are_counted_without_overflow() {
        let info = analyze(&"a".repeat(1_000_000));
        assert_eq!(info.units, 1_000_000);
        assert_eq!(info.segments, 1_000_000u32.div_ceil(153));
    }
}
