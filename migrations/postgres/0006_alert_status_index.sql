-- no-transaction
-- An alert's aggregate status depends only on which statuses its messages have: with (alert_id, status) it is
-- read by one index probe per status instead of a read of every message of the alert (10,000 rows for a large
-- alert, each time a batch of its callbacks is applied). Replaces sms_messages_alert (dropped by 0007).
--
-- Built CONCURRENTLY, outside a transaction, so that an upgrade does not stop message writes while a large
-- table is indexed (one statement per file: PostgreSQL runs the statements of one file in one transaction).
-- If this build is interrupted, PostgreSQL leaves an invalid index of this name and the next start-up fails
-- on it: README, runbook "An upgrade stopped while building an index".
CREATE INDEX CONCURRENTLY sms_messages_alert_status ON sms_messages (alert_id, status);
