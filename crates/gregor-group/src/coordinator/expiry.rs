//! Time: the next deadline, session and rebalance timeouts, and offset retention.

use super::membership::{complete_join, remove_member_and_update, try_complete_join};
use super::*;

impl Coordinator {
    // --------------------------------------------------------------------- time

    /// The earliest time [`tick`](Self::tick) has something to do, if any.
    pub fn next_deadline(&self) -> Option<i64> {
        let mut next: Option<i64> = None;
        let mut consider = |t: i64| next = Some(next.map_or(t, |n: i64| n.min(t)));
        // Groups still being replayed are skipped by `tick`, so their deadlines must not wake it.
        for g in self
            .groups
            .values()
            .filter(|g| self.loaded[g.partition as usize])
        {
            if let Some(d) = g.join_deadline {
                consider(d);
            }
            for d in g.pending.values() {
                consider(*d);
            }
            for m in g.members.values() {
                if !m.is_waiting() {
                    consider(m.session_deadline);
                }
            }
        }
        if !self.groups.is_empty() {
            consider(self.next_retention_check);
        }
        next
    }

    /// Expires sessions and pending members, ends join phases whose time is up, and expires
    /// offsets of empty groups.
    pub fn tick(&mut self, now: i64, fx: &mut Effects) {
        let delay = self.config.initial_rebalance_delay_ms;
        for group in self.groups.values_mut() {
            if !self.loaded[group.partition as usize] {
                continue;
            }
            let expired_pending: Vec<String> = group
                .pending
                .iter()
                .filter(|(_, d)| **d <= now)
                .map(|(id, _)| id.clone())
                .collect();
            for id in expired_pending {
                tracing::debug!(group = %group.id, member = %id, "pending member expired");
                group.pending.remove(&id);
                if group.state == GroupState::PreparingRebalance && !group.initial_delay {
                    try_complete_join(group, now, fx);
                }
            }
            let expired: Vec<String> = group
                .members
                .values()
                .filter(|m| !m.is_waiting() && m.session_deadline <= now)
                .map(|m| m.id.clone())
                .collect();
            for id in expired {
                tracing::info!(group = %group.id, member = %id, "session timeout: member removed");
                remove_member_and_update(group, now, &id, delay, fx);
            }
            if let Some(deadline) = group.join_deadline {
                if deadline <= now && group.state == GroupState::PreparingRebalance {
                    if group.initial_delay && group.new_member_added {
                        let remaining = group.initial_delay_limit - now;
                        if remaining > 0 {
                            group.new_member_added = false;
                            group.join_deadline = Some(now + delay.min(remaining));
                            continue;
                        }
                    }
                    complete_join(group, now, fx);
                }
            }
        }
        if now >= self.next_retention_check {
            self.next_retention_check = now + self.config.retention_check_interval_ms.max(1);
            self.expire_offsets(now, fx);
        }
    }

    /// Removes offsets of empty groups older than `offsets.retention.minutes` (counted from
    /// the later of the commit and the moment the group became empty), then groups that are
    /// empty and have no offsets left.
    fn expire_offsets(&mut self, now: i64, fx: &mut Effects) {
        let retention = self.config.offsets_retention_ms;
        let n = self.loaded.len() as i32;
        let mut dead = Vec::new();
        for group in self.groups.values_mut() {
            if group.state != GroupState::Empty || !self.loaded[group.partition as usize] {
                continue;
            }
            let partition = group_partition(&group.id, n);
            let since = group.state_since;
            let expired: Vec<(String, i32)> = group
                .offsets
                .iter()
                .filter(|(_, c)| {
                    c.value
                        .commit_timestamp
                        .max(since)
                        .saturating_add(retention)
                        <= now
                })
                .map(|(k, _)| k.clone())
                .collect();
            for (t, p) in expired {
                group.unconfirmed.remove(&(t.clone(), p));
                group.offsets.remove(&(t.clone(), p));
                fx.records.push(OffsetsRecord {
                    partition,
                    key: records::offset_key(&group.id, &t, p),
                    value: None,
                });
            }
            if group.offsets.is_empty() && since.saturating_add(retention) <= now {
                dead.push((group.id.clone(), partition));
            }
        }
        for (id, partition) in dead {
            tracing::info!(group = %id, "empty group expired");
            self.groups.remove(&id);
            fx.records.push(OffsetsRecord {
                partition,
                key: records::group_key(&id),
                value: None,
            });
        }
    }
}
