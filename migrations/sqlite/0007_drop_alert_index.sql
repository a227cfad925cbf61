-- Superseded by sms_messages_alert_status (0006), whose first column is the same: one index entry less per
-- message written.
DROP INDEX IF EXISTS sms_messages_alert;
