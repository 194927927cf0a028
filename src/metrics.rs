//! Metrics through the [`metrics`](https://docs.rs/metrics) facade (feature `metrics`, on by
//! default): the crate records, the application installs whatever recorder (exporter) it likes;
//! with none installed each call is a check of a global and nothing more. Every metric carries
//! the label `family`, the lock family's name (`LockConfig::name`).
//!
//! | metric | kind | labels | what |
//! |---|---|---|---|
//! | `amlock_acquire_wait_seconds` | histogram | `outcome` | how long each `Acquire` waited, from its arrival to its answer: `granted`, `timeout` (`AcquireTimeout`/`AcquireMaxRetries`), `unavailable`, `closing`, `error` |
//! | `amlock_grants_total` | counter | `via` (`lock`, `acquire`), `mode` (`exclusive`, `shared`) | grants handed to callers |
//! | `amlock_refusals_total` | counter | `mode` | `Lock`s refused because the resource is held |
//! | `amlock_hold_seconds` | histogram | `mode` | how long each hold granted here lasted, from its grant to its end here (unlock, loss, close) |
//! | `amlock_lease_lost_total` | counter | `reason` (`gone`, `unreachable`, `closing`, `revoked`) | keep-alive losses told to holders |
//! | `amlock_stream_up` | gauge | | 1 while the manager's change stream delivers, else 0 |
//! | `amlock_requests_total` | counter | `request` (`grant`, `release`, `renew`, `read_line`, ...) | requests sent to the database, by what they do |
//!
//! Without the feature every function here is empty and the `metrics` crate is not a
//! dependency.

use std::time::Duration;

use crate::messages::LostReason;

/// Labels a hold's mode.
pub(crate) fn mode(shared: bool) -> &'static str {
    if shared {
        "shared"
    } else {
        "exclusive"
    }
}

/// Labels a keep-alive loss.
pub(crate) fn reason(reason: LostReason) -> &'static str {
    match reason {
        LostReason::Gone => "gone",
        LostReason::Unreachable => "unreachable",
        LostReason::Closing => "closing",
        LostReason::Revoked => "revoked",
    }
}

#[cfg(feature = "metrics")]
mod record {
    use super::Duration;

    pub(crate) fn acquire_waited(family: &str, waited: Duration, outcome: &'static str) {
        metrics::histogram!("amlock_acquire_wait_seconds", "family" => family.to_owned(), "outcome" => outcome)
            .record(waited.as_secs_f64());
    }

    pub(crate) fn granted(family: &str, via: &'static str, mode: &'static str) {
        metrics::counter!("amlock_grants_total", "family" => family.to_owned(), "via" => via, "mode" => mode)
            .increment(1);
    }

    pub(crate) fn refused(family: &str, mode: &'static str) {
        metrics::counter!("amlock_refusals_total", "family" => family.to_owned(), "mode" => mode)
            .increment(1);
    }

    pub(crate) fn held(family: &str, held: Duration, mode: &'static str) {
        metrics::histogram!("amlock_hold_seconds", "family" => family.to_owned(), "mode" => mode)
            .record(held.as_secs_f64());
    }

    pub(crate) fn lease_lost(family: &str, reason: &'static str) {
        metrics::counter!("amlock_lease_lost_total", "family" => family.to_owned(), "reason" => reason)
            .increment(1);
    }

    pub(crate) fn stream_up(family: &str, up: bool) {
        metrics::gauge!("amlock_stream_up", "family" => family.to_owned()).set(if up {
            1.0
        } else {
            0.0
        });
    }

    pub(crate) fn request(family: &str, request: &'static str) {
        metrics::counter!("amlock_requests_total", "family" => family.to_owned(), "request" => request)
            .increment(1);
    }
}

#[cfg(not(feature = "metrics"))]
mod record {
    use super::Duration;

    pub(crate) fn acquire_waited(_: &str, _: Duration, _: &'static str) {}
    pub(crate) fn granted(_: &str, _: &'static str, _: &'static str) {}
    pub(crate) fn refused(_: &str, _: &'static str) {}
    pub(crate) fn held(_: &str, _: Duration, _: &'static str) {}
    pub(crate) fn lease_lost(_: &str, _: &'static str) {}
    pub(crate) fn stream_up(_: &str, _: bool) {}
    pub(crate) fn request(_: &str, _: &'static str) {}
}

pub(crate) use record::*;
