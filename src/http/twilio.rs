//! Twilio webhooks for inbound SMS and voice (signed; see `twilio_webhook`).

use axum::extract::State;

use super::twilio_webhook::{TwiMl, TwilioForm};
use crate::error::ApiResult;
use crate::inbound;
use crate::state::AppState;

pub async fn sms_inbound(State(state): State<AppState>, form: TwilioForm) -> ApiResult<TwiMl> {
    Ok(TwiMl(inbound::sms::handle(&state, &form).await?.into()))
}

pub async fn voice_inbound(State(state): State<AppState>, form: TwilioForm) -> ApiResult<TwiMl> {
    Ok(TwiMl(inbound::voice::inbound(&state, &form).await?))
}

pub async fn voice_dial_status(State(state): State<AppState>, form: TwilioForm) -> ApiResult<TwiMl> {
    Ok(TwiMl(inbound::voice::dial_status(&state, &form).await?.into()))
}
