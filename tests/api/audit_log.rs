use reqwest::{Method, StatusCode};
use secur360::audit::{self, Entry, Zone};
use serde_json::json;

use crate::both_backends;
use crate::helpers::*;

/// Disable the append-only protection, as an attacker with table-owner rights could.
async fn disable_protection(app: &TestApp) {
    match app.backend {
        Backend::Sqlite => {
            app.exec("DROP TRIGGER system_audit_logs_no_update").await;
            app.exec("DROP TRIGGER system_audit_logs_no_delete").await;
        }
        Backend::Postgres => app.exec("ALTER TABLE system_audit_logs DISABLE TRIGGER USER").await,
    }
}

/// Record three rows and seal them (through the service's own runtime-role handle).
async fn record_three(app: &TestApp) {
    for (i, action) in ["login", "sync", "cleanup"].into_iter().enumerate() {
        let e = Entry::new(Zone::Admin, action, "tests").details(json!({ "i": i }));
        audit::record(&app.db, &e, 1_000 + i as i64).await.unwrap();
    }
    assert_eq!(audit::seal(&app.state.db).await.unwrap(), audit::SealReport { sealed: 3, head_seq: Some(3) });
}

/// `(id, seq)` of every row, in `id` order.
async fn ids_and_seqs(app: &TestApp) -> Vec<(i64, Option<i64>)> {
    secur360::on_db!(&app.db, p => sqlx::query_as("SELECT id, seq FROM system_audit_logs ORDER BY id").fetch_all(p).await)
        .unwrap()
}

