//! Phone numbers normalised to E.164.
//!
//! Parsing is strict on purpose: the input is checked for length and allowed
//! characters before it reaches `phonenumber`, so the library only ever sees
//! short ASCII strings, and every refusal maps to a [`PhoneError`] that tells
//! the user what to fix.

use std::fmt;
use std::str::FromStr;

use phonenumber::{country, metadata::DATABASE, Mode, ParseError};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Region used by [`Phone::parse`] for numbers written without `+`.
pub const DEFAULT_REGION: &str = "CA";

/// Longest input (in characters, after trimming) accepted before parsing.
pub const MAX_INPUT_CHARS: usize = 32;

/// Longest region code echoed back in an error message.
const MAX_REGION_ECHO: usize = 8;

/// A valid phone number in E.164 form, e.g. `+15145550123`.
///
/// The only way to build one is [`Phone::parse`] / [`Phone::parse_with_region`]
/// (also used by `FromStr` and `Deserialize`), so the inner string is always
/// a valid E.164 number.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Phone(String);

/// Why an input is not an acceptable phone number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhoneError {
    #[error("the phone number is empty; enter a number such as +1 514 555 0123")]
    Empty,

    #[error(
        "the phone number is too long (more than {max} characters); \
         enter only the number, such as +1 514 555 0123"
    )]
    TooLong { max: usize },

    #[error(
        "the phone number contains a character that is not allowed ({found:?}); \
         use only digits 0-9, spaces, the symbols - . ( ) and a single + before the digits"
    )]
    InvalidCharacters { found: char },

    #[error(
        "this does not look like a phone number; \
         enter the full number with its area code, such as 514 555 0123"
    )]
    NotANumber,

    #[error(
        "the country code is not recognised; check the digits right after the + \
         (for example +1 for Canada and the United States, +33 for France)"
    )]
    UnknownCountryCode,

    #[error("unknown region {region:?}; use a two-letter ISO country code such as CA")]
    UnknownRegion { region: String },

    #[error(
        "this is not a valid phone number for region {region}; check the area code and \
         the number of digits, or write a number from another country in international \
         format, starting with + and the country code"
    )]
    InvalidForRegion { region: String },

    #[error(
        "this is not a valid phone number; check the country code, \
         the area code and the number of digits"
    )]
    Invalid,
}

impl PhoneError {
    /// Stable machine-readable code (snake_case) for API responses and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            PhoneError::Empty => "empty_phone",
            PhoneError::TooLong { .. } => "phone_too_long",
            PhoneError::InvalidCharacters { .. } => "invalid_phone_characters",
            PhoneError::NotANumber => "phone_not_a_number",
            PhoneError::UnknownCountryCode => "unknown_country_code",
            PhoneError::UnknownRegion { .. } => "unknown_region",
            PhoneError::InvalidForRegion { .. } => "invalid_phone_for_region",
            PhoneError::Invalid => "invalid_phone",
        }
    }
}

impl Phone {
    /// Parses `input`, reading numbers without `+` as Canadian ([`DEFAULT_REGION`]).
    pub fn parse(input: &str) -> Result<Phone, PhoneError> {
        Phone::parse_with_region(input, DEFAULT_REGION)
    }

    /// Parses `input`, reading numbers without `+` as numbers of `region_code`
    /// (ISO 3166 alpha-2, case-insensitive). Numbers starting with `+` are
    /// read as international whatever the region.
    ///
    /// Within the shared +1 plan (Canada, US, ...) any valid +1 number is
    /// accepted for region CA: "for region" means "dialled from", not
    /// "located in".
    pub fn parse_with_region(input: &str, region_code: &str) -> Result<Phone, PhoneError> {
        let region_name = region_code.trim().to_ascii_uppercase();
        let region: country::Id = region_name
            .parse()
            .map_err(|_| PhoneError::UnknownRegion { region: region_code.chars().take(MAX_REGION_ECHO).collect() })?;
        let region_calling_code = DATABASE
            .by_id(region.as_ref())
            .map(|meta| meta.country_code())
            .ok_or_else(|| PhoneError::UnknownRegion { region: region_name.clone() })?;

        let trimmed = input.trim();
        if trimmed.is_empty() {
            return Err(PhoneError::Empty);
        }
        if trimmed.chars().nth(MAX_INPUT_CHARS).is_some() {
            return Err(PhoneError::TooLong { max: MAX_INPUT_CHARS });
        }
        let Cleaned { text, has_plus } = clean(trimmed)?;

        // International input ignores the region: `phonenumber` 0.3 wrongly
        // strips a leading "1" after the country code when given region CA
        // (e.g. "+33 1 42 68 53 00" would become "+3342685300").
        let parse_region = if has_plus { None } else { Some(region) };
        let number = phonenumber::parse(parse_region, &text).map_err(|err| match err {
            ParseError::InvalidCountryCode => PhoneError::UnknownCountryCode,
            _ => PhoneError::NotANumber,
        })?;

        let invalid = || {
            if has_plus {
                PhoneError::Invalid
            } else {
                PhoneError::InvalidForRegion { region: region_name.clone() }
            }
        };
        // Without `+`, a different country code means the user dialled an
        // international prefix (e.g. "011 33 ..."), which the library mangles
        // for region CA; ask for the `+` form instead of guessing.
        if !has_plus && number.code().value() != region_calling_code {
            return Err(invalid());
        }
        if !number.is_valid() {
            return Err(invalid());
        }
        let e164 = number.format().mode(Mode::E164).to_string();
        if !is_e164(&e164) {
            return Err(invalid());
        }
        Ok(Phone(e164))
    }

