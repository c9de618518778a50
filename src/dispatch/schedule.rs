//! The retry schedule: a pure function of the attempt number (the schedule itself lives
//! in the database as each delivery's `next_attempt_at`, so a restart loses no retry).
//!
//! After failed attempt `n` (1-based) the next comes after
//! `min(max_delay, initial * factor^(n-1))`, scaled by a random factor in
//! `[1 - jitter, 1 + jitter]` so that receivers that failed together are not retried
//! together. A delivery stops (status `failed`) after `max_attempts` attempts, or when the
//! next attempt would come later than `max_age` after the event.
//!
//! The default: 5 s, then x3 (15 s, 45 s, 2.3 min, 6.8 min, 20 min, 1 h, 3 h, 9 h), then
//! daily, for 16 attempts in all: about 6.6 days, inside the 7-day horizon Balanced kept.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub struct RetrySchedule {
    pub initial: Duration,
    pub factor: f64,
    pub max_delay: Duration,
    pub max_attempts: u32,
    pub max_age: Duration,
    /// 0.2 means +-20 %.
    pub jitter: f64,
    /// `Retry-After` on 429 and 503 is honoured, but never beyond this.
    pub retry_after_max: Duration,
}

impl Default for RetrySchedule {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(5),
            factor: 3.0,
            max_delay: Duration::from_secs(24 * 3600),
            max_attempts: 16,
            max_age: Duration::from_secs(7 * 24 * 3600),
            jitter: 0.2,
            retry_after_max: Duration::from_secs(3600),
        }
    }
}

impl RetrySchedule {
    /// The delay after failed attempt `attempt` (1-based), before jitter.
    pub fn base_delay(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(64) as i32;
        let secs = self.initial.as_secs_f64() * self.factor.max(1.0).powi(exponent);
        Duration::from_secs_f64(secs.min(self.max_delay.as_secs_f64()))
    }

    /// The delay after failed attempt `attempt`, with `unit` a random number in `[0, 1)`
    /// choosing the jitter.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let spread = self.jitter.clamp(0.0, 1.0);
        let scale = 1.0 - spread + 2.0 * spread * unit.clamp(0.0, 1.0);
        self.base_delay(attempt).mul_f64(scale)
    }

    /// When to try again after failed attempt `attempt` at `now_us`, for an event that
    /// occurred at `created_us`: `None` when no retry is left. `retry_after` (from a 429 or
    /// 503) replaces the computed delay, within `retry_after_max`.
    pub fn next_attempt(
        &self,
        attempt: u32,
        created_us: i64,
        now_us: i64,
        retry_after: Option<Duration>,
        unit: f64,
    ) -> Option<i64> {
        if attempt >= self.max_attempts {
            return None;
        }
        let delay = match retry_after {
            Some(asked) => asked.min(self.retry_after_max),
            None => self.delay(attempt, unit),
        };
        let next = now_us.saturating_add(delay.as_micros().min(i64::MAX as u128) as i64);
        let deadline =
            created_us.saturating_add(self.max_age.as_micros().min(i64::MAX as u128) as i64);
        (next <= deadline).then_some(next)
    }

    /// The whole schedule without jitter: the delay before each retry.
    pub fn delays(&self) -> Vec<Duration> {
        (1..self.max_attempts).map(|a| self.base_delay(a)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_schedule_grows_from_seconds_and_spans_about_a_week() {
        let s = RetrySchedule::default();
        let delays = s.delays();
        assert_eq!(delays.len(), 15, "16 attempts: the first and 15 retries");
        assert_eq!(delays[0], Duration::from_secs(5));
        assert_eq!(delays[1], Duration::from_secs(15));
        assert_eq!(
            delays[14],
            Duration::from_secs(24 * 3600),
            "capped at a day"
        );
        let total: Duration = delays.iter().sum();
        assert!(
            total > Duration::from_secs(6 * 24 * 3600) && total < s.max_age,
            "{total:?}"
        );
    }

    #[test]
    fn jitter_stays_within_its_bounds() {
        let s = RetrySchedule::default();
        assert_eq!(s.delay(3, 0.0), s.base_delay(3).mul_f64(0.8));
        assert_eq!(s.delay(3, 1.0), s.base_delay(3).mul_f64(1.2));
        assert_eq!(s.delay(3, 0.5), s.base_delay(3));
    }

    #[test]
    fn no_retry_after_the_last_attempt_or_beyond_the_maximum_age() {
        let s = RetrySchedule::default();
        assert_eq!(s.next_attempt(16, 0, 0, None, 0.5), None);
        assert_eq!(s.next_attempt(1, 0, 0, None, 0.5), Some(5_000_000));
        let almost_a_week = 7 * 24 * 3600 * 1_000_000 - 1_000_000;
        assert_eq!(s.next_attempt(2, 0, almost_a_week, None, 0.5), None);
    }

    #[test]
    fn retry_after_replaces_the_delay_within_bounds() {
        let s = RetrySchedule::default();
        assert_eq!(
            s.next_attempt(1, 0, 0, Some(Duration::from_secs(120)), 0.5),
            Some(120_000_000)
        );
        assert_eq!(
            s.next_attempt(1, 0, 0, Some(Duration::from_secs(86_400)), 0.5),
            Some(3_600_000_000)
        );
    }
}
