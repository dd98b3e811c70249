//! The one retry loop of the roles: capped exponential backoff with jitter,
//! so processors and sinks that fail together do not retry in lockstep, and
//! a stop request ends the wait at once.

use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio_util::sync::CancellationToken;

/// How long to wait between attempts: from `first`, doubling up to `cap`,
/// each pause stretched by a random part of itself (so at most 2 x `cap`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub first: Duration,
    pub cap: Duration,
}

impl Backoff {
    /// For steps inside a role's batch loop (Redis calls, produces): short
    /// first pause, capped at 2 s so a recovered dependency is used soon.
    pub const STEP: Self = Self {
        first: Duration::from_millis(50),
        cap: Duration::from_secs(2),
    };

    /// The pauses, endless.
    pub fn pauses(self) -> impl Iterator<Item = Duration> {
        ExponentialBuilder::default()
            .with_min_delay(self.first)
            .with_max_delay(self.cap)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build()
    }
}

/// Runs `attempt` until it succeeds, pausing by `backoff` after each failure
/// (which `failed` hears of first). Returns `None`, without another attempt,
/// once `cancel` fires.
pub async fn retry_until<T, E, Fut>(
    cancel: &CancellationToken,
    backoff: Backoff,
    mut attempt: impl FnMut() -> Fut,
    mut failed: impl FnMut(&E),
) -> Option<T>
where
    Fut: Future<Output = Result<T, E>>,
{
    let mut pauses = backoff.pauses();
    loop {
        if cancel.is_cancelled() {
            return None;
        }
        match attempt().await {
            Ok(v) => return Some(v),
            Err(e) => failed(&e),
        }
        let pause = pauses.next().unwrap_or(backoff.cap);
        tokio::select! {
            _ = cancel.cancelled() => return None,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use tokio::time::Instant;

    #[test]
    fn pauses_double_from_the_first_are_capped_and_jittered() {
        let b = Backoff {
            first: Duration::from_millis(50),
            cap: Duration::from_millis(400),
        };
        let seen: Vec<Duration> = b.pauses().take(8).collect();
        // Jitter adds up to the pause itself: pause n lies in [d, 2d).
        let base = [50, 100, 200, 400, 400, 400, 400, 400];
        for (p, d) in seen.iter().zip(base) {
            let d = Duration::from_millis(d);
            assert!(
                *p >= d && *p < 2 * d,
                "pause {p:?} outside [{d:?}, {:?})",
                2 * d
            );
        }
        // Two loops that start together do not pause alike (lockstep).
        let other: Vec<Duration> = b.pauses().take(8).collect();
        assert_ne!(seen, other, "two backoffs gave the same pauses");
    }

    #[tokio::test(start_paused = true)]
    async fn retries_until_success_with_growing_pauses() {
        let calls = Cell::new(0);
        let failures = Cell::new(0);
        let start = Instant::now();
        let got = retry_until(
            &CancellationToken::new(),
            Backoff::STEP,
            || {
                calls.set(calls.get() + 1);
                let n = calls.get();
                async move {
                    if n < 4 {
                        Err("down")
                    } else {
                        Ok(n)
                    }
                }
            },
            |_: &&str| failures.set(failures.get() + 1),
        )
        .await;
        assert_eq!(got, Some(4));
        assert_eq!(failures.get(), 3);
        // Three pauses of at least 50 + 100 + 200 ms, at most twice that.
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(350), "{waited:?}");
        assert!(waited < Duration::from_millis(700), "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_ends_the_wait_and_no_attempt_follows() {
        let cancel = CancellationToken::new();
        let calls = Cell::new(0);
        let stopper = {
            let cancel = cancel.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                cancel.cancel();
            })
        };
        let got: Option<()> = retry_until(
            &cancel,
            Backoff {
                first: Duration::from_secs(60),
                cap: Duration::from_secs(60),
            },
            || {
                calls.set(calls.get() + 1);
                async { Err::<(), _>("down") }
            },
            |_| {},
        )
        .await;
        stopper.await.expect("stopper ran");
        assert_eq!(got, None);
        assert_eq!(calls.get(), 1, "cancelled while pausing: no second attempt");
    }
}
