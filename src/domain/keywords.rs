//! Classification of inbound SMS bodies as opt-out / opt-in / help keywords.
//!
//! A body matches only when, once normalised, it is exactly one keyword:
//! "Stop." and "«Arrêt»" match, "Stop the machine" and "stop stop" do not.
//! Hyphenated spellings such as "OPT-OUT" are not keywords (only "OPTOUT").

use serde::{Deserialize, Serialize};

/// What a keyword asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeywordKind {
    OptOut,
    OptIn,
    Help,
}

/// Language a keyword belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    Fr,
    En,
}

/// A recognised keyword.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Keyword {
    pub kind: KeywordKind,
    /// Canonical spelling: uppercase, without accents (e.g. "ARRET").
    pub word: &'static str,
    /// `Some(Fr)` for French words, `Some(En)` for English ones (STOP is
    /// also used in French but is counted as English), `None` when the word
    /// is shared by both languages (INFO).
    pub language: Option<Language>,
}

const fn kw(kind: KeywordKind, word: &'static str, language: Option<Language>) -> Keyword {
    Keyword { kind, word, language }
}

/// Every recognised keyword, in canonical (normalised) spelling.
pub const KEYWORDS: &[Keyword] = &[
    kw(KeywordKind::OptOut, "STOP", Some(Language::En)),
    kw(KeywordKind::OptOut, "STOPALL", Some(Language::En)),
    kw(KeywordKind::OptOut, "UNSUBSCRIBE", Some(Language::En)),
    kw(KeywordKind::OptOut, "CANCEL", Some(Language::En)),
    kw(KeywordKind::OptOut, "END", Some(Language::En)),
    kw(KeywordKind::OptOut, "QUIT", Some(Language::En)),
    kw(KeywordKind::OptOut, "REVOKE", Some(Language::En)),
    kw(KeywordKind::OptOut, "OPTOUT", Some(Language::En)),
    kw(KeywordKind::OptOut, "ARRET", Some(Language::Fr)),
    kw(KeywordKind::OptIn, "START", Some(Language::En)),
    kw(KeywordKind::OptIn, "UNSTOP", Some(Language::En)),
    kw(KeywordKind::OptIn, "YES", Some(Language::En)),
    kw(KeywordKind::Help, "HELP", Some(Language::En)),
    kw(KeywordKind::Help, "INFO", None),
    kw(KeywordKind::Help, "AIDE", Some(Language::Fr)),
];

/// Returns the keyword `body` consists of, if any.
pub fn classify(body: &str) -> Option<Keyword> {
    let normalized = normalize(body);
    KEYWORDS.iter().find(|k| k.word == normalized).copied()
}

/// Normalises a body for keyword matching: trims whitespace (including
/// NBSP and zero-width characters) and punctuation at both ends, collapses
/// inner whitespace to one space, uppercases and strips accents.
pub fn normalize(body: &str) -> String {
    let trimmed = body.trim_matches(is_edge_noise);
    let mut out = String::with_capacity(trimmed.len());
    let mut pending_space = false;
    for c in trimmed.chars() {
        if is_space(c) {
            pending_space = true;
            continue;
        }
        if pending_space {
            out.push(' ');
            pending_space = false;
        }
        for upper in c.to_uppercase() {
            push_unaccented(&mut out, upper);
        }
    }
    out
}

fn is_space(c: char) -> bool {
    c.is_whitespace() || matches!(c, '\u{200b}' | '\u{200c}' | '\u{200d}' | '\u{2060}' | '\u{feff}')
}

/// Characters removed from both ends of a body.
fn is_edge_noise(c: char) -> bool {
    is_space(c)
        || c.is_ascii_punctuation()
        || matches!(
            c,
            '«' | '»'
                | '‹'
                | '›'
                | '“'
                | '”'
                | '„'
                | '‟'
                | '‘'
                | '’'
                | '‚'
                | '‛'
                | '¡'
                | '¿'
                | '…'
                | '–'
                | '—'
                | '·'
                | '•'
                | '。'
                | '！'
                | '？'
        )
}

