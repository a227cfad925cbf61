-- SMS queue additions (identical in both backends).
-- The answer given to an alert request, replayed verbatim for a repeated Idempotency-Key (no bodies, masked phones).
ALTER TABLE sms_alerts ADD COLUMN response TEXT;
-- Operator test messages have no tenant; UNIQUE (tenant_id, idempotency_key) ignores NULL tenants, so their keys
-- get their own unique index.
CREATE UNIQUE INDEX sms_alerts_operator_idempotency ON sms_alerts (idempotency_key)
    WHERE tenant_id IS NULL AND idempotency_key IS NOT NULL;
-- Callbacks not applied yet are looked up by SID when the dispatcher records it.
CREATE INDEX sms_status_events_pending ON sms_status_events (twilio_sid, applied);
