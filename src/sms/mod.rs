//! SMS through Twilio: queuing alerts and test messages, the dispatcher, the provider client, delivery status.

pub mod alerts;
pub mod dispatcher;
pub mod ingest;
pub mod status;
pub mod twilio;
