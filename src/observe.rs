//! Prometheus metrics, rendered as text by `GET /metrics`.
//!
//! Two kinds, told apart by where they live:
//!
//! - Delivery attempts, counted in this process as the dispatcher makes them
//!   ([`attempt_recorded`]): `hookline_delivery_attempts_total{outcome}` and the
//!   `hookline_delivery_attempt_duration_seconds` histogram; and its attempt log's writes
//!   and the attempts' waits for them ([`attempt_log_written`], [`attempt_log_waited`]):
//!   the `hookline_attempt_log_write_seconds` and `hookline_attempt_log_wait_seconds`
//!   histograms. A process that runs only the dispatcher counts them too but has no
//!   endpoint that shows them.
//! - The delivery queue, read from the database at scrape time ([`Queue`]), so it is right
//!   however many dispatcher processes share the database: `hookline_queue_due_deliveries`,
//!   `hookline_queue_oldest_due_age_seconds` and `hookline_queue_in_flight_deliveries`.
//!
//! Everything is an aggregate over all marketplaces; nothing names a tenant.
//!
//! The recorder ([`metrics_exporter_prometheus`]) is installed once per process, by the
//! first call of any function here, and also becomes the global [`metrics`] recorder
//! unless another one was installed first (then only hookline's own metrics show here).

use std::fmt::Write as _;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metrics::{KeyName, Recorder, SharedString};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

/// Counter: delivery attempts, by `outcome` (`succeeded`, `retrying` or `failed`).
pub const ATTEMPTS: &str = "hookline_delivery_attempts_total";
/// Histogram: how long one attempt took, request to answer (or error).
pub const ATTEMPT_DURATION: &str = "hookline_delivery_attempt_duration_seconds";
/// Histogram: one write of the attempt log, one transaction for every attempt that finished
/// while the write before it ran. Its `_sum` grows by about a second a second when the
/// writer never rests: the database, not the receivers, then bounds deliveries a second,
/// and `hookline_delivery_attempts_total` over `_count` is the attempts per write.
pub const LOG_WRITE_DURATION: &str = "hookline_attempt_log_write_seconds";
/// Histogram: how long each attempt waited, once its answer was in, for its record to be
/// written. Its callback's attempt slot stays taken meanwhile (see the dispatcher).
pub const LOG_WAIT: &str = "hookline_attempt_log_wait_seconds";
/// Gauge: deliveries due now.
pub const QUEUE_DUE: &str = "hookline_queue_due_deliveries";
/// Gauge: how long the oldest due delivery has been due; 0 when none is.
pub const QUEUE_OLDEST_DUE_AGE: &str = "hookline_queue_oldest_due_age_seconds";
/// Gauge: deliveries being attempted (under a live lease).
pub const QUEUE_IN_FLIGHT: &str = "hookline_queue_in_flight_deliveries";

/// What an attempt can lead to (the dispatcher's `outcome`), each counted from 0.
const OUTCOMES: [&str; 3] = ["succeeded", "retrying", "failed"];

/// Upper bounds, in seconds, from 5 ms to 30 s (past the default 15 s request timeout).
const DURATION_BUCKETS: [f64; 13] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0,
];

/// Upper bounds, in seconds, from 1 ms to 10 s, for the attempt log's writes and waits.
const LOG_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Every histogram: its name, its buckets and its description.
const HISTOGRAMS: [(&str, &[f64], &str); 3] = [
    (
        ATTEMPT_DURATION,
        &DURATION_BUCKETS,
        "Duration of one delivery attempt, in seconds.",
    ),
    (
        LOG_WRITE_DURATION,
        &LOG_BUCKETS,
        "Duration of one write of the attempt log, in seconds.",
    ),
    (
        LOG_WAIT,
        &LOG_BUCKETS,
        "How long a finished attempt waited for its record to be written, in seconds.",
    ),
];

static RECORDER: OnceLock<Installed> = OnceLock::new();

struct Installed {
    recorder: &'static PrometheusRecorder,
    handle: PrometheusHandle,
}

/// Installs the recorder if this is the first call in the process; safe to call any
/// number of times, from any thread.
pub fn install() -> &'static PrometheusHandle {
    &installed().handle
}

fn installed() -> &'static Installed {
    RECORDER.get_or_init(|| {
        let mut builder = PrometheusBuilder::new();
        for (name, buckets, _) in HISTOGRAMS {
            builder = builder
                .set_buckets_for_metric(Matcher::Full(name.to_owned()), buckets)
                .expect("the bucket lists are not empty");
        }
        // Leaked once per process, so that it can be both kept here and the global recorder.
        let recorder: &'static PrometheusRecorder = Box::leak(Box::new(builder.build_recorder()));
        recorder.describe_counter(
            KeyName::from_const_str(ATTEMPTS),
            None,
            SharedString::const_str("Delivery attempts, by what became of the delivery."),
        );
        for (name, _, help) in HISTOGRAMS {
            recorder.describe_histogram(
                KeyName::from_const_str(name),
                None,
                SharedString::const_str(help),
            );
        }
        metrics::with_local_recorder(recorder, || {
            for outcome in OUTCOMES {
                metrics::counter!(ATTEMPTS, "outcome" => outcome).increment(0);
            }
            // Registered now, so their lines show before the first attempt.
            for (name, _, _) in HISTOGRAMS {
                let _ = metrics::histogram!(name);
            }
        });
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::info!(
                "another metrics recorder is global; /metrics shows hookline's own metrics only"
            );
        }
        Installed {
            recorder,
            handle: recorder.handle(),
        }
    })
}