    /// The E.164 form, e.g. `+15145550123`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A form safe for logs and audit trails: the `+`, the country code and
    /// the last 2 digits are kept, every other digit becomes `•`, so
    /// `+15145550123` gives `+1••••••••23`. The number of digits stays
    /// visible (it is not sensitive and helps spot truncation bugs).
    pub fn masked(&self) -> String {
        mask_digits(&self.0[1..])
    }

    /// The mask of a number stored by this program (E.164, as [`Phone::as_str`] gives it), without parsing
    /// it again: parsing costs tens of microseconds of regular expressions, which an alert to 10,000 workers
    /// paid 10,000 times. Anything not shaped like E.164 (`+`, then 7 to 15 digits, not starting with 0) is
    /// parsed as input instead; `None` when it is no number at all.
    pub fn mask_stored(stored: &str) -> Option<String> {
        let digits = stored.strip_prefix('+').unwrap_or("");
        let e164 =
            (7..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) && !digits.starts_with('0');
        if e164 {
            Some(mask_digits(digits))
        } else {
            Phone::parse(stored).ok().map(|p| p.masked())
        }
    }
}

/// `digits`: an E.164 number without its `+`.
fn mask_digits(digits: &str) -> String {
    let cc_len = country_code_len(digits);
    let national = &digits[cc_len..];
    let hidden = national.len().saturating_sub(2);
    let mut out = String::with_capacity(digits.len() + 1 + hidden * 2);
    out.push('+');
    out.push_str(&digits[..cc_len]);
    out.extend(std::iter::repeat_n('•', hidden));
    out.push_str(&national[hidden..]);
    out
}

impl Phone {
    /// ISO 3166 alpha-2 region of the number (e.g. "CA", "US", "FR"), when
    /// the metadata can tell.
    pub fn region(&self) -> Option<String> {
        let number = phonenumber::parse(None, &self.0).ok()?;
        number.country().id().map(|id| id.as_ref().to_string())
    }
}

struct Cleaned {
    text: String,
    has_plus: bool,
}

/// Checks allowed characters and turns any Unicode whitespace into a plain
/// space. A `+` is allowed once, before the first digit (so "(+1) 514..."
/// is fine, "514 + 1" is not).
fn clean(trimmed: &str) -> Result<Cleaned, PhoneError> {
    let mut text = String::with_capacity(trimmed.len());
    let mut has_plus = false;
    let mut seen_digit = false;
    for c in trimmed.chars() {
        match c {
            '0'..='9' => {
                seen_digit = true;
                text.push(c);
            }
            '+' if !has_plus && !seen_digit => {
                has_plus = true;
                text.push(c);
            }
            '-' | '.' | '(' | ')' => text.push(c),
            c if c.is_whitespace() => text.push(' '),
            found => return Err(PhoneError::InvalidCharacters { found }),
        }
    }
    if !seen_digit {
        return Err(PhoneError::NotANumber);
    }
    Ok(Cleaned { text, has_plus })
}

fn is_e164(s: &str) -> bool {
    let Some(digits) = s.strip_prefix('+') else {
        return false;
    };
    (2..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) && !digits.starts_with('0')
}

/// Length of the country calling code at the start of E.164 `digits`.
/// Calling codes are prefix-free, so the first known prefix is the code.
fn country_code_len(digits: &str) -> usize {
    (1..=3)
        .filter(|&len| len < digits.len())
        .find(|&len| digits[..len].parse::<u16>().ok().and_then(|code| DATABASE.by_code(&code)).is_some())
        .unwrap_or(1)
}

