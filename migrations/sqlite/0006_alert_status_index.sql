-- An alert's aggregate status depends only on which statuses its messages have: with (alert_id, status) it is
-- read by one index probe per status instead of a read of every message of the alert (10,000 rows for a large
-- alert, each time a batch of its callbacks is applied). Replaces sms_messages_alert (dropped by 0007; two
-- files as on PostgreSQL, where each statement needs its own).
CREATE INDEX sms_messages_alert_status ON sms_messages (alert_id, status);
