-- Status callbacks not applied yet are the only ones looked up by SID on the write path (the dispatcher applies
-- them as it records their SID; a callback batch checks for them), and they are few: normally none, since a
-- callback whose message is known is stored applied. A partial index holds just them, so storing an applied
-- callback no longer adds an entry to a (twilio_sid, applied) index of every callback, and the lookups read an
-- index that is nearly empty. Queries name the predicate as written here (`applied = FALSE`) so that both
-- planners match it. `sms_status_events_sid` stays for looking a message's callbacks up by SID.
DROP INDEX sms_status_events_pending;
CREATE INDEX sms_status_events_unapplied ON sms_status_events (twilio_sid) WHERE applied = FALSE;