/// Pushes the unaccented form of an uppercase letter.
fn push_unaccented(out: &mut String, c: char) {
    let plain = match c {
        'À' | 'Á' | 'Â' | 'Ã' | 'Ä' | 'Å' => "A",
        'Ç' => "C",
        'È' | 'É' | 'Ê' | 'Ë' => "E",
        'Ì' | 'Í' | 'Î' | 'Ï' => "I",
        'Ñ' => "N",
        'Ò' | 'Ó' | 'Ô' | 'Õ' | 'Ö' => "O",
        'Ù' | 'Ú' | 'Û' | 'Ü' => "U",
        'Ý' | 'Ÿ' => "Y",
        'Æ' => "AE",
        'Œ' => "OE",
        // Combining diacritical marks (decomposed input such as "E\u{301}").
        '\u{300}'..='\u{36f}' => "",
        other => {
            out.push(other);
            return;
        }
    };
    out.push_str(plain);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn word_of(body: &str) -> Option<&'static str> {
        classify(body).map(|k| k.word)
    }

    #[test]
    fn keyword_variants_are_classified() {
        use KeywordKind::*;
        use Language::*;
        for (body, kind, word, language) in [
            ("stop", OptOut, "STOP", Some(En)),
            (" STOP ", OptOut, "STOP", Some(En)),
            ("Stop.", OptOut, "STOP", Some(En)),
            ("STOP!!!", OptOut, "STOP", Some(En)),
            ("\"stop\"", OptOut, "STOP", Some(En)),
            ("'Stop'", OptOut, "STOP", Some(En)),
            ("\u{a0}stop\u{a0}", OptOut, "STOP", Some(En)),
            ("\u{feff}STOP\u{200b}", OptOut, "STOP", Some(En)),
            ("\n\tStop\r\n", OptOut, "STOP", Some(En)),
            ("StopAll", OptOut, "STOPALL", Some(En)),
            ("unsubscribe", OptOut, "UNSUBSCRIBE", Some(En)),
            ("Cancel", OptOut, "CANCEL", Some(En)),
            ("end", OptOut, "END", Some(En)),
            ("quit", OptOut, "QUIT", Some(En)),
            ("revoke", OptOut, "REVOKE", Some(En)),
            ("optout", OptOut, "OPTOUT", Some(En)),
            ("«Arrêt»", OptOut, "ARRET", Some(Fr)),
            ("« arrêt »", OptOut, "ARRET", Some(Fr)),
            ("arrêt!", OptOut, "ARRET", Some(Fr)),
            ("ARRET", OptOut, "ARRET", Some(Fr)),
            ("ARRÊT", OptOut, "ARRET", Some(Fr)),
            ("arret", OptOut, "ARRET", Some(Fr)),
            ("Arre\u{302}t", OptOut, "ARRET", Some(Fr)),
            ("“Arrêt”", OptOut, "ARRET", Some(Fr)),
            ("start", OptIn, "START", Some(En)),
            ("unstop", OptIn, "UNSTOP", Some(En)),
            ("Yes", OptIn, "YES", Some(En)),
            ("YES!", OptIn, "YES", Some(En)),
            ("help", Help, "HELP", Some(En)),
            ("Help?", Help, "HELP", Some(En)),
            ("info", Help, "INFO", None),
            ("aide?", Help, "AIDE", Some(Fr)),
            ("¿Aide?", Help, "AIDE", Some(Fr)),
            ("AIDE…", Help, "AIDE", Some(Fr)),
        ] {
            assert_eq!(classify(body), Some(Keyword { kind, word, language }), "body {body:?}");
        }
    }

    #[test]
    fn bodies_that_are_not_a_single_keyword_are_ignored() {
        for body in [
            "",
            "   ",
            "\u{a0}",
            "!!!",
            "«»",
            "Stop the machine",
            "stop stop",
            "S T O P",
            "oui",
            "non",
            "OPT-OUT",
            "opt out",
            "stopp",
            "sto",
            "st.op",
            "STOP🛑",
            "🛑",
            "🛑🛑🛑",
            "please stop",
            "arrêter",
            "aidez-moi",
            "information",
            "ST0P",
            "\u{0}STOP",
        ] {
            assert_eq!(word_of(body), None, "body {body:?}");
        }
    }

    #[test]
    fn normalize_trims_edges_uppercases_strips_accents_and_collapses_spaces() {
        for (body, expected) in [
            ("  Arrêt  ", "ARRET"),
            ("«Arrêt»", "ARRET"),
            ("Stop the   machine.", "STOP THE MACHINE"),
            ("stop\u{a0}\u{a0}stop", "STOP STOP"),
            ("\t a \n b \r", "A B"),
            ("Ça été où?", "CA ETE OU"),
            ("àâäéèêëîïôöùûüç", "AAAEEEEIIOOUUUC"),
            ("ÀÂÄÉÈÊËÎÏÔÖÙÛÜÇ", "AAAEEEEIIOOUUUC"),
            ("œuvre", "OEUVRE"),
            ("straße", "STRASSE"),
            ("O-P-T", "O-P-T"),
            ("l'aide", "L'AIDE"),
            ("...", ""),
            ("", ""),
            ("🛑", "🛑"),
            ("\"'«“stop”»'\"", "STOP"),
        ] {
            assert_eq!(normalize(body), expected, "body {body:?}");
        }
    }

    #[test]
    fn every_canonical_word_is_its_own_normal_form_and_unique() {
        for k in KEYWORDS {
            assert_eq!(normalize(k.word), k.word);
            assert_eq!(classify(k.word), Some(*k));
            assert_eq!(classify(&k.word.to_lowercase()), Some(*k));
            assert_eq!(KEYWORDS.iter().filter(|o| o.word == k.word).count(), 1);
        }
        assert_eq!(KEYWORDS.len(), 15);
    }

    #[test]
    fn languages_follow_the_word() {
        assert_eq!(classify("arrêt").unwrap().language, Some(Language::Fr));
        assert_eq!(classify("aide").unwrap().language, Some(Language::Fr));
        assert_eq!(classify("stop").unwrap().language, Some(Language::En));
        assert_eq!(classify("info").unwrap().language, None);
    }

    #[test]
    fn very_long_bodies_do_not_panic_and_do_not_match() {
        assert_eq!(word_of(&"stop ".repeat(100_000)), None);
        assert_eq!(word_of(&"a".repeat(1_000_000)), None);
        let padded = format!("{}stop{}", "!".repeat(100_000), " ".repeat(100_000));
        assert_eq!(word_of(&padded), Some("STOP"));
        assert_eq!(word_of(&"😀".repeat(100_000)), None);
    }

    #[test]
    fn keywords_serialise_with_stable_names() {
        let json = serde_json::to_value(classify("arrêt").unwrap()).unwrap();
        assert_eq!(json, serde_json::json!({"kind": "opt_out", "word": "ARRET", "language": "fr"}));
        let json = serde_json::to_value(classify("info").unwrap()).unwrap();
        assert_eq!(json, serde_json::json!({"kind": "help", "word": "INFO", "language": null}));
        assert_eq!(serde_json::from_str::<KeywordKind>("\"opt_in\"").unwrap(), KeywordKind::OptIn);
        assert_eq!(serde_json::from_str::<Language>("\"en\"").unwrap(), Language::En);
    }
}
