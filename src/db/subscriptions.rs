//! The subscription mirror, as far as entitlements need it.

use super::Tx;
use crate::on_tx;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CurrentSubscription {
    pub stripe_subscription_id: String,
    pub status: String,
    pub addon_quantity: i64,
    pub past_due_since: Option<i64>,
}

/// The tenant's subscription that decides access: a live one if any (newest first), else the newest.
pub async fn current(tx: &mut Tx, tenant_id: &str) -> Result<Option<CurrentSubscription>, sqlx::Error> {
    on_tx!(tx, c => sqlx::query_as(
        "SELECT stripe_subscription_id, status, addon_quantity, past_due_since FROM subscriptions WHERE tenant_id = $1 \
         ORDER BY CASE WHEN status IN ('active', 'trialing', 'past_due') THEN 0 ELSE 1 END, stripe_created DESC LIMIT 1"
    ).bind(tenant_id).fetch_optional(&mut *c).await)
}