both_backends! {
    async fn changes_are_audited_with_a_verifiable_chain(app) {
        let key = app.tenant_with_key("acme").await;
        app.send(Method::POST, "/api/sites", Some(&key), Some(json!({"name": "Usine"}))).await;
        let (s, page) = app.operator(Method::GET, "/api/audit?tenant_id=acme&limit=2", None).await;
        assert_eq!(s, StatusCode::OK);
        let entries = page["entries"].as_array().unwrap();
        let actions: Vec<&str> = entries.iter().map(|e| e["action"].as_str().unwrap()).collect();
        assert_eq!(actions, ["site_create", "api_key_create"]);
        assert_eq!(entries[0]["zone"], "platform");
        assert!(entries[0]["request_id"].is_string());
        let (_, next) = app.operator(Method::GET, &format!("/api/audit?limit=2&before={}", page["next_before"]), None).await;
        assert_eq!(next["entries"][0]["action"], "tenant_create");
        let (_, admin_only) = app.operator(Method::GET, "/api/audit?zone=admin", None).await;
        assert_eq!(admin_only["entries"].as_array().unwrap().len(), 2);
        // Fresh rows are listed before they are sealed; verify counts them apart, and checks them once sealed.
        assert!(entries[0]["seq"].is_null() && entries[0]["hash"].is_null() && entries[0]["id"].is_i64(), "{}", entries[0]);
        let report = audit::verify(&app.db).await.unwrap();
        assert_eq!((report.ok(), report.rows_checked, report.unsealed), (true, 0, 3), "{report:?}");
        audit::seal(&app.state.db).await.unwrap();
        let report = audit::verify(&app.db).await.unwrap();
        assert!(report.ok(), "{report:?}");
        assert_eq!((report.rows_checked, report.unsealed), (3, 0));
        let (_, page) = app.operator(Method::GET, "/api/audit?limit=1", None).await;
        assert_eq!(page["entries"][0]["seq"], 3);
        assert_eq!(page["entries"][0]["hash"].as_str().unwrap().len(), 64);
    }

    async fn the_database_refuses_to_update_or_delete_audit_rows(app) {
        record_three(&app).await;
        let update = secur360::on_db!(&app.db, p => sqlx::query("UPDATE system_audit_logs SET actor = 'x'").execute(p).await.map(|_| ()));
        assert!(update.is_err());
        let delete = secur360::on_db!(&app.db, p => sqlx::query("DELETE FROM system_audit_logs").execute(p).await.map(|_| ()));
        assert!(delete.is_err());
        assert_eq!(app.count("system_audit_logs").await, 3);
        // A sealed row cannot be sealed again.
        let reseal = secur360::on_db!(&app.db, p => sqlx::query("UPDATE system_audit_logs SET seq = 9, prev_hash = hash WHERE seq = 3").execute(p).await.map(|_| ()));
        assert!(reseal.is_err());
        // Sealing is the only update an unsealed row takes: nothing else may change with it.
        audit::record(&app.db, &Entry::new(Zone::Admin, "login", "tests"), 2_000).await.unwrap();
        let sneak = secur360::on_db!(&app.db, p => sqlx::query("UPDATE system_audit_logs SET seq = 4, prev_hash = 'x', hash = 'y', actor = 'x' WHERE seq IS NULL").execute(p).await.map(|_| ()));
        assert!(sneak.is_err());
        let content = secur360::on_db!(&app.db, p => sqlx::query("UPDATE system_audit_logs SET actor = 'x' WHERE seq IS NULL").execute(p).await.map(|_| ()));
        assert!(content.is_err());
        if app.backend == Backend::Postgres {
            // The runtime role may touch only the seal columns.
            let runtime = secur360::on_db!(&app.state.db, p => sqlx::query("UPDATE system_audit_logs SET actor = 'x'").execute(p).await.map(|_| ()));
            assert!(runtime.is_err());
        }
        audit::seal(&app.state.db).await.unwrap();
        assert!(audit::verify(&app.db).await.unwrap().ok());
    }

    async fn verify_detects_a_modified_row(app) {
        record_three(&app).await;
        disable_protection(&app).await;
        app.exec("UPDATE system_audit_logs SET details = '{\"i\":9}' WHERE seq = 2").await;
        let report = audit::verify(&app.db).await.unwrap();
        assert!(!report.ok());
        assert!(report.problems.iter().any(|p| p.contains("row 2 was modified")), "{report:?}");
    }

    async fn verify_detects_a_deleted_row(app) {
        record_three(&app).await;
        disable_protection(&app).await;
        app.exec("DELETE FROM system_audit_logs WHERE seq = 2").await;
        let report = audit::verify(&app.db).await.unwrap();
        assert!(report.problems.iter().any(|p| p.contains("missing")), "{report:?}");
    }

    async fn verify_detects_a_rewritten_first_row(app) {
        record_three(&app).await;
        disable_protection(&app).await;
        app.exec("UPDATE system_audit_logs SET prev_hash = hash WHERE seq = 1").await;
        let report = audit::verify(&app.db).await.unwrap();
        assert!(!report.ok());
    }

    async fn the_retention_purge_removes_old_rows_and_the_rest_still_verifies(app) {
        record_three(&app).await;
        let deleted = audit::purge_before(&app.db, 1_002).await.unwrap();
        assert_eq!(deleted, 2);
        let report = audit::verify(&app.db).await.unwrap();
        assert!(report.ok(), "{report:?}");
        assert_eq!((report.first_seq, report.rows_checked), (Some(3), 1));
        // The gate closes again: a plain delete is still refused.
        let delete = secur360::on_db!(&app.db, p => sqlx::query("DELETE FROM system_audit_logs").execute(p).await.map(|_| ()));
        assert!(delete.is_err());
        // New rows keep chaining after a purge.
        audit::record(&app.db, &Entry::new(Zone::System, "cleanup", "tests"), 2_000).await.unwrap();
        audit::seal(&app.state.db).await.unwrap();
        let report = audit::verify(&app.db).await.unwrap();
        assert_eq!((report.ok(), report.first_seq, report.last_seq), (true, Some(3), Some(4)), "{report:?}");
    }

    async fn the_purge_leaves_unsealed_rows_for_the_sealer(app) {
        record_three(&app).await;
        // Old but not yet sealed: the purge cannot place it in the chain, so it keeps it.
        audit::record(&app.db, &Entry::new(Zone::System, "cleanup", "tests"), 500).await.unwrap();
        assert_eq!(audit::purge_before(&app.db, 1_002).await.unwrap(), 2);
        assert_eq!(app.count("system_audit_logs").await, 2);
        audit::seal(&app.state.db).await.unwrap();
        let report = audit::verify(&app.db).await.unwrap();
        assert_eq!((report.ok(), report.first_seq, report.last_seq, report.unsealed), (true, Some(3), Some(4), 0), "{report:?}");
        // Once sealed it is the head, which the purge always keeps; the next row lets it go.
        audit::record(&app.db, &Entry::new(Zone::System, "cleanup", "tests"), 3_000).await.unwrap();
        audit::seal(&app.state.db).await.unwrap();
        assert_eq!(audit::purge_before(&app.db, 2_000).await.unwrap(), 2);
        let report = audit::verify(&app.db).await.unwrap();
        assert_eq!((report.ok(), report.first_seq, report.rows_checked), (true, Some(5), 1), "{report:?}");
    }

    async fn the_purge_always_keeps_the_newest_row(app) {
        record_three(&app).await;
        assert_eq!(audit::purge_before(&app.db, i64::MAX).await.unwrap(), 2);
        let report = audit::verify(&app.db).await.unwrap();
        assert_eq!((report.first_seq, report.rows_checked, report.ok()), (Some(3), 1, true));
        // Numbering continues from the head instead of restarting at 1.
        audit::record(&app.db, &Entry::new(Zone::System, "cleanup", "tests"), 5_000).await.unwrap();
        assert_eq!(audit::seal(&app.state.db).await.unwrap().head_seq, Some(4));
    }

    async fn concurrent_appends_keep_one_unbroken_chain(app) {
        // Writers (several tasks, the service's runtime handle) and sealers run at the same time.
        let appends = (0..20).map(|i| {
            let db = app.state.db.clone();
            tokio::spawn(async move {
                audit::record(&db, &Entry::new(Zone::Sms, "send_sms", format!("w{i}")), i).await?;
                audit::seal(&db).await.map(|_| ())
            })
        });
        for r in futures::future::join_all(appends).await {
            r.unwrap().unwrap();
        }
        audit::seal(&app.state.db).await.unwrap();
        let report = audit::verify(&app.db).await.unwrap();
        assert!(report.ok(), "{report:?}");
        assert_eq!((report.rows_checked, report.first_seq, report.last_seq, report.unsealed), (20, Some(1), Some(20), 0));
    }

    async fn a_rolled_back_change_leaves_no_audit_row(app) {
        let mut tx = app.state.db.begin().await.unwrap();
        audit::append(&mut tx, &Entry::new(Zone::Admin, "login", "tests"), 1_000).await.unwrap();
        drop(tx);
        let mut tx = app.state.db.begin().await.unwrap();
        audit::append_many(&mut tx, &[Entry::new(Zone::Sms, "send_sms", "a"), Entry::new(Zone::Sms, "send_sms", "b")], 1_000).await.unwrap();
        drop(tx);
        assert_eq!(audit::seal(&app.state.db).await.unwrap().sealed, 0);
        assert_eq!(app.count("system_audit_logs").await, 0);
        let report = audit::verify(&app.db).await.unwrap();
        assert_eq!((report.ok(), report.rows_checked, report.unsealed), (true, 0, 0));
    }

    async fn append_many_writes_one_row_per_entry_in_the_callers_transaction(app) {
        // More rows than one INSERT chunk.
        let entries: Vec<Entry> = (0..250).map(|i| Entry::new(Zone::Sms, "send_sms", format!("w{i}")).tenant("acme")).collect();
        let mut tx = app.state.db.begin().await.unwrap();
        assert_eq!(audit::append_many(&mut tx, &entries, 1_000).await.unwrap(), 250);
        tx.commit().await.unwrap();
        let (_, page) = app.operator(Method::GET, "/api/audit?tenant_id=acme&limit=1", None).await;
        assert_eq!(page["entries"][0]["actor"], "w249");
        assert_eq!(audit::seal(&app.state.db).await.unwrap(), audit::SealReport { sealed: 250, head_seq: Some(250) });
        let report = audit::verify(&app.db).await.unwrap();
        assert_eq!((report.ok(), report.rows_checked), (true, 250), "{report:?}");
    }

    async fn a_backlog_of_several_batches_is_sealed_into_one_chain_in_insertion_order(app) {
        // 2,500 rows: three sealing transactions (1,000 per batch), each several UPDATE chunks.
        let entries: Vec<Entry> = (0..2_500).map(|i| Entry::new(Zone::Voice, "inbound_call", format!("c{i}"))).collect();
        let mut tx = app.state.db.begin().await.unwrap();
        audit::append_many(&mut tx, &entries, 1_000).await.unwrap();
        tx.commit().await.unwrap();
        assert_eq!(audit::seal(&app.state.db).await.unwrap(), audit::SealReport { sealed: 2_500, head_seq: Some(2_500) });
        let seqs = ids_and_seqs(&app).await;
        assert!(seqs.windows(2).all(|w| w[0].0 < w[1].0 && w[1].1 == w[0].1.map(|s| s + 1)), "sealed in id order");
        let report = audit::verify(&app.db).await.unwrap();
        assert_eq!((report.ok(), report.rows_checked, report.unsealed), (true, 2_500, 0), "{report:?}");
    }

    async fn rows_committed_during_or_after_a_seal_are_sealed_by_the_next_one(app) {
        record_three(&app).await;
        if app.backend == Backend::Postgres {
            // A transaction that wrote its row before another one but commits after it (SQLite writers are
            // serial, so there ids always follow commit order): its lower id is sealed by the later pass.
            let mut late = app.state.db.begin().await.unwrap();
            let late_id = audit::append(&mut late, &Entry::new(Zone::Admin, "late", "tests"), 2_000).await.unwrap();
            let early_id = audit::record(&app.state.db, &Entry::new(Zone::Admin, "early", "tests"), 2_001).await.unwrap();
            assert!(late_id < early_id);
            assert_eq!(audit::seal(&app.state.db).await.unwrap(), audit::SealReport { sealed: 1, head_seq: Some(4) });
            late.commit().await.unwrap();
            assert_eq!(audit::verify(&app.db).await.unwrap().unsealed, 1);
            assert_eq!(audit::seal(&app.state.db).await.unwrap(), audit::SealReport { sealed: 1, head_seq: Some(5) });
            let seqs = ids_and_seqs(&app).await;
            assert!(seqs.contains(&(late_id, Some(5))) && seqs.contains(&(early_id, Some(4))), "{seqs:?}");
        } else {
            audit::record(&app.state.db, &Entry::new(Zone::Admin, "later", "tests"), 2_000).await.unwrap();
            assert_eq!(audit::verify(&app.db).await.unwrap().unsealed, 1);
            assert_eq!(audit::seal(&app.state.db).await.unwrap(), audit::SealReport { sealed: 1, head_seq: Some(4) });
            audit::record(&app.state.db, &Entry::new(Zone::Admin, "latest", "tests"), 2_001).await.unwrap();
            assert_eq!(audit::seal(&app.state.db).await.unwrap(), audit::SealReport { sealed: 1, head_seq: Some(5) });
        }
        let report = audit::verify(&app.db).await.unwrap();
        assert!(report.ok() && report.unsealed == 0, "{report:?}");
        // A deletion inside the newly sealed part is detected as before.
        disable_protection(&app).await;
        app.exec("DELETE FROM system_audit_logs WHERE seq = 4").await;
        let report = audit::verify(&app.db).await.unwrap();
        assert!(report.problems.iter().any(|p| p.contains("missing")), "{report:?}");
    }

    async fn serves_sealer_seals_what_was_written_and_once_more_when_stopping(app) {
        audit::record(&app.state.db, &Entry::new(Zone::Admin, "login", "tests"), 1_000).await.unwrap();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let sealer = tokio::spawn(audit::run_sealer(app.state.db.clone(), stopped));
        stop.send(true).unwrap();
        sealer.await.unwrap();
        let report = audit::verify(&app.db).await.unwrap();
        assert_eq!((report.ok(), report.rows_checked, report.unsealed), (true, 1, 0), "{report:?}");
    }

    async fn the_status_warns_about_a_stale_unsealed_backlog(app) {
        let check = |r: &serde_json::Value| r["checks"].as_array().unwrap().iter().find(|c| c["name"] == "audit_chain").cloned().unwrap();
        let (_, r) = app.operator(Method::GET, "/api/system/status", None).await;
        assert_eq!(check(&r)["status"], "healthy", "{r}");
        audit::record(&app.state.db, &Entry::new(Zone::Admin, "login", "tests"), app.state.now() - 120_000).await.unwrap();
        let (_, r) = app.operator(Method::GET, "/api/system/status", None).await;
        let c = check(&r);
        assert_eq!((c["status"].as_str(), c["data"]["unsealed"].as_i64()), (Some("warning"), Some(1)), "{c}");
        audit::seal(&app.state.db).await.unwrap();
        let (_, r) = app.operator(Method::GET, "/api/system/status", None).await;
        assert_eq!(check(&r)["status"], "healthy", "{r}");
    }

    async fn two_instances_sealing_at_once_build_one_chain(app) {
        let other = app.another_instance().await;
        let mut work = Vec::new();
        for i in 0..40i64 {
            let db = if i % 2 == 0 { app.state.db.clone() } else { other.state.db.clone() };
            work.push(tokio::spawn(async move {
                audit::record(&db, &Entry::new(Zone::Stripe, "webhook_event", format!("e{i}")), i).await?;
                if i % 5 == 0 { audit::seal(&db).await.map(|_| ()) } else { Ok(()) }
            }));
        }
        for r in futures::future::join_all(work).await {
            r.unwrap().unwrap();
        }
        let (a, b) = tokio::join!(audit::seal(&app.state.db), audit::seal(&other.state.db));
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(a.head_seq.max(b.head_seq), Some(40), "{a:?} {b:?}");
        let seqs = ids_and_seqs(&app).await;
        let mut numbers: Vec<i64> = seqs.iter().map(|(_, s)| s.expect("every row sealed")).collect();
        numbers.sort_unstable();
        assert_eq!(numbers, (1..=40).collect::<Vec<_>>(), "each seq exactly once");
        let report = audit::verify(&app.db).await.unwrap();
        assert_eq!((report.ok(), report.rows_checked, report.unsealed), (true, 40, 0), "{report:?}");
    }

    async fn the_consent_ledger_is_append_only(app) {
        let key = app.tenant_with_key("acme").await;
        app.send(Method::POST, "/api/workers", Some(&key), Some(json!({"name": "J", "phone": "514 873 2015", "sms_consent": true}))).await;
        assert_eq!(app.count("consent_events").await, 1);
        let update = secur360::on_db!(&app.db, p => sqlx::query("UPDATE consent_events SET new_consent = FALSE").execute(p).await.map(|_| ()));
        let delete = secur360::on_db!(&app.db, p => sqlx::query("DELETE FROM consent_events").execute(p).await.map(|_| ()));
        assert!(update.is_err() && delete.is_err());
    }
}
