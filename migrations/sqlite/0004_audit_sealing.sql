-- Audit rows are written unsealed, in the transaction of the change they record (no chain lock, no read of the
-- chain's tail), and a sealer links them into the chain afterwards (src/audit.rs `seal`): `id` is the
-- insertion identity (assigned at insert, the order rows are listed and sealed in); `seq`, `prev_hash` and
-- `hash` stay NULL until the row is sealed, then are set once. Rows that existed before this migration were
-- sealed when written: they keep their seq, hash and link, and take id = seq.
-- SQLite cannot relax NOT NULL or change a primary key in place, hence the rebuild.
DROP TRIGGER system_audit_logs_no_update;
DROP TRIGGER system_audit_logs_no_delete;

CREATE TABLE system_audit_logs_sealed (
    id          INTEGER PRIMARY KEY AUTOINCREMENT CHECK (id > 0),
    seq         INTEGER UNIQUE CHECK (seq > 0),
    at          INTEGER NOT NULL,
    zone        TEXT NOT NULL CHECK (zone IN ('stripe', 'twilio', 'platform', 'database', 'dns', 'admin',
                  'billing', 'sms', 'voice', 'system')),
    action      TEXT NOT NULL,
    outcome     TEXT NOT NULL CHECK (outcome IN ('success', 'failure', 'info')),
    tenant_id   TEXT,
    actor       TEXT NOT NULL,
    subject     TEXT,
    details     TEXT NOT NULL,
    request_id  TEXT,
    prev_hash   TEXT,
    hash        TEXT UNIQUE,
    -- Sealed as a whole or not at all.
    CHECK ((seq IS NULL) = (prev_hash IS NULL) AND (seq IS NULL) = (hash IS NULL))
);
INSERT INTO system_audit_logs_sealed
    (id, seq, at, zone, action, outcome, tenant_id, actor, subject, details, request_id, prev_hash, hash)
    SELECT seq, seq, at, zone, action, outcome, tenant_id, actor, subject, details, request_id, prev_hash, hash
    FROM system_audit_logs ORDER BY seq;
DROP TABLE system_audit_logs;
ALTER TABLE system_audit_logs_sealed RENAME TO system_audit_logs;
CREATE INDEX system_audit_logs_at ON system_audit_logs (at);
CREATE INDEX system_audit_logs_zone ON system_audit_logs (zone, action, at);
CREATE INDEX system_audit_logs_tenant ON system_audit_logs (tenant_id, at);
-- The sealer's work list.
CREATE INDEX system_audit_logs_unsealed ON system_audit_logs (id) WHERE seq IS NULL;

-- The only UPDATE allowed is sealing: an unsealed row gets its seq, prev_hash and hash, nothing else changes. A
-- sealed row is never updated. DELETE stays behind the retention purge's gate.
CREATE TRIGGER system_audit_logs_no_update BEFORE UPDATE ON system_audit_logs
WHEN NOT (OLD.seq IS NULL AND NEW.seq IS NOT NULL AND NEW.id IS OLD.id AND NEW.at IS OLD.at
    AND NEW.zone IS OLD.zone AND NEW.action IS OLD.action AND NEW.outcome IS OLD.outcome
    AND NEW.tenant_id IS OLD.tenant_id AND NEW.actor IS OLD.actor AND NEW.subject IS OLD.subject
    AND NEW.details IS OLD.details AND NEW.request_id IS OLD.request_id)
BEGIN
    SELECT RAISE(ABORT, 'system_audit_logs is append-only (UPDATE refused)');
END;
CREATE TRIGGER system_audit_logs_no_delete BEFORE DELETE ON system_audit_logs
WHEN (SELECT open FROM audit_purge_gate WHERE id = 1) = 0
BEGIN
    SELECT RAISE(ABORT, 'system_audit_logs is append-only (DELETE refused)');
END;
