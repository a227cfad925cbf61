//! What Twilio brings in: inbound SMS (keywords, consent, forwarding) and voice calls.

pub mod call_log;
pub mod sms;
pub mod voice;