/// Counts one delivery attempt with its outcome and duration.
pub fn attempt_recorded(outcome: &'static str, duration: Duration) {
    let installed = installed();
    metrics::with_local_recorder(installed.recorder, || {
        metrics::counter!(ATTEMPTS, "outcome" => outcome).increment(1);
        metrics::histogram!(ATTEMPT_DURATION).record(duration);
    });
    // Histogram samples wait in the recorder until a scrape or an upkeep folds them into
    // buckets. Without an exporter task nothing else does, so one upkeep every
    // `UPKEEP_EVERY` attempts keeps memory bounded in a process that is never scraped. (Each
    // upkeep goes through every histogram: run for every attempt, it was about 2 % of the
    // benchmark's CPU in perf.)
    const UPKEEP_EVERY: u64 = 1024;
    static COUNTED: AtomicU64 = AtomicU64::new(0);
    if COUNTED.fetch_add(1, Ordering::Relaxed) % UPKEEP_EVERY == UPKEEP_EVERY - 1 {
        installed.handle.run_upkeep();
    }
}

/// One write of the attempt log, and how long it took. Folded into its buckets by the
/// attempts' upkeep ([`attempt_recorded`]), as is [`attempt_log_waited`].
pub fn attempt_log_written(took: Duration) {
    metrics::with_local_recorder(installed().recorder, || {
        metrics::histogram!(LOG_WRITE_DURATION).record(took);
    });
}

/// How long one attempt waited for its record to be written.
pub fn attempt_log_waited(waited: Duration) {
    metrics::with_local_recorder(installed().recorder, || {
        metrics::histogram!(LOG_WAIT).record(waited);
    });
}

/// The delivery queue at scrape time, as [`crate::store::Db::queue_depth`] reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Queue {
    pub due: i64,
    /// `next_attempt_at` of the oldest due delivery (microseconds since the epoch).
    pub oldest_due_at: Option<i64>,
    pub in_flight: i64,
}

/// The Prometheus text exposition (version 0.0.4): this process's attempt metrics and the
/// queue's gauges as of `now` (microseconds since the epoch).
pub fn render(queue: &Queue, now: i64) -> String {
    let mut text = install().render();
    let age = queue
        .oldest_due_at
        .map_or(0.0, |at| now.saturating_sub(at).max(0) as f64 / 1e6);
    gauge(
        &mut text,
        QUEUE_DUE,
        "Deliveries due now and not being attempted.",
        queue.due as f64,
    );
    gauge(
        &mut text,
        QUEUE_OLDEST_DUE_AGE,
        "How long the oldest due delivery has been due, in seconds; 0 when none is.",
        age,
    );
    gauge(
        &mut text,
        QUEUE_IN_FLIGHT,
        "Deliveries being attempted now, by any dispatcher.",
        queue.in_flight as f64,
    );
    text
}

fn gauge(text: &mut String, name: &str, help: &str, value: f64) {
    // Writing to a String does not fail.
    let _ = write!(
        text,
        "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n\n"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histogram_and_gauges() {
        attempt_log_written(Duration::from_millis(3));
        attempt_log_waited(Duration::from_millis(4));
        attempt_recorded("succeeded", Duration::from_millis(12));
        let queue = Queue {
            due: 2,
            oldest_due_at: Some(1_000_000),
            in_flight: 1,
        };
        let text = render(&queue, 3_500_000);
        assert!(text.contains("hookline_delivery_attempts_total{outcome=\"failed\"}"));
        assert!(text.contains("hookline_delivery_attempt_duration_seconds_bucket{le=\"0.025\"}"));
        assert!(text.contains("hookline_delivery_attempt_duration_seconds_count"));
        assert!(text.contains("hookline_attempt_log_write_seconds_bucket{le=\"0.005\"}"));
        assert!(text.contains("hookline_attempt_log_wait_seconds_bucket{le=\"0.005\"}"));
        assert!(text.contains("\nhookline_queue_due_deliveries 2\n"));
        assert!(text.contains("\nhookline_queue_oldest_due_age_seconds 2.5\n"));
        assert!(text.contains("\nhookline_queue_in_flight_deliveries 1\n"));
        let none = render(
            &Queue {
                due: 0,
                oldest_due_at: None,
                in_flight: 0,
            },
            3_500_000,
        );
        assert!(none.contains("\nhookline_queue_oldest_due_age_seconds 0\n"));
    }
}
