-- secur360 initial schema (PostgreSQL). Keep in step with migrations/sqlite/0001_initial.sql:
-- same tables, columns and constraints; only types and trigger syntax differ.
-- Times are integer milliseconds since the Unix epoch (UTC), bound from Rust on both backends.

CREATE TABLE tenants (
    id          TEXT PRIMARY KEY CHECK (id ~ '^[a-z0-9][a-z0-9-]{1,62}$'),
    name        TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    province    TEXT NOT NULL,
    language    TEXT NOT NULL CHECK (language IN ('fr', 'en')),
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE sites (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name        TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    address     TEXT,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    UNIQUE (tenant_id, name)
);

CREATE TABLE api_keys (
    id            TEXT PRIMARY KEY,
    tenant_id     TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    label         TEXT NOT NULL,
    secret_hash   TEXT NOT NULL UNIQUE,
    created_at    BIGINT NOT NULL,
    last_used_at  BIGINT,
    revoked_at    BIGINT
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id);

CREATE TABLE admin_sessions (
    id            TEXT PRIMARY KEY,
    token_hash    TEXT NOT NULL UNIQUE,
    csrf_token    TEXT NOT NULL,
    language      TEXT NOT NULL DEFAULT 'fr' CHECK (language IN ('fr', 'en')),
    created_at    BIGINT NOT NULL,
    last_seen_at  BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL
);
CREATE INDEX admin_sessions_expires ON admin_sessions (expires_at);

CREATE TABLE workers (
    id                  TEXT PRIMARY KEY,
    tenant_id           TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    site_id             TEXT REFERENCES sites (id) ON DELETE SET NULL,
    name                TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    phone               TEXT NOT NULL CHECK (phone ~ '^\+[1-9][0-9]{6,14}$'),
    language            TEXT NOT NULL CHECK (language IN ('fr', 'en')),
    phone_verified      BOOLEAN NOT NULL DEFAULT FALSE,
    phone_verified_at   BIGINT,
    sms_consent         BOOLEAN NOT NULL DEFAULT FALSE,
    sms_consent_at      BIGINT,
    sms_consent_source  TEXT,
    created_at          BIGINT NOT NULL,
    updated_at          BIGINT NOT NULL,
    UNIQUE (tenant_id, phone)
);
CREATE INDEX workers_phone ON workers (phone);
CREATE INDEX workers_site ON workers (site_id);

-- Billing mirror (Stripe is the source of truth; rows keyed by Stripe ids).
CREATE TABLE customers (
    stripe_customer_id  TEXT PRIMARY KEY,
    tenant_id           TEXT NOT NULL UNIQUE REFERENCES tenants (id) ON DELETE RESTRICT,
    email               TEXT,
    name                TEXT,
    deleted             BOOLEAN NOT NULL DEFAULT FALSE,
    stripe_updated_at   BIGINT NOT NULL DEFAULT 0,
    created_at          BIGINT NOT NULL,
    updated_at          BIGINT NOT NULL
);

CREATE TABLE subscriptions (
    stripe_subscription_id  TEXT PRIMARY KEY,
    tenant_id               TEXT NOT NULL REFERENCES tenants (id) ON DELETE RESTRICT,
    stripe_customer_id      TEXT NOT NULL,
    status                  TEXT NOT NULL CHECK (status IN ('incomplete', 'incomplete_expired', 'trialing',
                              'active', 'past_due', 'canceled', 'unpaid', 'paused')),
    plan_interval           TEXT CHECK (plan_interval IN ('month', 'year')),
    base_price_id           TEXT,
    base_item_id            TEXT,
    addon_price_id          TEXT,
    addon_item_id           TEXT,
    addon_quantity          BIGINT NOT NULL DEFAULT 0 CHECK (addon_quantity >= 0),
    current_period_start    BIGINT,
    current_period_end      BIGINT,
    cancel_at_period_end    BOOLEAN NOT NULL DEFAULT FALSE,
    canceled_at             BIGINT,
    trial_end               BIGINT,
    past_due_since          BIGINT,
    stripe_created          BIGINT NOT NULL,
    stripe_updated_at       BIGINT NOT NULL DEFAULT 0,
    created_at              BIGINT NOT NULL,
    updated_at              BIGINT NOT NULL
);
CREATE INDEX subscriptions_tenant ON subscriptions (tenant_id, stripe_created);

CREATE TABLE invoices (
    stripe_invoice_id       TEXT PRIMARY KEY,
    tenant_id               TEXT NOT NULL REFERENCES tenants (id) ON DELETE RESTRICT,
    stripe_customer_id      TEXT NOT NULL,
    stripe_subscription_id  TEXT,
    status                  TEXT NOT NULL CHECK (status IN ('draft', 'open', 'paid', 'uncollectible', 'void', 'deleted')),
    currency                TEXT NOT NULL,
    amount_due              BIGINT NOT NULL,
    amount_paid             BIGINT NOT NULL,
    amount_remaining        BIGINT NOT NULL,
    subtotal                BIGINT NOT NULL,
    tax                     BIGINT NOT NULL DEFAULT 0,
    total                   BIGINT NOT NULL,
    hosted_invoice_url      TEXT,
    invoice_pdf             TEXT,
    attempt_count           BIGINT NOT NULL DEFAULT 0,
    period_start            BIGINT,
    period_end              BIGINT,
    stripe_created          BIGINT NOT NULL,
    stripe_updated_at       BIGINT NOT NULL DEFAULT 0,
    created_at              BIGINT NOT NULL,
    updated_at              BIGINT NOT NULL
);
CREATE INDEX invoices_tenant ON invoices (tenant_id, stripe_created);

CREATE TABLE billing_events (
    stripe_event_id    TEXT PRIMARY KEY,
    event_type         TEXT NOT NULL,
    object_id          TEXT,
    tenant_id          TEXT,
    stripe_created     BIGINT NOT NULL,
    livemode           BOOLEAN NOT NULL DEFAULT FALSE,
    payload            TEXT NOT NULL,
    source             TEXT NOT NULL CHECK (source IN ('webhook', 'sync', 'replay')),
    processing_status  TEXT NOT NULL CHECK (processing_status IN ('pending', 'processing', 'processed', 'failed', 'ignored')),
    attempts           BIGINT NOT NULL DEFAULT 0,
    last_error         TEXT,
    lease_until        BIGINT,
    next_attempt_at    BIGINT,
    received_at        BIGINT NOT NULL,
    processed_at       BIGINT
);
CREATE INDEX billing_events_status ON billing_events (processing_status, next_attempt_at);
CREATE INDEX billing_events_received ON billing_events (received_at);

-- SMS.
CREATE TABLE sms_alerts (
    id               TEXT PRIMARY KEY,
    tenant_id        TEXT REFERENCES tenants (id) ON DELETE CASCADE,
    kind             TEXT NOT NULL CHECK (kind IN ('lock_applied', 'lock_removed', 'general_alert', 'emergency',
                       'work_completion', 'test', 'forward', 'verification', 'missed_call')),
    body             TEXT,
    ast_id           TEXT,
    recipients_spec  TEXT NOT NULL,
    encoding         TEXT NOT NULL CHECK (encoding IN ('gsm7', 'ucs2')),
    segments         BIGINT NOT NULL,
    status           TEXT NOT NULL,
    idempotency_key  TEXT,
    request_hash     TEXT,
    created_by       TEXT NOT NULL,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    body_scrubbed_at BIGINT,
    UNIQUE (tenant_id, idempotency_key)
);
CREATE INDEX sms_alerts_tenant ON sms_alerts (tenant_id, created_at);

CREATE TABLE sms_messages (
    id                 TEXT PRIMARY KEY,
    alert_id           TEXT REFERENCES sms_alerts (id) ON DELETE CASCADE,
    tenant_id          TEXT REFERENCES tenants (id) ON DELETE CASCADE,
    worker_id          TEXT REFERENCES workers (id) ON DELETE SET NULL,
    kind               TEXT NOT NULL,
    priority           BIGINT NOT NULL DEFAULT 0,
    to_phone           TEXT NOT NULL,
    to_phone_masked    TEXT NOT NULL,
    body               TEXT,
    encoding           TEXT NOT NULL CHECK (encoding IN ('gsm7', 'ucs2')),
    segments           BIGINT NOT NULL,
    status             TEXT NOT NULL CHECK (status IN ('queued', 'sending', 'sent', 'delivered', 'undelivered',
                         'failed', 'simulated', 'skipped', 'canceled')),
    attempts           BIGINT NOT NULL DEFAULT 0,
    next_attempt_at    BIGINT NOT NULL,
    lease_until        BIGINT,
    lease_owner        TEXT,
    twilio_sid         TEXT UNIQUE,
    error_code         TEXT,
    error_message      TEXT,
    created_at         BIGINT NOT NULL,
    sent_at            BIGINT,
    status_updated_at  BIGINT NOT NULL,
    scrubbed_at        BIGINT
);
CREATE INDEX sms_messages_due ON sms_messages (status, priority DESC, next_attempt_at);
CREATE INDEX sms_messages_alert ON sms_messages (alert_id);
CREATE INDEX sms_messages_created ON sms_messages (created_at);

-- Every Twilio status callback as received; applied to sms_messages by SID (kept when the SID is not known yet).
CREATE TABLE sms_status_events (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    twilio_sid    TEXT NOT NULL,
    status        TEXT NOT NULL,
    error_code    TEXT,
    applied       BOOLEAN NOT NULL DEFAULT FALSE,
    received_at   BIGINT NOT NULL
);
CREATE INDEX sms_status_events_sid ON sms_status_events (twilio_sid);
CREATE INDEX sms_status_events_received ON sms_status_events (received_at);

CREATE TABLE sms_inbound (
    id                    TEXT PRIMARY KEY,
    twilio_message_sid    TEXT NOT NULL UNIQUE,
    from_phone            TEXT NOT NULL,
    to_phone              TEXT NOT NULL,
    body                  TEXT,
    keyword               TEXT,
    keyword_kind          TEXT CHECK (keyword_kind IN ('opt_out', 'opt_in', 'help')),
    forwarded_message_id  TEXT REFERENCES sms_messages (id) ON DELETE SET NULL,
    received_at           BIGINT NOT NULL,
    scrubbed_at           BIGINT
);
CREATE INDEX sms_inbound_received ON sms_inbound (received_at);

-- Append-only consent ledger (never purged).
CREATE TABLE consent_events (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id     TEXT,
    worker_id     TEXT,
    phone         TEXT NOT NULL,
    old_consent   BOOLEAN,
    new_consent   BOOLEAN NOT NULL,
    source        TEXT NOT NULL CHECK (source IN ('keyword', 'admin_api', 'carrier_21610', 'worker_registration',
                    'paper', 'operator')),
    evidence      TEXT NOT NULL,
    actor         TEXT NOT NULL,
    created_at    BIGINT NOT NULL
);
CREATE INDEX consent_events_worker ON consent_events (tenant_id, worker_id, created_at);
CREATE INDEX consent_events_phone ON consent_events (phone);

CREATE TABLE phone_verifications (
    id            TEXT PRIMARY KEY,
    tenant_id     TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    worker_id     TEXT NOT NULL REFERENCES workers (id) ON DELETE CASCADE,
    phone         TEXT NOT NULL,
    code_hash     TEXT NOT NULL,
    attempts      BIGINT NOT NULL DEFAULT 0,
    sends         BIGINT NOT NULL DEFAULT 1,
    last_sent_at  BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    verified_at   BIGINT,
    created_at    BIGINT NOT NULL
);
CREATE INDEX phone_verifications_worker ON phone_verifications (tenant_id, worker_id, created_at);

CREATE TABLE voice_calls (
    id                 TEXT PRIMARY KEY,
    twilio_call_sid    TEXT NOT NULL UNIQUE,
    from_phone         TEXT NOT NULL,
    to_phone           TEXT NOT NULL,
    status             TEXT NOT NULL,
    dial_status        TEXT,
    dial_duration      BIGINT,
    notified_message_id TEXT REFERENCES sms_messages (id) ON DELETE SET NULL,
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL,
    scrubbed_at        BIGINT
);

-- Per-tenant SMS rate-limit windows, shared by every instance.
CREATE TABLE rate_limits (
    tenant_id     TEXT NOT NULL,
    window_start  BIGINT NOT NULL,
    used          BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, window_start)
);