impl fmt::Display for Phone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Phone {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl From<Phone> for String {
    fn from(phone: Phone) -> String {
        phone.0
    }
}

impl FromStr for Phone {
    type Err = PhoneError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Phone::parse(s)
    }
}

impl Serialize for Phone {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Phone {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Phone::parse(&raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MONTREAL: &str = "+15145550123";

    fn ok(input: &str) -> String {
        match Phone::parse(input) {
            Ok(phone) => phone.as_str().to_string(),
            Err(err) => panic!("{input:?} should parse, got {err:?}"),
        }
    }

    fn err(input: &str) -> PhoneError {
        match Phone::parse(input) {
            Ok(phone) => panic!("{input:?} should fail, got {phone}"),
            Err(err) => err,
        }
    }

    #[test]
    fn common_canadian_spellings_all_give_the_same_e164_number() {
        for input in [
            "514 555 0123",
            "(514) 555-0123",
            "+1 514-555-0123",
            "1-514-555-0123",
            "1 514 555 0123",
            "514.555.0123",
            "5145550123",
            "15145550123",
            "+15145550123",
            "+1 (514) 555-0123",
            "(+1) 514 555 0123",
            "  514 555 0123  ",
            "514\u{a0}555\u{a0}0123",
            "514\t555 0123",
        ] {
            assert_eq!(ok(input), MONTREAL, "input {input:?}");
        }
    }

    #[test]
    fn other_valid_canadian_and_nanp_numbers_are_accepted() {
        for (input, expected) in [
            ("514 873 2015", "+15148732015"),
            ("438 403 1234", "+14384031234"),
            ("613 555 0143", "+16135550143"),
            ("204 555 0123", "+12045550123"),
            ("212 555 0123", "+12125550123"),
            ("1 800 555 0199", "+18005550199"),
        ] {
            assert_eq!(ok(input), expected, "input {input:?}");
        }
    }

    #[test]
    fn international_numbers_ignore_the_default_region() {
        for (input, expected) in [
            ("+33 1 42 68 53 00", "+33142685300"),
            ("+33142685300", "+33142685300"),
            ("+33 6 12 34 56 78", "+33612345678"),
            ("+44 20 7946 0958", "+442079460958"),
        ] {
            assert_eq!(ok(input), expected, "input {input:?}");
        }
    }

    #[test]
    fn a_region_can_be_given_for_numbers_without_a_plus_sign() {
        let phone = Phone::parse_with_region("01 42 68 53 00", "FR").unwrap();
        assert_eq!(phone.as_str(), "+33142685300");
        let lower = Phone::parse_with_region("06 12 34 56 78", "fr").unwrap();
        assert_eq!(lower.as_str(), "+33612345678");
        let plus = Phone::parse_with_region("+1 514 555 0123", "FR").unwrap();
        assert_eq!(plus.as_str(), MONTREAL);
    }

    #[test]
    fn a_plus_sign_is_kept_and_the_result_is_e164() {
        let phone = Phone::parse("+1 514 555 0123").unwrap();
        assert!(phone.as_str().starts_with('+'));
        assert!(is_e164(phone.as_str()));
    }

    #[test]
    fn an_unknown_region_is_refused() {
        for region in ["", "ZZ", "Canada", "C4", "??"] {
            let err = Phone::parse_with_region("514 555 0123", region).unwrap_err();
            assert!(matches!(err, PhoneError::UnknownRegion { .. }), "{region:?}");
            assert_eq!(err.code(), "unknown_region");
        }
        let long = "X".repeat(1000);
        match Phone::parse_with_region("514 555 0123", &long).unwrap_err() {
            PhoneError::UnknownRegion { region } => assert!(region.len() <= MAX_REGION_ECHO),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn empty_and_blank_inputs_are_empty() {
        for input in ["", " ", "   ", "\t\n", "\u{a0}", "\u{2003}"] {
            assert_eq!(err(input), PhoneError::Empty, "input {input:?}");
        }
    }

    #[test]
    fn inputs_longer_than_the_limit_are_refused_before_parsing() {
        // Surrounding spaces are trimmed first, so pad with inner dashes.
        let padded = format!("514{}5550123", "-".repeat(MAX_INPUT_CHARS - 10));
        assert_eq!(padded.chars().count(), MAX_INPUT_CHARS);
        assert_eq!(ok(&padded), MONTREAL);

        let over = format!("514{}5550123", "-".repeat(MAX_INPUT_CHARS - 9));
        assert_eq!(err(&over), PhoneError::TooLong { max: MAX_INPUT_CHARS });
        assert!(matches!(err(&"1".repeat(10_000)), PhoneError::TooLong { .. }));
        assert!(matches!(err(&"é".repeat(100)), PhoneError::TooLong { .. }));
    }

    #[test]
    fn characters_outside_the_allowed_set_are_named_in_the_error() {
        for (input, found) in [
            ("514 555 O123", 'O'),
            ("514-555-0123 ext 4", 'e'),
            ("514x555x0123", 'x'),
            ("tel:+15145550123", 't'),
            ("514/555/0123", '/'),
            ("514_555_0123", '_'),
            ("514*555#0123", '*'),
            ("٣", '٣'),
            ("５１４５５５０１２３", '５'),
            ("514 555 0123 +", '+'),
            ("++1 514 555 0123", '+'),
            ("1+514 555 0123", '+'),
            ("514\u{0}5550123", '\u{0}'),
            ("📞 514 555 0123", '📞'),
        ] {
            assert_eq!(err(input), PhoneError::InvalidCharacters { found }, "input {input:?}");
        }
    }

    #[test]
    fn inputs_without_enough_digits_are_not_numbers() {
        for input in ["+", "-", "()", ".", "+-", "+ ( ) . -", "0", "1", "0000000000"] {
            assert_eq!(err(input), PhoneError::NotANumber, "input {input:?}");
        }
    }

    #[test]
    fn an_unknown_country_code_is_reported_as_such() {
        for input in ["+999999999999999", "+0 514 555 0123", "+999 1234 5678"] {
            assert_eq!(err(input), PhoneError::UnknownCountryCode, "input {input:?}");
        }
    }

    #[test]
    fn invalid_international_numbers_are_invalid() {
        for input in ["+1 514 555 012", "+1 514 555 01234", "+1 1 514 555 0123", "+33 1 42 68 53", "+1 911"] {
            assert_eq!(err(input), PhoneError::Invalid, "input {input:?}");
        }
    }

    #[test]
    fn invalid_national_numbers_are_invalid_for_the_region() {
        for input in ["514 555 012", "514 555 01234", "911", "123", "--514", "011 33 1 42 68 53 00", "555 0123"] {
            let e = err(input);
            assert_eq!(e, PhoneError::InvalidForRegion { region: "CA".to_string() }, "input {input:?}");
            assert_eq!(e.code(), "invalid_phone_for_region");
        }
    }

    #[test]
    fn every_error_has_a_distinct_snake_case_code_and_a_helpful_message() {
        let errors = [
            PhoneError::Empty,
            PhoneError::TooLong { max: 32 },
            PhoneError::InvalidCharacters { found: 'x' },
            PhoneError::NotANumber,
            PhoneError::UnknownCountryCode,
            PhoneError::UnknownRegion { region: "ZZ".into() },
            PhoneError::InvalidForRegion { region: "CA".into() },
            PhoneError::Invalid,
        ];
        let mut codes: Vec<&str> = errors.iter().map(PhoneError::code).collect();
        for code in &codes {
            assert!(code.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{code}");
        }
        assert!(codes.contains(&"invalid_phone"));
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), errors.len());
        for e in &errors {
            let message = e.to_string();
            assert!(message.len() > 30, "{message}");
            assert!(message.contains(';'), "says what and how: {message}");
        }
        assert!(PhoneError::InvalidCharacters { found: 'x' }.to_string().contains("'x'"));
        assert!(PhoneError::InvalidForRegion { region: "CA".into() }.to_string().contains("CA"));
    }

    #[test]
    fn display_and_as_str_give_e164() {
        let phone = Phone::parse("(514) 555-0123").unwrap();
        assert_eq!(phone.to_string(), MONTREAL);
        assert_eq!(phone.as_str(), MONTREAL);
        assert_eq!(phone.as_ref(), MONTREAL);
        assert_eq!(String::from(phone), MONTREAL);
        assert_eq!("514 555 0123".parse::<Phone>().unwrap().as_str(), MONTREAL);
    }

    #[test]
    fn masked_keeps_country_code_and_last_two_digits() {
        for (input, masked) in [
            ("514 555 0123", "+1••••••••23"),
            ("+33 1 42 68 53 00", "+33•••••••00"),
            ("+44 20 7946 0958", "+44••••••••58"),
            ("+353 1 234 5678", "+353••••••78"),
        ] {
            let phone = Phone::parse(input).unwrap();
            assert_eq!(phone.masked(), masked, "input {input:?}");
            assert_eq!(phone.masked().chars().count(), phone.as_str().len(), "one mask per digit");
        }
    }

    #[test]
    fn a_stored_number_is_masked_as_its_parse_would_be_and_anything_else_is_parsed_first() {
        for input in ["514 555 0123", "+33 1 42 68 53 00", "+44 20 7946 0958", "+353 1 234 5678", "+1 212 555 0123"] {
            let phone = Phone::parse(input).unwrap();
            assert_eq!(Phone::mask_stored(phone.as_str()).as_deref(), Some(phone.masked().as_str()), "{input:?}");
        }
        // Not E.164: parsed as input (a national number, spaces), or no number at all.
        assert_eq!(Phone::mask_stored("514 555 0123").as_deref(), Some("+1••••••••23"));
        for junk in ["", "+", "+0123456789", "abc", "+1514555012x"] {
            assert_eq!(Phone::mask_stored(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn region_is_the_iso_code_of_the_number() {
        for (input, region) in
            [("514 555 0123", "CA"), ("212 555 0123", "US"), ("+33 6 12 34 56 78", "FR"), ("+44 20 7946 0958", "GB")]
        {
            assert_eq!(Phone::parse(input).unwrap().region().as_deref(), Some(region), "input {input:?}");
        }
    }

    #[test]
    fn serde_round_trips_through_the_e164_string() {
        let phone = Phone::parse("(514) 555-0123").unwrap();
        let json = serde_json::to_string(&phone).unwrap();
        assert_eq!(json, "\"+15145550123\"");
        let back: Phone = serde_json::from_str(&json).unwrap();
        assert_eq!(back, phone);
        let lenient: Phone = serde_json::from_str("\"514 555 0123\"").unwrap();
        assert_eq!(lenient, phone);
    }

    #[test]
    fn deserialising_a_bad_phone_fails_with_the_user_message() {
        let err = serde_json::from_str::<Phone>("\"not a phone\"").unwrap_err();
        assert!(err.to_string().contains("not allowed"), "{err}");
        assert!(serde_json::from_str::<Phone>("\"\"").is_err());
        assert!(serde_json::from_str::<Phone>("15145550123").is_err());
    }

    #[test]
    fn odd_inputs_never_panic() {
        let odd = [
            "+",
            "++1",
            "",
            "   ",
            "٣",
            "0",
            "+999999999999999",
            "+1",
            "+1 ",
            "(",
            ")(",
            "+(",
            "1-",
            "-1",
            "..1..",
            "00",
            "011",
            "011 ",
            "+0",
            "+00",
            "+1 000 000 0000",
            "99999999999999999999999999999999",
            "+9999999999999999999999999999999",
            "\u{feff}5145550123",
            "\u{200b}",
            "\u{1F600}",
            "e\u{301}",
        ];
        for input in odd {
            let _ = Phone::parse(input);
            for region in ["CA", "US", "FR", "GB", "DE", "JP"] {
                let _ = Phone::parse_with_region(input, region);
            }
        }
        let _ = Phone::parse(&"+".repeat(100_000));
        let _ = Phone::parse(&"٣".repeat(100_000));
    }

    /// Deterministic xorshift generator so the fuzz loop is reproducible.
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
    fn generated_inputs_never_panic_and_successes_are_valid_e164() {
        let alphabet: Vec<char> = "0123456789011111   +-.()".chars().collect();
        let mut rng = Rng(0x5EC0_3600_D00D_F00D);
        for _ in 0..3_000 {
            let len = rng.below(MAX_INPUT_CHARS + 4);
            let input: String = (0..len).map(|_| alphabet[rng.below(alphabet.len())]).collect();
            if let Ok(phone) = Phone::parse(&input) {
                assert!(is_e164(phone.as_str()), "{input:?} -> {phone}");
                assert_eq!(Phone::parse(phone.as_str()).as_ref(), Ok(&phone));
                let masked = phone.masked();
                assert!(masked.starts_with('+'));
                assert!(masked.ends_with(&phone.as_str()[phone.as_str().len() - 2..]));
            }
        }
    }

    #[test]
    fn parsing_an_e164_output_again_is_idempotent() {
        for input in ["514 555 0123", "+33 1 42 68 53 00", "+44 20 7946 0958"] {
            let once = Phone::parse(input).unwrap();
            let twice = Phone::parse(once.as_str()).unwrap();
            assert_eq!(once, twice);
        }
    }
}
