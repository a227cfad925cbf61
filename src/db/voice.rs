//! Inbound calls (`voice_calls`): recorded in batches by the call log (`inbound::call_log`).

use sqlx::QueryBuilder;

use super::Tx;
use crate::domain::ids::new_id;
use crate::on_tx;

/// Rows per multi-row statement (7 parameters each: 2,800, under SQLite's and PostgreSQL's limits).
const CHUNK: usize = 400;

/// An inbound call as Twilio announced it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCall {
    pub sid: String,
    pub from: String,
    pub to: String,
    pub status: String,
    /// When the webhook arrived (ms).
    pub at: i64,
}

/// Record `calls`, leaving calls already recorded alone (a redelivered webhook, or a `dial-status` that came
/// first); the SIDs recorded by this call, each once even when it appears twice in `calls`.
pub async fn insert_calls(tx: &mut Tx, calls: &[NewCall]) -> Result<Vec<String>, sqlx::Error> {
    let mut inserted = Vec::new();
    for chunk in calls.chunks(CHUNK) {
        let sids: Vec<String> = on_tx!(tx, c => {
            let mut q = QueryBuilder::new(
                "INSERT INTO voice_calls (id, twilio_call_sid, from_phone, to_phone, status, created_at, updated_at) ",
            );
            q.push_values(chunk, |mut b, call| {
                b.push_bind(new_id("call")).push_bind(&call.sid).push_bind(&call.from).push_bind(&call.to)
                    .push_bind(&call.status).push_bind(call.at).push_bind(call.at);
            });
            q.push(" ON CONFLICT (twilio_call_sid) DO NOTHING RETURNING twilio_call_sid");
            q.build_query_scalar().fetch_all(&mut *c).await
        })?;
        inserted.extend(sids);
    }
    Ok(inserted)
}