-- Jobs: one row per run; `occurrence` is unique so one instance runs each scheduled occurrence.
CREATE TABLE job_runs (
    id            TEXT PRIMARY KEY,
    job           TEXT NOT NULL CHECK (job IN ('billing_sync', 'sms_cleanup')),
    occurrence    TEXT NOT NULL,
    trigger       TEXT NOT NULL CHECK (trigger IN ('schedule', 'http', 'cli', 'admin')),
    instance      TEXT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('running', 'succeeded', 'partial', 'failed')),
    counts        TEXT,
    error         TEXT,
    started_at    BIGINT NOT NULL,
    lease_until   BIGINT NOT NULL,
    finished_at   BIGINT,
    UNIQUE (job, occurrence)
);
CREATE INDEX job_runs_job ON job_runs (job, started_at);

-- Keyed fingerprints of configuration variables from the previous start (never values).
CREATE TABLE config_fingerprints (
    name         TEXT PRIMARY KEY,
    fingerprint  TEXT NOT NULL,
    updated_at   BIGINT NOT NULL
);

-- Append-only, hash-chained audit log.
CREATE TABLE system_audit_logs (
    seq         BIGINT PRIMARY KEY CHECK (seq > 0),
    at          BIGINT NOT NULL,
    zone        TEXT NOT NULL CHECK (zone IN ('stripe', 'twilio', 'platform', 'database', 'dns', 'admin',
                  'billing', 'sms', 'voice', 'system')),
    action      TEXT NOT NULL,
    outcome     TEXT NOT NULL CHECK (outcome IN ('success', 'failure', 'info')),
    tenant_id   TEXT,
    actor       TEXT NOT NULL,
    subject     TEXT,
    details     TEXT NOT NULL,
    request_id  TEXT,
    prev_hash   TEXT NOT NULL,
    hash        TEXT NOT NULL UNIQUE
);
CREATE INDEX system_audit_logs_at ON system_audit_logs (at);
CREATE INDEX system_audit_logs_zone ON system_audit_logs (zone, action, at);
CREATE INDEX system_audit_logs_tenant ON system_audit_logs (tenant_id, at);

-- The audit log refuses UPDATE always, and DELETE except inside the retention purge, which sets
-- `secur360.audit_purge = 'on'` for its own transaction only (SET LOCAL).
CREATE FUNCTION secur360_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('secur360.audit_purge', true) = 'on' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'system_audit_logs is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;
CREATE TRIGGER system_audit_logs_append_only
    BEFORE UPDATE OR DELETE ON system_audit_logs
    FOR EACH ROW EXECUTE FUNCTION secur360_audit_append_only();
CREATE TRIGGER system_audit_logs_no_truncate
    BEFORE TRUNCATE ON system_audit_logs
    FOR EACH STATEMENT EXECUTE FUNCTION secur360_audit_append_only();

-- The consent ledger is append-only, full stop.
CREATE FUNCTION secur360_ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'consent_events is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;
CREATE TRIGGER consent_events_append_only
    BEFORE UPDATE OR DELETE ON consent_events
    FOR EACH ROW EXECUTE FUNCTION secur360_ledger_append_only();
