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

async fn record_three(app: &TestApp) {
    for (i, action) in ["login", "sync", "cleanup"].into_iter().enumerate() {
        let e = Entry::new(Zone::Admin, action, "tests").details(json!({ "i": i }));
        audit::record(&app.db, &e, 1_000 + i as i64).await.unwrap();
    }
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
        let report = audit::verify(&app.db).await.unwrap();
        assert!(report.ok(), "{report:?}");
        assert_eq!(report.rows_checked, 3);
    }

    async fn the_database_refuses_to_update_or_delete_audit_rows(app) {
        record_three(&app).await;
        let update = secur360::on_db!(&app.db, p => sqlx::query("UPDATE system_audit_logs SET actor = 'x'").execute(p).await.map(|_| ()));
        assert!(update.is_err());
        let delete = secur360::on_db!(&app.db, p => sqlx::query("DELETE FROM system_audit_logs").execute(p).await.map(|_| ()));
        assert!(delete.is_err());
        assert_eq!(app.count("system_audit_logs").await, 3);
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
        assert!(audit::verify(&app.db).await.unwrap().ok());
    }

    async fn the_purge_always_keeps_the_newest_row(app) {
        record_three(&app).await;
        assert_eq!(audit::purge_before(&app.db, i64::MAX).await.unwrap(), 2);
        let report = audit::verify(&app.db).await.unwrap();
        assert_eq!((report.first_seq, report.rows_checked, report.ok()), (Some(3), 1, true));
        // Numbering continues from the head instead of restarting at 1.
        assert_eq!(audit::record(&app.db, &Entry::new(Zone::System, "cleanup", "tests"), 5_000).await.unwrap(), 4);
    }

    async fn concurrent_appends_keep_one_unbroken_chain(app) {
        let appends = (0..20).map(|i| {
            let db = app.db.clone();
            tokio::spawn(async move { audit::record(&db, &Entry::new(Zone::Sms, "send_sms", format!("w{i}")), i).await })
        });
        for r in futures::future::join_all(appends).await {
            r.unwrap().unwrap();
        }
        let report = audit::verify(&app.db).await.unwrap();
        assert!(report.ok(), "{report:?}");
        assert_eq!(report.rows_checked, 20);
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
