//! TwiML documents built from typed parts; every interpolated value is XML-escaped.

/// Escape text for XML element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Characters XML 1.0 forbids are dropped rather than producing a broken document.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => {}
            c => out.push(c),
        }
    }
    out
}

/// One TwiML verb.
pub enum Verb<'a> {
    Message(&'a str),
    Say { language: &'a str, text: &'a str },
    Dial { number: &'a str, timeout_secs: u32, action: &'a str },
    Hangup,
}

/// `<?xml …?><Response>…</Response>` with the given verbs.
pub fn response(verbs: &[Verb<'_>]) -> String {
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response>");
    for v in verbs {
        match v {
            Verb::Message(text) => out.push_str(&format!("<Message>{}</Message>", escape(text))),
            Verb::Say { language, text } => {
                out.push_str(&format!("<Say language=\"{}\">{}</Say>", escape(language), escape(text)))
            }
            Verb::Dial { number, timeout_secs, action } => out.push_str(&format!(
                "<Dial timeout=\"{timeout_secs}\" action=\"{}\" method=\"POST\">{}</Dial>",
                escape(action),
                escape(number)
            )),
            Verb::Hangup => out.push_str("<Hangup/>"),
        }
    }
    out.push_str("</Response>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_values_cannot_break_the_document() {
        let doc = response(&[
            Verb::Message("a < b & \"c\" 'd' > e"),
            Verb::Dial { number: "+1514&<x>", timeout_secs: 20, action: "https://h/p?a=1&b=\"2\"" },
        ]);
        assert_eq!(
            doc,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Message>a &lt; b &amp; &quot;c&quot; &apos;d&apos; &gt; e</Message>\
             <Dial timeout=\"20\" action=\"https://h/p?a=1&amp;b=&quot;2&quot;\" method=\"POST\">+1514&amp;&lt;x&gt;</Dial></Response>"
        );
    }

    #[test]
    fn control_characters_are_dropped_and_accents_kept() {
        assert_eq!(escape("é\u{0}\u{1b}à\n"), "éà\n");
    }

    #[test]
    fn an_empty_response_is_valid() {
        assert_eq!(response(&[]), "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response></Response>");
    }
}
