//! Access derived from billing (SPEC §2): never hand-edited.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// `active` / `trialing`.
    Full,
    /// `past_due`, within the grace period: full access with a banner.
    Grace,
    /// `unpaid`, `canceled`, `incomplete_expired`, no subscription, or past due beyond the grace period.
    Suspended,
}

/// Access for a subscription status (`None`: no subscription). `past_due_since` and `grace_ms` bound the grace.
pub fn access(status: Option<&str>, past_due_since: Option<i64>, now: i64, grace_ms: i64) -> Access {
    match status {
        Some("active" | "trialing") => Access::Full,
        Some("past_due") => match past_due_since {
            Some(since) if now - since > grace_ms => Access::Suspended,
            _ => Access::Grace,
        },
        _ => Access::Suspended,
    }
}

/// `max_sites = 1 + add-on quantity` while the subscription grants access; one site otherwise.
pub fn max_sites(access: Access, addon_quantity: i64) -> i64 {
    match access {
        Access::Full | Access::Grace => 1 + addon_quantity.max(0),
        Access::Suspended => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;

    #[test]
    fn statuses_map_to_access_as_the_spec_says() {
        let cases = [
            (Some("active"), Access::Full),
            (Some("trialing"), Access::Full),
            (Some("past_due"), Access::Grace),
            (Some("unpaid"), Access::Suspended),
            (Some("canceled"), Access::Suspended),
            (Some("incomplete_expired"), Access::Suspended),
            (Some("incomplete"), Access::Suspended),
            (Some("paused"), Access::Suspended),
            (None, Access::Suspended),
        ];
        for (status, want) in cases {
            assert_eq!(access(status, Some(0), DAY, 7 * DAY), want, "{status:?}");
        }
    }

    #[test]
    fn past_due_beyond_the_grace_period_is_suspended() {
        assert_eq!(access(Some("past_due"), Some(0), 7 * DAY, 7 * DAY), Access::Grace);
        assert_eq!(access(Some("past_due"), Some(0), 7 * DAY + 1, 7 * DAY), Access::Suspended);
    }

    #[test]
    fn the_add_on_counts_only_with_access() {
        assert_eq!(max_sites(Access::Full, 3), 4);
        assert_eq!(max_sites(Access::Grace, 2), 3);
        assert_eq!(max_sites(Access::Suspended, 3), 1);
        assert_eq!(max_sites(Access::Full, -1), 1);
    }
}
