//! The group watchdog: a member that a coordinator leaves without a
//! partition, while some partition has no owner, leaves and rejoins.

use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use tokio_util::sync::CancellationToken;

use crate::KafkaConsumer;

static GROUP_REJOINS: std::sync::LazyLock<prometheus::IntCounterVec> =
    std::sync::LazyLock::new(|| {
        prometheus::register_int_counter_vec!(
            "seckill_group_rejoins_total",
            "Times a member left and rejoined its consumer group because the group \
             settled without giving it a partition although partitions were unowned",
            &["group"]
        )
        .expect("metric registered once")
    });

/// Keeps a group member from idling in a group that settled wrongly.
///
/// A coordinator can settle a generation in which this member holds no
/// partition while some partition has no owner, so its messages wait
/// forever. tansu 0.6 does this when the leader of the previous generation
/// died (SIGKILL) and is expelled between a follower's JoinGroup and its
/// SyncGroup: the follower's empty SyncGroup is taken as the leader's plan.
/// The member then leaves and rejoins the group, which makes it the leader
/// of a fresh generation.
///
/// Checks every half `session_timeout`, once the member has held nothing
/// for a whole session timeout (far longer than a rebalance takes). The
/// proof that a partition is unowned is its progress alone: it holds
/// messages past the group's committed offset, and that offset has not
/// moved since the previous check. The group is never described
/// (DescribeGroups): tansu 0.6's SQLite engine fails that request and
/// drops the connection, which cost the member its heartbeats and turned
/// one idle spell into a rebalance every few seconds. `probe` (a consumer
/// under the group's id that never joins it) reads the offsets, on its own
/// connection.
pub(crate) fn watch_assignment(
    consumer: std::sync::Arc<KafkaConsumer>,
    probe: KafkaConsumer,
    group: String,
    topic: String,
    session_timeout: Duration,
    cancel: CancellationToken,
) {
    let probe = std::sync::Arc::new(probe);
    tokio::spawn(async move {
        let (every, settle) = (session_timeout / 2, session_timeout);
        let mut empty_since: Option<std::time::Instant> = None;
        let mut previous: Option<GroupView> = None;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            if std::sync::Arc::strong_count(&consumer) == 1 {
                // The role let go of its consumer: it is done with the group.
                return;
            }
            let holds = consumer.assignment().map(|a| a.count() > 0).unwrap_or(true);
            if holds {
                (empty_since, previous) = (None, None);
                continue;
            }
            let since = *empty_since.get_or_insert_with(std::time::Instant::now);
            if since.elapsed() < settle {
                continue;
            }
            let look = {
                let (probe, topic) = (std::sync::Arc::clone(&probe), topic.clone());
                tokio::task::spawn_blocking(move || group_view(&probe, &topic)).await
            };
            let view = match look {
                Ok(Ok(view)) => view,
                Ok(Err(e)) => {
                    tracing::debug!(%group, error = %e, "could not read the group's progress");
                    continue;
                }
                Err(_) => continue,
            };
            if !view.stranded(previous.as_ref()) {
                tracing::debug!(%group, ?view, "member holds no partition; the group looks sound");
                previous = Some(view);
                continue;
            }
            tracing::warn!(
                %group, %topic, ?view,
                "the group settled without giving this member a partition although \
                 some partition has no owner; leaving and rejoining"
            );
            GROUP_REJOINS.with_label_values(&[group.as_str()]).inc();
            consumer.unsubscribe();
            if let Err(e) = consumer.subscribe(&[topic.as_str()]) {
                tracing::error!(%group, %topic, error = %e, "could not resubscribe");
            }
            (empty_since, previous) = (None, None);
        }
    });
}

/// A group's progress on its topic, as far as [`watch_assignment`] needs
/// it: per partition, (partition, the group's next offset to read (its
/// committed offset, else the low watermark), high watermark).
#[derive(Debug, Clone, PartialEq, Eq)]
struct GroupView {
    progress: Vec<(i32, i64, i64)>,
}

impl GroupView {
    /// Whether some partition has no owner, seen by a member that holds
    /// nothing; `before` is the previous view of the same idle spell.
    fn stranded(&self, before: Option<&GroupView>) -> bool {
        let Some(before) = before else {
            return false;
        };
        self.progress.iter().any(|&(partition, next, high)| {
            high > next
                && before
                    .progress
                    .iter()
                    .any(|&(p, was, _)| p == partition && was == next)
        })
    }
}

fn group_view(probe: &KafkaConsumer, topic: &str) -> Result<GroupView, KafkaError> {
    crate::progress::progress(probe, topic, Duration::from_secs(5))
        .map(|progress| GroupView { progress })
}

#[cfg(test)]
mod tests {
    use super::GroupView;

    fn view(progress: &[(i32, i64, i64)]) -> GroupView {
        GroupView {
            progress: progress.to_vec(),
        }
    }

    #[test]
    fn a_group_is_stranded_only_when_a_backlog_stands_still() {
        let first = view(&[(0, 10, 10), (1, 4, 9)]);
        // One look is not enough: the backlog may be moving.
        assert!(!first.stranded(None));
        // Partition 1 still waits at offset 4 with messages up to 9.
        assert!(view(&[(0, 10, 12), (1, 4, 9)]).stranded(Some(&first)));
        // Someone is reading partition 1: it is owned.
        assert!(!view(&[(0, 10, 10), (1, 7, 9)]).stranded(Some(&first)));
        // Nothing waits anywhere: nothing to rescue.
        let idle = view(&[(0, 10, 10), (1, 9, 9)]);
        assert!(!idle.stranded(Some(&idle)));
    }
}
