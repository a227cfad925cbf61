-- no-transaction
-- Superseded by sms_messages_alert_status (0006), whose first column is the same: one index entry less per
-- message written. CONCURRENTLY: no lock that would stop message reads and writes.
DROP INDEX CONCURRENTLY IF EXISTS sms_messages_alert;
