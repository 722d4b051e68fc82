//! Loading: replaying `__consumer_offsets` (committed offsets, group metadata, tombstones)
//! into the coordinator's state, partition by partition.

use super::*;

impl Coordinator {
    // ------------------------------------------------------------------ loading

    /// Applies one replayed record of `__consumer_offsets` (in log order).
    pub fn replay(&mut self, key: &[u8], value: Option<&[u8]>, now: i64) {
        let n = self.loaded.len() as i32;
        let key = match records::decode_key(key) {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(error = %e, "skipping undecodable __consumer_offsets key");
                return;
            }
        };
        match (key, value) {
            (
                RecordKey::Offset {
                    group,
                    topic,
                    partition,
                },
                Some(v),
            ) => match records::decode_offset_value(v) {
                Ok(v) => {
                    let stored = self.next_write(v);
                    self.groups
                        .entry(group.clone())
                        .or_insert_with(|| Group::new(&group, group_partition(&group, n), now))
                        .offsets
                        .insert((topic, partition), stored);
                }
                Err(e) => tracing::warn!(error = %e, "skipping undecodable offset value"),
            },
            (
                RecordKey::Offset {
                    group,
                    topic,
                    partition,
                },
                None,
            ) => {
                if let Some(g) = self.groups.get_mut(&group) {
                    g.offsets.remove(&(topic, partition));
                }
            }
            (RecordKey::Group { group }, Some(v)) => match records::decode_group_value(v) {
                Ok(v) => {
                    let g = self
                        .groups
                        .entry(group.clone())
                        .or_insert_with(|| Group::new(&group, group_partition(&group, n), now));
                    // The group as last stored: Stable with its members and their
                    // assignments, or Empty. Restored members get a full session timeout
                    // from now to heartbeat again (with the same generation, so a
                    // coordinator restart causes no rebalance); the others expire.
                    g.generation = v.generation;
                    g.protocol_type = (!v.protocol_type.is_empty()).then_some(v.protocol_type);
                    g.state_since = if v.current_state_timestamp > 0 {
                        v.current_state_timestamp
                    } else {
                        now
                    };
                    g.members.clear();
                    g.static_members.clear();
                    g.pending.clear();
                    g.join_deadline = None;
                    g.initial_delay = false;
                    match v.protocol {
                        Some(protocol) if !v.members.is_empty() => {
                            for m in v.members {
                                if let Some(instance) = &m.group_instance_id {
                                    g.static_members
                                        .insert(instance.clone(), m.member_id.clone());
                                }
                                g.members.insert(
                                    m.member_id.clone(),
                                    Member {
                                        id: m.member_id,
                                        instance_id: m.group_instance_id,
                                        client_id: m.client_id,
                                        client_host: m.client_host,
                                        session_timeout_ms: m.session_timeout_ms,
                                        rebalance_timeout_ms: m.rebalance_timeout_ms,
                                        protocols: vec![(protocol.clone(), m.subscription)],
                                        assignment: m.assignment,
                                        join_waiter: None,
                                        sync_waiter: None,
                                        session_deadline: now + m.session_timeout_ms.max(0) as i64,
                                    },
                                );
                            }
                            g.leader = v
                                .leader
                                .filter(|l| g.members.contains_key(l))
                                .or_else(|| g.members.keys().next().cloned());
                            g.protocol = Some(protocol);
                            g.state = GroupState::Stable;
                        }
                        _ => {
                            g.protocol = None;
                            g.leader = None;
                            g.state = GroupState::Empty;
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "skipping undecodable group value"),
            },
            (RecordKey::Group { group }, None) => {
                self.groups.remove(&group);
            }
        }
    }

    /// Marks a partition loaded: its groups answer from now on.
    pub fn finish_loading(&mut self, partition: i32) {
        if let Some(l) = self.loaded.get_mut(partition as usize) {
            *l = true;
        }
    }

    pub fn is_loaded(&self) -> bool {
        self.loaded.iter().all(|l| *l)
    }

    /// Forgets a partition's groups, their pending transactional offsets and its loaded
    /// mark (in a cluster: this broker stopped leading it, or is about to replay it again
    /// as its new leader). Returns how many groups were dropped.
    pub fn unload_partition(&mut self, partition: i32) -> usize {
        if let Some(l) = self.loaded.get_mut(partition as usize) {
            *l = false;
        }
        let before = self.groups.len();
        self.groups.retain(|_, g| g.partition != partition);
        let n = self.loaded.len() as i32;
        for offsets in self.pending_txn.values_mut() {
            offsets.retain(|(group, _, _), _| group_partition(group, n) != partition);
        }
        self.pending_txn.retain(|_, offsets| !offsets.is_empty());
        before - self.groups.len()
    }
}
