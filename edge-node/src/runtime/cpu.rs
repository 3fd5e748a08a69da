//! CPU limits: a pod whose `resources.limits.cpu` is below one core gets
//! that share of one core over time, running at full speed for at most
//! `limit × WINDOW` (10 ms at 100m) before it is paused.
//!
//! The decision — how long a guest must pause, given the CPU time it used,
//! its limit and the wall time that passed — is [`CpuBudget::charge`], a
//! token bucket with no I/O. The shell around it is thin:
//!
//! - [`metered`] wraps the future that runs the guest and counts the wall
//!   time spent inside its `poll`. A guest only executes inside that poll
//!   (wasmtime runs it on a fiber the poll resumes), and a poll runs on one
//!   thread from start to end, so this is the time the guest held a thread:
//!   its own code, the host calls it makes, and nothing it spends waiting
//!   (a WASI sleep, or a pause imposed here, returns `Pending`).
//! - [`throttle`] installs an epoch-deadline callback that, at every epoch
//!   tick (10 ms), charges the time used since the last tick and yields to
//!   the executor — for a sleep of the returned length when the pod is over
//!   its budget, else as briefly as a pod without a limit does.
//!
//! Wall time inside a poll is CPU time unless the OS takes the thread away
//! meanwhile; on a node with more runnable threads than cores a pod is then
//! charged for time it did not run, and gets less than its limit, never more.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::{Store, UpdateDeadline};

/// The period over which a limit holds, as in the Linux CFS bandwidth
/// controller's default period: long enough that a 100m pod still runs a
/// whole epoch tick (10 ms, the finest a guest can be paused) per window,
/// short enough that a pod at its limit is never paused for long — at most
/// `WINDOW × (1 − limit)` after a tick of work. It is also the burst: a pod
/// that was idle may run `limit × WINDOW` at full speed before it is paused.
const WINDOW: Duration = Duration::from_millis(100);

/// Millicores of one core: a guest runs on one thread at a time, so a limit
/// of this much or more can never be reached and is not enforced.
const ONE_CORE: u64 = 1000;

/// A pod's CPU allowance: a token bucket, in nanoseconds of CPU time, that
/// fills at `millicores / 1000` of wall time and holds at most
/// `limit × WINDOW`. Running drains it; a guest that drives it below zero
/// pauses until it is back at zero. Debt carries over, so a guest that
/// overshoots by most of a tick pays for it with a longer pause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct CpuBudget {
    millicores: u64,
    /// CPU time the guest may still use at once; negative while it owes.
    balance: i64,
    /// The most `balance` can hold: `limit × WINDOW`.
    burst: i64,
}

impl CpuBudget {
    /// A full budget for a limit of `millicores`, or `None` when the limit
    /// changes nothing: `0` means no limit (as in Kubernetes, where a zero
    /// CPU limit sets no quota), and a guest cannot use more than one core.
    pub(super) fn new(millicores: u64) -> Option<CpuBudget> {
        if millicores == 0 || millicores >= ONE_CORE {
            return None;
        }
        let burst = nanos(WINDOW.as_nanos() * u128::from(millicores) / u128::from(ONE_CORE));
        Some(CpuBudget {
            millicores,
            balance: burst,
            burst,
        })
    }

    /// Charges `used` CPU time, `elapsed` wall time after the previous charge
    /// (or the start of the run), and returns how long the guest must now
    /// pause: zero while it is within its limit.
    pub(super) fn charge(&mut self, used: Duration, elapsed: Duration) -> Duration {
        let earned = nanos(elapsed.as_nanos() * u128::from(self.millicores) / u128::from(ONE_CORE));
        self.balance = self
            .balance
            .saturating_add(earned)
            .min(self.burst)
            .saturating_sub(nanos(used.as_nanos()));
        if self.balance >= 0 {
            return Duration::ZERO;
        }
        // The pause earns back exactly the debt (rounded up to a whole ns).
        let debt = u128::from(self.balance.unsigned_abs());
        let pause = (debt * u128::from(ONE_CORE)).div_ceil(u128::from(self.millicores));
        Duration::from_nanos(u64::try_from(pause).unwrap_or(u64::MAX))
    }
}

