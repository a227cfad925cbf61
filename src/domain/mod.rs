//! Pure domain types and rules: no IO, unit-tested in place.

pub mod billing;
pub mod ids;
pub mod keywords;
pub mod phone;
pub mod sms_segments;
pub mod sms_status;
pub mod stripe_signature;
pub mod tenant;
pub mod twilio_form;
pub mod twilio_signature;
pub mod twiml;
