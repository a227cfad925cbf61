//! Queue an outbound SMS as a durable `sms_messages` row (status `queued`) inside the caller's transaction.
//! The dispatcher sends it later; nothing is sent while a transaction is open.

use crate::db::{sms, Tx};
use crate::domain::ids::new_ordered_id;
use crate::domain::phone::Phone;
use crate::domain::sms_segments::{analyze, Encoding};

pub struct Outgoing<'a> {
    pub kind: &'a str,
    pub tenant_id: Option<&'a str>,
    pub worker_id: Option<&'a str>,
    pub to: &'a Phone,
    pub body: &'a str,
    pub priority: i64,
}

/// Insert the message and return its id.
pub async fn enqueue(tx: &mut Tx, m: &Outgoing<'_>, now: i64) -> Result<String, sqlx::Error> {
    let id = new_ordered_id("msg");
    let info = analyze(m.body);
    let encoding = match info.encoding {
        Encoding::Gsm7 => "gsm7",
        Encoding::Ucs2 => "ucs2",
    };
    let masked = m.to.masked();
    let row = sms::NewMessage {
        id: &id,
        alert_id: None,
        tenant_id: m.tenant_id,
        worker_id: m.worker_id,
        kind: m.kind,
        priority: m.priority,
        to_phone: m.to.as_str(),
        to_phone_masked: &masked,
        body: m.body,
        encoding,
        segments: i64::from(info.segments),
        status: "queued",
        error_code: None,
        at: now,
    };
    sms::insert_message(tx, &row).await?;
    Ok(id)
}

/// Fit `text` into `max_segments`, cutting at a character boundary and saying so visibly.
pub fn fit(text: &str, max_segments: u32, marker: &str) -> String {
    if analyze(text).segments <= max_segments {
        return text.to_owned();
    }
    let chars: Vec<char> = text.chars().collect();
    let (mut lo, mut hi) = (0, chars.len());
    // Binary search the longest prefix that fits together with the marker.
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        let candidate: String = chars[..mid].iter().collect::<String>() + marker;
        if analyze(&candidate).segments <= max_segments {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    chars[..lo].iter().collect::<String>() + marker
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_kept_whole() {
        assert_eq!(fit("Bonjour", 1, " […]"), "Bonjour");
    }

    #[test]
    fn long_text_is_cut_visibly_within_the_segment_budget() {
        let long = "Équipement bloqué ".repeat(40);
        let cut = fit(&long, 2, " […tronqué]");
        assert!(cut.ends_with(" […tronqué]"));
        assert!(analyze(&cut).segments <= 2);
        assert!(cut.len() > 50);
    }
}