/// A nanosecond count as `i64`, saturating (i64 nanoseconds is 292 years).
fn nanos(n: u128) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The time a run has held a thread: the wall time inside the polls of its
/// future ([`metered`]). Shared between that future and the epoch callback,
/// which runs inside one of those polls, so the lock is never contended.
#[derive(Debug, Default)]
pub(super) struct Meter {
    state: Mutex<MeterState>,
}

#[derive(Debug, Default)]
struct MeterState {
    /// When the poll in progress began (or was last measured up to).
    polling_since: Option<Instant>,
    /// Time in polls not yet taken.
    used: Duration,
}

impl Meter {
    fn lock(&self) -> std::sync::MutexGuard<'_, MeterState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn poll_begins(&self, now: Instant) {
        self.lock().polling_since = Some(now);
    }

    fn poll_ends(&self, now: Instant) {
        let mut s = self.lock();
        if let Some(since) = s.polling_since.take() {
            s.used += now.saturating_duration_since(since);
        }
    }

    /// The time used since the last call, the poll in progress included.
    fn take(&self, now: Instant) -> Duration {
        let mut s = self.lock();
        let mut used = std::mem::take(&mut s.used);
        if let Some(since) = s.polling_since.as_mut() {
            used += now.saturating_duration_since(*since);
            *since = now;
        }
        used
    }
}

/// Runs `fut`, counting the time spent in its polls on `meter` if there is
/// one; without one, exactly `fut.await`.
pub(super) async fn metered<F: Future>(meter: Option<Arc<Meter>>, fut: F) -> F::Output {
    let Some(meter) = meter else {
        return fut.await;
    };
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(|cx| {
        meter.poll_begins(Instant::now());
        let polled = fut.as_mut().poll(cx);
        meter.poll_ends(Instant::now());
        polled
    })
    .await
}

