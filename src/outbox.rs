//! Queue an outbound SMS as a durable `sms_messages` row (status `queued`) inside the caller's transaction.
//! The dispatcher sends it later; nothing is sent while a transaction is open.

use crate::db::Tx;
use crate::domain::ids::new_id;
use crate::domain::phone::Phone;
use crate::domain::sms_segments::{analyze, Encoding};
use crate::on_tx;

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
    let id = new_id("msg");
    let info = analyze(m.body);
    let encoding = match info.encoding {
        Encoding::Gsm7 => "gsm7",
        Encoding::Ucs2 => "ucs2",
    };
    on_tx!(tx, c => sqlx::query(
        "INSERT INTO sms_messages (id, tenant_id, worker_id, kind, priority, to_phone, to_phone_masked, body, encoding, \
         segments, status, attempts, next_attempt_at, created_at, status_updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'queued', 0, $11, $11, $11)"
    )
    .bind(&id).bind(m.tenant_id).bind(m.worker_id).bind(m.kind).bind(m.priority).bind(m.to.as_str())
    .bind(m.to.masked()).bind(m.body).bind(encoding).bind(i64::from(info.segments)).bind(now)
    .execute(&mut *c).await.map(|r| r.rows_affected()))?;
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
