//! The connection pools: PostgreSQL's, with each session's settings and its plans made
//! again as it ages, and SQLite's, with its pragmas.

use std::time::Duration;

use sqlx::any::AnyPoolOptions;

/// The settings of the dispatcher's PostgreSQL sessions
/// ([`Db::for_dispatcher`](super::Db::for_dispatcher)).
///
/// A dispatcher prepares its statements in its first seconds, when a new database's tables
/// fill a few pages, and PostgreSQL keeps a generic plan made then for as long as the
/// connection stays busy ([`replan_now`] skips the steps that pass while a connection is
/// out). The claim and the attempt record are written so that every row they read can be
/// found by an index probe or its address (lateral subqueries, `= ANY(ARRAY(...))` of ids
/// or of row addresses; see `CLAIM` and `CLAIM_WITH_INPUTS` in `deliveries.rs` and `RECORD`
/// in `attempt_log.rs`), and with sequential scans off PostgreSQL plans them so: planned with them on, a claim scanned
/// every delivery to find the few it took, 15-25 ms a claim at 40,000 deliveries (README,
/// Benchmark). The other statements on these sessions read by id too, except
/// `due_callbacks` and `next_due`, which read every enabled callback by design (through an
/// index, with sequential scans off).
pub(super) const DISPATCH_SESSION: &str = "SET enable_seqscan = off";

/// The claims' session: [`DISPATCH_SESSION`]'s settings, and commits that do not wait for
/// the disk (see [`Db::fetch_unflushed`](super::Db::fetch_unflushed)).
pub(super) const UNFLUSHED_SESSION: &str = "SET enable_seqscan = off; SET synchronous_commit = off";

/// A PostgreSQL pool; each new connection runs `session` (settings), if any.
///
/// A connection idle for over a second is pinged before it is handed out; one used more
/// recently is not (sqlx pings every one by default: a round trip before each statement).
///
/// A connection's cached plans are dropped (`DISCARD PLANS`, its prepared statements stay)
/// as it grows older ([`replan_now`]). PostgreSQL keeps a prepared statement's generic plan,
/// made for the tables as they were, until the next `ANALYZE`, which autovacuum runs at most
/// once a minute; tables that grow from empty in that minute were read with plans for a few
/// rows. In the benchmark the attempts' fenced update hashed every due delivery for each
/// batch of 32, and PostgreSQL spent about a third more CPU per delivery (README, Benchmark).
pub(super) fn postgres_pool(connections: u32, session: &'static str) -> AnyPoolOptions {
    AnyPoolOptions::new()
        .max_connections(connections)
        .acquire_timeout(Duration::from_secs(10))
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if replan_now(meta.age, meta.idle_for) {
                    sqlx::raw_sql("DISCARD PLANS").execute(&mut *conn).await?;
                } else if meta.idle_for > Duration::from_secs(1) {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
        .after_connect(move |conn, _| {
            Box::pin(async move {
                nodelay::on_tcp_sockets();
                if !session.is_empty() {
                    sqlx::raw_sql(session).execute(conn).await?;
                }
                Ok(())
            })
        })
}

/// Whether a connection's plans are to be made again before this use: its age has passed
/// a step since it was last handed back (`idle_for` ago). The steps are 0.7 s, 1 s, 1.4 s,
/// 2 s, ..., each √2 times the last (a minute is the 13th, an hour the 25th), so a plan in
/// use at age t was made at t/√2 or later, but for a step passed while the connection was
/// out: that one is skipped, and a connection out at every step keeps its plans (hence
/// [`DISPATCH_SESSION`] for the dispatcher's). Each step costs each statement one plan made
/// again.
fn replan_now(age: Duration, idle_for: Duration) -> bool {
    let step = |d: Duration| (2.0 * d.as_secs_f64().max(0.5).log2()).floor() as i32;
    step(age) > step(age.saturating_sub(idle_for))
}

/// How long a SQLite connection is waited for before the wait fails.
pub(super) const SQLITE_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);

pub(super) fn sqlite_pool(connections: u32) -> AnyPoolOptions {
    AnyPoolOptions::new()
        .max_connections(connections)
        .acquire_timeout(SQLITE_ACQUIRE_TIMEOUT)
        // A connection to a local file does not go stale: no ping before each use.
        .test_before_acquire(false)
        .after_connect(|conn, _| {
            Box::pin(async move {
                // WAL lets readers run beside the writer; FULL sync keeps every commit
                // durable across power loss (money and attempt records must not vanish).
                sqlx::raw_sql(
                    "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                     PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000;",
                )
                .execute(conn)
                .await?;
                Ok(())
            })
        })
}

/// sqlx 0.9.0 leaves Nagle's algorithm on for its TCP connections (launchbadge/sqlx#4335,
/// fixed upstream after 0.9.0): a statement sent in more than one write then waits ~40 ms
/// for the server's delayed ACK, which made PostgreSQL 3.7x slower in the benchmark. Until
/// a release has the fix, each new PostgreSQL connection sets `TCP_NODELAY` on the process's
/// TCP sockets (the new one among them; HTTP sockets have it already). The connection's
/// TLS handshake, before this runs, still waits: 92 ms against 3.7 ms without TLS (README).
mod nodelay {
    #[cfg(target_os = "linux")]
    pub fn on_tcp_sockets() {
        use std::os::fd::{BorrowedFd, RawFd};
        let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
            return;
        };
        for fd in fds.flatten() {
            let Some(fd) = fd
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<RawFd>().ok())
            else {
                continue;
            };
            // SAFETY: the descriptor is only borrowed for one setsockopt call. Should another
            // thread close it meanwhile, the call fails (or, if the number was reused, sets
            // TCP_NODELAY on that socket, which is harmless); non-TCP descriptors refuse it.
            let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
            let _ = socket2::SockRef::from(&borrowed).set_tcp_nodelay(true);
        }
    }

    #[cfg(not(target_os = "linux"))]
    pub fn on_tcp_sockets() {}
}

#[cfg(test)]
mod tests {
    use super::replan_now;

    #[test]
    fn plans_are_made_again_at_each_step_of_a_connections_age() {
        let ms = std::time::Duration::from_millis;
        // (age, idle for): handed back at 0.95 s, 1.1 s, 1.3 s.
        assert!(replan_now(ms(1_050), ms(100)), "the 1 s step");
        assert!(
            !replan_now(ms(1_400), ms(300)),
            "no step between 1 s and 1.41 s"
        );
        assert!(replan_now(ms(1_500), ms(200)), "the 1.41 s step");
        // A step every √2 times the age: 25 in the first hour of a connection used every
        // 10 ms, 4 of them from its first minute to its fourth.
        let steps = |from: u64, to: u64| {
            (from / 10..to / 10)
                .filter(|i| replan_now(ms(i * 10 + 10), ms(10)))
                .count()
        };
        assert_eq!(steps(0, 3_600_000), 25);
        assert_eq!(steps(60_000, 240_000), 4);
        // A connection idle past a step is replanned when next taken, however long the
        // idle; a brand new one is not.
        assert!(replan_now(ms(100_000), ms(90_000)));
        assert!(!replan_now(ms(0), ms(0)));
    }
}
