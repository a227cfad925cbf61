//! `update_env` (SPEC §6): at start-up, compare keyed fingerprints of the configuration with the previous
//! start and record the names that changed in the audit log (zone `platform`) — never values.
//!
//! Fingerprints are HMAC-SHA256 of each variable's display form (secrets are already reduced to a hash there),
//! keyed with a random per-installation key kept in `config_fingerprints` under `__key__`.

use std::collections::BTreeMap;

use hmac::{Hmac, Mac};
use serde::Serialize;
use serde_json::json;
use sha2::Sha256;

use crate::audit::{self, Entry, Zone};
use crate::domain::ids::random_hex;
use crate::on_tx;
use crate::state::AppState;

const KEY_ROW: &str = "__key__";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EnvChanges {
    pub first_run: bool,
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
}

impl EnvChanges {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty()
    }
}

fn fingerprint(key: &str, value: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("HMAC takes any key length");
    mac.update(value.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Compare, record in the audit log when something changed, and store the new fingerprints — one transaction.
pub async fn record(state: &AppState) -> Result<EnvChanges, sqlx::Error> {
    crate::db::scope::system("startup-config", record_now(state)).await
}

async fn record_now(state: &AppState) -> Result<EnvChanges, sqlx::Error> {
    let now = state.now();
    let mut tx = state.db.begin().await?;
    let rows: Vec<(String, String)> = on_tx!(&mut tx, c => sqlx::query_as("SELECT name, fingerprint FROM config_fingerprints").fetch_all(&mut *c).await)?;
    let mut previous: BTreeMap<String, String> = rows.into_iter().collect();
    let key = match previous.remove(KEY_ROW) {
        Some(k) => k,
        None => {
            // Two instances starting together: the first key wins and both use it.
            on_tx!(&mut tx, c => sqlx::query(
                "INSERT INTO config_fingerprints (name, fingerprint, updated_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING"
            ).bind(KEY_ROW).bind(random_hex(32)).bind(now).execute(&mut *c).await.map(|r| r.rows_affected()))?;
            on_tx!(&mut tx, c => sqlx::query_scalar("SELECT fingerprint FROM config_fingerprints WHERE name = $1")
                .bind(KEY_ROW).fetch_one(&mut *c).await)?
        }
    };
    let current: BTreeMap<String, String> = state
        .settings
        .display_rows()
        .into_iter()
        .filter(|(_, v)| v != "unset")
        .map(|(name, v)| (name.to_owned(), fingerprint(&key, &v)))
        .collect();

    let mut changes = EnvChanges { first_run: previous.is_empty(), ..Default::default() };
    for (name, fp) in &current {
        match previous.get(name) {
            None => changes.added.push(name.clone()),
            Some(old) if old != fp => changes.changed.push(name.clone()),
            Some(_) => {}
        }
    }
    changes.removed = previous.keys().filter(|n| !current.contains_key(*n)).cloned().collect();

    if !changes.is_empty() {
        for name in changes.removed.iter() {
            on_tx!(&mut tx, c => sqlx::query("DELETE FROM config_fingerprints WHERE name = $1")
                .bind(name).execute(&mut *c).await.map(|r| r.rows_affected()))?;
        }
        for name in changes.added.iter().chain(changes.changed.iter()) {
            on_tx!(&mut tx, c => sqlx::query(
                "INSERT INTO config_fingerprints (name, fingerprint, updated_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO UPDATE SET fingerprint = excluded.fingerprint, updated_at = excluded.updated_at"
            ).bind(name).bind(&current[name]).bind(now).execute(&mut *c).await.map(|r| r.rows_affected()))?;
        }
        let entry =
            Entry::new(Zone::Platform, "update_env", format!("instance:{}", state.instance_id)).details(json!(changes));
        audit::append(&mut tx, &entry, now).await?;
    }
    tx.commit().await?;
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_depend_on_the_key_and_the_value() {
        assert_ne!(fingerprint("k1", "v"), fingerprint("k2", "v"));
        assert_ne!(fingerprint("k1", "v"), fingerprint("k1", "w"));
        assert_eq!(fingerprint("k1", "v"), fingerprint("k1", "v"));
    }
}