/// Limits the run in `store` to `millicores` of one core: at every epoch
/// tick its use is charged against a [`CpuBudget`], and it yields to the
/// executor for the pause that asks for (or just yields, within budget).
/// Returns the [`Meter`] the run's future must be [`metered`] with, or
/// `None` when the limit changes nothing and nothing was installed.
pub(super) fn throttle<T>(store: &mut Store<T>, millicores: u64) -> Option<Arc<Meter>> {
    let mut budget = CpuBudget::new(millicores)?;
    let meter = Arc::new(Meter::default());
    let shared = meter.clone();
    let mut last = Instant::now();
    store.epoch_deadline_callback(move |_| {
        let now = Instant::now();
        let pause = budget.charge(shared.take(now), now.saturating_duration_since(last));
        last = now;
        Ok(if pause.is_zero() {
            UpdateDeadline::Yield(1)
        } else {
            UpdateDeadline::YieldCustom(1, Box::pin(tokio::time::sleep(pause)))
        })
    });
    Some(meter)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn limits_that_change_nothing_install_nothing() {
        for (millicores, limited) in [
            (0, false),
            (1, true),
            (100, true),
            (999, true),
            (1000, false),
            (4000, false),
        ] {
            assert_eq!(
                CpuBudget::new(millicores).is_some(),
                limited,
                "{millicores}m"
            );
        }
    }

    /// One charge: CPU used (ms), wall time elapsed (ms), the pause expected (µs).
    type Charge = (u64, u64, u64);

    /// Each case: what it shows, a limit in millicores, then its charges.
    #[test]
    fn pauses_by_table() {
        let cases: &[(&str, u64, &[Charge])] = &[
            (
                "a spinning 100m guest spends its 10 ms burst, then runs one tick in ten",
                100,
                &[
                    (10, 10, 0),
                    (10, 10, 90_000),
                    // Back after the 90 ms pause: one more tick, one more pause.
                    (10, 100, 90_000),
                    (10, 100, 90_000),
                ],
            ),
            (
                "a pause that overran is credited to the next one",
                100,
                &[(10, 10, 0), (10, 10, 90_000), (10, 105, 85_000)],
            ),
            (
                "a short tick (resumed just before the epoch moved) owes less",
                100,
                &[(10, 10, 0), (10, 10, 90_000), (2, 92, 18_000)],
            ),
            (
                "500m: nine ticks on its 50 ms burst, then a tick of pause per tick of work",
                500,
                &[
                    (10, 10, 0),
                    (10, 10, 0),
                    (10, 10, 0),
                    (10, 10, 0),
                    (10, 10, 0),
                    (10, 10, 0),
                    (10, 10, 0),
                    (10, 10, 0),
                    (10, 10, 0),
                    (10, 10, 10_000),
                    (10, 20, 10_000),
                ],
            ),
            (
                "250m: a tick then 30 ms off",
                250,
                &[(25, 25, 0), (10, 10, 30_000), (10, 40, 30_000)],
            ),
            (
                "a guest that mostly waits is never paused",
                100,
                &[(1, 1000, 0), (3, 500, 0), (5, 100, 0), (2, 20, 0)],
            ),
            (
                "idle time refills the burst, and no more",
                100,
                &[
                    (10, 10, 0),
                    (10, 10, 90_000),
                    (0, 10_000, 0),
                    (10, 10, 0),
                    (10, 10, 90_000),
                ],
            ),
            (
                "1m: a tick of work costs 9.9 s of pause",
                1,
                &[(10, 10, 9_900_000)],
            ),
            (
                "work done in one long host call is paid for afterwards",
                200,
                &[(1000, 1000, 4_900_000)],
            ),
        ];
        for (what, millicores, charges) in cases {
            let mut budget = CpuBudget::new(*millicores).expect("a limit");
            for (i, &(used, elapsed, pause_us)) in charges.iter().enumerate() {
                let pause =
                    budget.charge(Duration::from_millis(used), Duration::from_millis(elapsed));
                assert_eq!(
                    pause,
                    Duration::from_micros(pause_us),
                    "{what}: charge {i} ({used} ms used in {elapsed} ms)"
                );
            }
        }
    }

    /// A guest that never stops, run against the budget: slices of uneven
    /// length (the epoch tick lands anywhere in a slice) and pauses that
    /// overrun (timers fire late). Over a minute it gets its limit.
    #[test]
    fn a_spinning_guest_gets_its_limit() {
        for millicores in [1, 50, 100, 250, 500, 750, 999] {
            let mut budget = CpuBudget::new(millicores).expect("a limit");
            let (mut used, mut wall, mut pause) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
            let mut i: u64 = 0;
            while wall < Duration::from_secs(60) {
                i += 1;
                let slice = Duration::from_micros(3_000 + (i * 7_919) % 14_000);
                let late = if pause.is_zero() {
                    Duration::ZERO
                } else {
                    Duration::from_micros((i * 104_729) % 2_000)
                };
                let elapsed = pause + late + slice;
                used += slice;
                wall += elapsed;
                pause = budget.charge(slice, elapsed);
            }
            let share = used.as_secs_f64() / wall.as_secs_f64();
            let want = millicores as f64 / 1000.0;
            assert!(
                (share - want).abs() < want * 0.02 + 0.001,
                "{millicores}m: got {share:.4} of a core"
            );
        }
    }

    #[test]
    fn meter_counts_time_inside_polls_only() {
        let meter = Meter::default();
        let t0 = Instant::now();
        meter.poll_begins(t0);
        meter.poll_ends(t0 + 4 * MS);
        // Waiting between polls is not counted.
        meter.poll_begins(t0 + 100 * MS);
        // The epoch callback runs inside a poll: it gets the poll so far...
        assert_eq!(meter.take(t0 + 103 * MS), 7 * MS);
        // ...and the rest of that poll goes to the next take.
        meter.poll_ends(t0 + 105 * MS);
        assert_eq!(meter.take(t0 + 200 * MS), 2 * MS);
        assert_eq!(meter.take(t0 + 300 * MS), Duration::ZERO);
    }
}
