//! Tenant-level values: the tenant slug, language and province, and free-text names.

use serde::{Deserialize, Serialize};

/// A tenant id is a slug: 2–63 characters of `a-z`, `0-9` and `-`, not starting or ending with `-`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct TenantId(String);

impl TenantId {
    pub fn parse(s: &str) -> Result<Self, String> {
        let ok = (2..=63).contains(&s.len())
            && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(format!(
                "{s:?} is not a valid tenant id: use 2 to 63 lowercase letters, digits or dashes, such as \"cerdia\""
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    #[default]
    Fr,
    En,
}

impl Language {
    pub fn as_str(self) -> &'static str {
        match self {
            Language::Fr => "fr",
            Language::En => "en",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "fr" => Some(Language::Fr),
            "en" => Some(Language::En),
            _ => None,
        }
    }
}

/// Canadian provinces and territories (two-letter codes), used for tax display.
pub const PROVINCES: &[&str] = &["AB", "BC", "MB", "NB", "NL", "NS", "NT", "NU", "ON", "PE", "QC", "SK", "YT"];

pub fn parse_province(s: &str) -> Result<String, String> {
    let up = s.trim().to_ascii_uppercase();
    if PROVINCES.contains(&up.as_str()) {
        Ok(up)
    } else {
        Err(format!("{s:?} is not a Canadian province code; use one of {}", PROVINCES.join(", ")))
    }
}

/// A display name: trimmed, 1–200 characters, no control characters.
pub fn parse_name(field: &str, s: &str) -> Result<String, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err(format!("{field} must not be empty"));
    }
    if t.chars().count() > 200 {
        return Err(format!("{field} must be at most 200 characters"));
    }
    if t.chars().any(char::is_control) {
        return Err(format!("{field} must not contain control characters (line breaks, tabs…)"));
    }
    Ok(t.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids_are_lowercase_slugs() {
        for ok in ["cerdia", "acme-2", "a1"] {
            assert!(TenantId::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a", "Cerdia", "-acme", "acme-", "ac me", "acme_2", "../etc", "é", &"a".repeat(64)] {
            assert!(TenantId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn provinces_are_normalised_to_upper_case_codes() {
        assert_eq!(parse_province(" qc ").unwrap(), "QC");
        assert!(parse_province("Quebec").unwrap_err().contains("QC"));
    }

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(parse_name("name", "  Usine Nord ").unwrap(), "Usine Nord");
        assert!(parse_name("name", "   ").is_err());
        assert!(parse_name("name", &"x".repeat(201)).is_err());
        assert!(parse_name("name", "a\nb").is_err());
        assert_eq!(parse_name("name", &"é".repeat(200)).unwrap().chars().count(), 200);
    }
}
