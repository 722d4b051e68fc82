//! Group membership: JoinGroup, SyncGroup, Heartbeat, LeaveGroup and the rebalance they
//! drive (static members, protocol selection, join completion).

use super::*;

impl Coordinator {
    // ---------------------------------------------------------------- JoinGroup

    /// JoinGroup. The answer for `waiter` arrives in `fx.completions` (now or later).
    pub fn join_group(&mut self, now: i64, waiter: Waiter, req: JoinRequest, fx: &mut Effects) {
        let fail = |fx: &mut Effects, e: ResponseError| {
            fx.completions.push((
                waiter,
                Completion::Join(JoinResponse::error(e, &req.member_id)),
            ));
        };
        if !valid_group_id(&req.group_id, false) {
            return fail(fx, ResponseError::InvalidGroupId);
        }
        if let Err(e) = self.check_loaded(&req.group_id) {
            return fail(fx, e);
        }
        if req.session_timeout_ms < self.config.min_session_timeout_ms
            || req.session_timeout_ms > self.config.max_session_timeout_ms
        {
            return fail(fx, ResponseError::InvalidSessionTimeout);
        }
        if !self.groups.contains_key(&req.group_id) {
            if !req.member_id.is_empty() {
                return fail(fx, ResponseError::UnknownMemberId);
            }
            let partition = self.partition_for(&req.group_id);
            self.groups.insert(
                req.group_id.clone(),
                Group::new(&req.group_id, partition, now),
            );
        }
        let max_size = self.config.max_size;
        let delay = self.config.initial_rebalance_delay_ms;
        let group = self.groups.get_mut(&req.group_id).expect("inserted above");
        if group.state == GroupState::Dead {
            return fail(fx, ResponseError::CoordinatorNotAvailable);
        }
        if !group.supports(&req.protocol_type, &req.protocols) {
            return fail(fx, ResponseError::InconsistentGroupProtocol);
        }
        let known = group.members.contains_key(&req.member_id)
            || group.pending.contains_key(&req.member_id);
        if !known && group.size() >= max_size {
            return fail(fx, ResponseError::GroupMaxSizeReached);
        }

        if req.member_id.is_empty() {
            let prefix = req
                .group_instance_id
                .as_deref()
                .unwrap_or(req.client_id.as_str());
            let new_id = format!("{prefix}-{}", uuid::Uuid::new_v4());
            if let Some(instance) = req.group_instance_id.clone() {
                if let Some(old_id) = group.static_members.get(&instance).cloned() {
                    return replace_static_member(group, now, waiter, &req, old_id, new_id, fx);
                }
                return add_member_and_rebalance(group, now, waiter, &req, new_id, delay, fx);
            }
            if req.require_known_member_id {
                group
                    .pending
                    .insert(new_id.clone(), now + req.session_timeout_ms as i64);
                fx.completions.push((
                    waiter,
                    Completion::Join(JoinResponse::error(
                        ResponseError::MemberIdRequired,
                        &new_id,
                    )),
                ));
                return;
            }
            return add_member_and_rebalance(group, now, waiter, &req, new_id, delay, fx);
        }

        // A known member id.
        if group.pending.remove(&req.member_id).is_some() {
            let id = req.member_id.clone();
            return add_member_and_rebalance(group, now, waiter, &req, id, delay, fx);
        }
        if let Err(e) = check_static(group, &req.member_id, req.group_instance_id.as_deref()) {
            return fail(fx, e);
        }
        let Some(member) = group.members.get(&req.member_id) else {
            return fail(fx, ResponseError::UnknownMemberId);
        };
        let same = member.same_protocols(&req.protocols);
        let is_leader = group.leader.as_deref() == Some(req.member_id.as_str());
        match group.state {
            GroupState::PreparingRebalance => {
                update_member(group, now, waiter, &req, fx);
                try_complete_join(group, now, fx);
            }
            GroupState::CompletingRebalance if same => {
                // A lost JoinGroup response: answer with the current generation again.
                let resp = join_response_for(group, &req.member_id);
                fx.completions.push((waiter, Completion::Join(resp)));
            }
            GroupState::Stable if same && !is_leader => {
                let resp = join_response_for(group, &req.member_id);
                if let Some(m) = group.members.get_mut(&req.member_id) {
                    m.session_deadline = now + m.session_timeout_ms as i64;
                }
                fx.completions.push((waiter, Completion::Join(resp)));
            }
            GroupState::CompletingRebalance | GroupState::Stable => {
                update_member(group, now, waiter, &req, fx);
                prepare_rebalance(group, now, delay, fx);
            }
            GroupState::Empty | GroupState::Dead => fail(fx, ResponseError::UnknownMemberId),
        }
    }

    // ---------------------------------------------------------------- SyncGroup

    pub fn sync_group(&mut self, now: i64, waiter: Waiter, req: SyncRequest, fx: &mut Effects) {
        let fail = |fx: &mut Effects, e: ResponseError| {
            fx.completions
                .push((waiter, Completion::Sync(SyncResponse::error(e))));
        };
        if !valid_group_id(&req.group_id, false) {
            return fail(fx, ResponseError::InvalidGroupId);
        }
        if let Err(e) = self.check_loaded(&req.group_id) {
            return fail(fx, e);
        }
        let Some(group) = self.groups.get_mut(&req.group_id) else {
            return fail(fx, ResponseError::UnknownMemberId);
        };
        if let Err(e) = check_static(group, &req.member_id, req.group_instance_id.as_deref()) {
            return fail(fx, e);
        }
        if !group.members.contains_key(&req.member_id) {
            return fail(fx, ResponseError::UnknownMemberId);
        }
        if req.generation_id != group.generation {
            return fail(fx, ResponseError::IllegalGeneration);
        }
        if req
            .protocol_type
            .as_ref()
            .is_some_and(|t| Some(t) != group.protocol_type.as_ref())
            || req
                .protocol_name
                .as_ref()
                .is_some_and(|p| Some(p) != group.protocol.as_ref())
        {
            return fail(fx, ResponseError::InconsistentGroupProtocol);
        }
        match group.state {
            GroupState::Empty | GroupState::Dead => fail(fx, ResponseError::UnknownMemberId),
            GroupState::PreparingRebalance => fail(fx, ResponseError::RebalanceInProgress),
            GroupState::CompletingRebalance => {
                let member = group.members.get_mut(&req.member_id).expect("checked");
                if let Some(old) = member.sync_waiter.replace(waiter) {
                    fx.completions.push((
                        old,
                        Completion::Sync(SyncResponse::error(ResponseError::RebalanceInProgress)),
                    ));
                }
                member.session_deadline = now + member.session_timeout_ms as i64;
                if group.leader.as_deref() == Some(req.member_id.as_str()) {
                    let mut given: HashMap<String, Bytes> = req.assignments.into_iter().collect();
                    for m in group.members.values_mut() {
                        m.assignment = given.remove(&m.id).unwrap_or_default();
                    }
                    fx.records.push(OffsetsRecord {
                        partition: group.partition,
                        key: records::group_key(&group.id),
                        value: Some(records::group_value(&group.metadata_value())),
                    });
                    group.transition(GroupState::Stable, now);
                    let (pt, pn) = (group.protocol_type.clone(), group.protocol.clone());
                    for m in group.members.values_mut() {
                        if let Some(w) = m.sync_waiter.take() {
                            fx.completions.push((
                                w,
                                Completion::Sync(SyncResponse {
                                    error: 0,
                                    protocol_type: pt.clone(),
                                    protocol_name: pn.clone(),
                                    assignment: m.assignment.clone(),
                                }),
                            ));
                        }
                    }
                }
            }
            GroupState::Stable => {
                let member = group.members.get_mut(&req.member_id).expect("checked");
                member.session_deadline = now + member.session_timeout_ms as i64;
                let resp = SyncResponse {
                    error: 0,
                    protocol_type: group.protocol_type.clone(),
                    protocol_name: group.protocol.clone(),
                    assignment: member.assignment.clone(),
                };
                fx.completions.push((waiter, Completion::Sync(resp)));
            }
        }
    }

    // ---------------------------------------------------------------- Heartbeat

    pub fn heartbeat(
        &mut self,
        now: i64,
        group_id: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> i16 {
        if !valid_group_id(group_id, false) {
            return code(ResponseError::InvalidGroupId);
        }
        if let Err(e) = self.check_loaded(group_id) {
            return code(e);
        }
        let Some(group) = self.groups.get_mut(group_id) else {
            return code(ResponseError::UnknownMemberId);
        };
        if let Err(e) = check_static(group, member_id, instance_id) {
            return code(e);
        }
        let state = group.state;
        let current = group.generation;
        let Some(member) = group.members.get_mut(member_id) else {
            return code(ResponseError::UnknownMemberId);
        };
        if generation != current {
            return code(ResponseError::IllegalGeneration);
        }
        member.session_deadline = now + member.session_timeout_ms as i64;
        match state {
            GroupState::Empty | GroupState::Dead => code(ResponseError::UnknownMemberId),
            GroupState::PreparingRebalance => code(ResponseError::RebalanceInProgress),
            GroupState::CompletingRebalance | GroupState::Stable => 0,
        }
    }

    // --------------------------------------------------------------- LeaveGroup

    /// LeaveGroup for `(member_id, group_instance_id)` pairs. `Err` is a group-level error;
    /// `Ok` has one code per member, in request order.
    pub fn leave_group(
        &mut self,
        now: i64,
        group_id: &str,
        members: &[(String, Option<String>)],
        fx: &mut Effects,
    ) -> Result<Vec<i16>, ResponseError> {
        if !valid_group_id(group_id, false) {
            return Err(ResponseError::InvalidGroupId);
        }
        self.check_loaded(group_id)?;
        let delay = self.config.initial_rebalance_delay_ms;
        let Some(group) = self.groups.get_mut(group_id) else {
            return Ok(vec![code(ResponseError::UnknownMemberId); members.len()]);
        };
        let mut codes = Vec::with_capacity(members.len());
        for (member_id, instance_id) in members {
            let id = match instance_id {
                Some(instance) => match group.static_members.get(instance) {
                    None => {
                        codes.push(code(ResponseError::UnknownMemberId));
                        continue;
                    }
                    Some(registered) if !member_id.is_empty() && registered != member_id => {
                        codes.push(code(ResponseError::FencedInstanceId));
                        continue;
                    }
                    Some(registered) => registered.clone(),
                },
                None => member_id.clone(),
            };
            if group.pending.remove(&id).is_some() {
                codes.push(0);
                if group.state == GroupState::PreparingRebalance {
                    try_complete_join(group, now, fx);
                }
                continue;
            }
            if !group.members.contains_key(&id) {
                codes.push(code(ResponseError::UnknownMemberId));
                continue;
            }
            tracing::debug!(group = %group_id, member = %id, "member left");
            remove_member_and_update(group, now, &id, delay, fx);
            codes.push(0);
        }
        Ok(codes)
    }
}

/// FENCED_INSTANCE_ID if `instance_id` is registered to another member id.
pub(super) fn check_static(
    group: &Group,
    member_id: &str,
    instance_id: Option<&str>,
) -> Result<(), ResponseError> {
    if let Some(instance) = instance_id {
        match group.static_members.get(instance) {
            Some(registered) if registered != member_id => {
                return Err(ResponseError::FencedInstanceId)
            }
            None if group.members.contains_key(member_id) => {
                return Err(ResponseError::FencedInstanceId)
            }
            _ => {}
        }
    }
    Ok(())
}

/// The JoinGroup answer for `member_id` in the current generation.
pub(super) fn join_response_for(group: &Group, member_id: &str) -> JoinResponse {
    let leader = group.leader.clone().unwrap_or_default();
    let protocol = group.protocol.clone().unwrap_or_default();
    let members = if leader == member_id {
        group
            .members
            .values()
            .map(|m| JoinedMember {
                member_id: m.id.clone(),
                group_instance_id: m.instance_id.clone(),
                metadata: m.metadata(&protocol),
            })
            .collect()
    } else {
        vec![]
    };
    JoinResponse {
        error: 0,
        generation_id: group.generation,
        protocol_type: group.protocol_type.clone(),
        protocol_name: group.protocol.clone(),
        leader,
        member_id: member_id.to_string(),
        members,
    }
}

pub(super) fn add_member_and_rebalance(
    group: &mut Group,
    now: i64,
    waiter: Waiter,
    req: &JoinRequest,
    id: String,
    delay: i64,
    fx: &mut Effects,
) {
    if group.members.is_empty() {
        group.protocol_type = Some(req.protocol_type.clone());
    }
    if let Some(instance) = &req.group_instance_id {
        group.static_members.insert(instance.clone(), id.clone());
    }
    tracing::debug!(group = %group.id, member = %id, "member joined");
    group.members.insert(
        id.clone(),
        Member {
            id: id.clone(),
            instance_id: req.group_instance_id.clone(),
            client_id: req.client_id.clone(),
            client_host: req.client_host.clone(),
            session_timeout_ms: req.session_timeout_ms,
            rebalance_timeout_ms: req.rebalance_timeout_ms,
            protocols: req.protocols.clone(),
            assignment: Bytes::new(),
            join_waiter: Some(waiter),
            sync_waiter: None,
            session_deadline: now + req.session_timeout_ms as i64,
        },
    );
    if group.leader.is_none() {
        group.leader = Some(id);
    }
    group.new_member_added = true;
    if group.state == GroupState::PreparingRebalance {
        if !group.initial_delay {
            try_complete_join(group, now, fx);
        }
    } else {
        prepare_rebalance(group, now, delay, fx);
    }
}

pub(super) fn update_member(
    group: &mut Group,
    now: i64,
    waiter: Waiter,
    req: &JoinRequest,
    fx: &mut Effects,
) {
    let member = group
        .members
        .get_mut(&req.member_id)
        .expect("caller checked");
    member.protocols = req.protocols.clone();
    member.session_timeout_ms = req.session_timeout_ms;
    member.rebalance_timeout_ms = req.rebalance_timeout_ms;
    member.client_id = req.client_id.clone();
    member.client_host = req.client_host.clone();
    member.session_deadline = now + req.session_timeout_ms as i64;
    if let Some(old) = member.join_waiter.replace(waiter) {
        fx.completions.push((
            old,
            Completion::Join(JoinResponse::error(
                ResponseError::RebalanceInProgress,
                &req.member_id,
            )),
        ));
    }
}

/// A static member came back with a new member id (`group.instance.id` known).
pub(super) fn replace_static_member(
    group: &mut Group,
    now: i64,
    waiter: Waiter,
    req: &JoinRequest,
    old_id: String,
    new_id: String,
    fx: &mut Effects,
) {
    let Some(mut member) = group.members.shift_remove(&old_id) else {
        group
            .static_members
            .remove(req.group_instance_id.as_deref().unwrap_or_default());
        return add_member_and_rebalance(group, now, waiter, req, new_id, 0, fx);
    };
    // The old incarnation's waiting requests are fenced.
    if let Some(w) = member.join_waiter.take() {
        fx.completions.push((
            w,
            Completion::Join(JoinResponse::error(
                ResponseError::FencedInstanceId,
                &old_id,
            )),
        ));
    }
    if let Some(w) = member.sync_waiter.take() {
        fx.completions.push((
            w,
            Completion::Sync(SyncResponse::error(ResponseError::FencedInstanceId)),
        ));
    }
    let old_leader = group.leader.clone().unwrap_or_default();
    if group.leader.as_deref() == Some(old_id.as_str()) {
        group.leader = Some(new_id.clone());
    }
    let same = member.same_protocols(&req.protocols);
    member.id = new_id.clone();
    member.client_id = req.client_id.clone();
    member.client_host = req.client_host.clone();
    member.session_timeout_ms = req.session_timeout_ms;
    member.rebalance_timeout_ms = req.rebalance_timeout_ms;
    member.protocols = req.protocols.clone();
    member.session_deadline = now + req.session_timeout_ms as i64;
    group.members.insert(new_id.clone(), member);
    if let Some(instance) = &req.group_instance_id {
        group
            .static_members
            .insert(instance.clone(), new_id.clone());
    }
    tracing::info!(group = %group.id, old = %old_id, new = %new_id, state = ?group.state, "static member rejoined");
    match group.state {
        GroupState::Stable if same => {
            // No rebalance: the member keeps its assignment (it fetches it with SyncGroup).
            // The leader id returned is the old one, so a returning leader does not assign.
            let mut resp = join_response_for(group, &new_id);
            resp.leader = old_leader;
            resp.members.clear();
            fx.records.push(OffsetsRecord {
                partition: group.partition,
                key: records::group_key(&group.id),
                value: Some(records::group_value(&group.metadata_value())),
            });
            fx.completions.push((waiter, Completion::Join(resp)));
        }
        GroupState::PreparingRebalance => {
            let m = group.members.get_mut(&new_id).expect("inserted");
            m.join_waiter = Some(waiter);
            if !group.initial_delay {
                try_complete_join(group, now, fx);
            }
        }
        _ => {
            let m = group.members.get_mut(&new_id).expect("inserted");
            m.join_waiter = Some(waiter);
            prepare_rebalance(group, now, 0, fx);
        }
    }
}

/// Removes a member (left, expired) and moves the group on.
pub(super) fn remove_member_and_update(
    group: &mut Group,
    now: i64,
    id: &str,
    delay: i64,
    fx: &mut Effects,
) {
    let Some(mut member) = group.members.shift_remove(id) else {
        return;
    };
    if let Some(w) = member.join_waiter.take() {
        fx.completions.push((
            w,
            Completion::Join(JoinResponse::error(ResponseError::UnknownMemberId, id)),
        ));
    }
    if let Some(w) = member.sync_waiter.take() {
        fx.completions.push((
            w,
            Completion::Sync(SyncResponse::error(ResponseError::UnknownMemberId)),
        ));
    }
    if let Some(instance) = &member.instance_id {
        if group.static_members.get(instance).map(String::as_str) == Some(id) {
            group.static_members.remove(instance);
        }
    }
    if group.leader.as_deref() == Some(id) {
        group.leader = group.members.keys().next().cloned();
    }
    match group.state {
        GroupState::Stable | GroupState::CompletingRebalance => {
            prepare_rebalance(group, now, delay, fx)
        }
        GroupState::PreparingRebalance => {
            if !group.initial_delay || group.members.is_empty() {
                try_complete_join(group, now, fx)
            }
        }
        GroupState::Empty | GroupState::Dead => {}
    }
}

/// Starts a rebalance: members must rejoin within the largest rebalance timeout.
pub(super) fn prepare_rebalance(group: &mut Group, now: i64, delay: i64, fx: &mut Effects) {
    if group.state == GroupState::CompletingRebalance {
        for m in group.members.values_mut() {
            m.assignment = Bytes::new();
            if let Some(w) = m.sync_waiter.take() {
                fx.completions.push((
                    w,
                    Completion::Sync(SyncResponse::error(ResponseError::RebalanceInProgress)),
                ));
            }
        }
    }
    let timeout = group.max_rebalance_timeout();
    if group.state == GroupState::Empty && delay > 0 {
        group.initial_delay = true;
        group.initial_delay_limit = now + timeout;
        group.new_member_added = false;
        group.join_deadline = Some(now + delay.min(timeout));
        group.transition(GroupState::PreparingRebalance, now);
    } else {
        group.initial_delay = false;
        group.join_deadline = Some(now + timeout);
        group.transition(GroupState::PreparingRebalance, now);
        try_complete_join(group, now, fx);
    }
}

/// Ends the join phase early if every member has rejoined — except during the initial delay of
/// an empty group, which always runs its course (unless nobody is left).
pub(super) fn try_complete_join(group: &mut Group, now: i64, fx: &mut Effects) {
    let may_end = !group.initial_delay || group.members.is_empty();
    if group.state == GroupState::PreparingRebalance && may_end && group.all_joined() {
        complete_join(group, now, fx);
    }
}

/// Ends the join phase: members that did not rejoin are removed, the generation advances and
/// every joined member gets its JoinGroup answer (the leader with the member list).
pub(super) fn complete_join(group: &mut Group, now: i64, fx: &mut Effects) {
    let missing: Vec<String> = group
        .members
        .values()
        .filter(|m| m.join_waiter.is_none())
        .map(|m| m.id.clone())
        .collect();
    for id in missing {
        tracing::info!(group = %group.id, member = %id, "member did not rejoin in time: removed");
        if let Some(m) = group.members.shift_remove(&id) {
            if let Some(instance) = &m.instance_id {
                if group.static_members.get(instance) == Some(&id) {
                    group.static_members.remove(instance);
                }
            }
        }
    }
    group.join_deadline = None;
    group.initial_delay = false;
    group.generation = group.generation.saturating_add(1);
    if group.members.is_empty() {
        group.protocol = None;
        group.leader = None;
        group.transition(GroupState::Empty, now);
        fx.records.push(OffsetsRecord {
            partition: group.partition,
            key: records::group_key(&group.id),
            value: Some(records::group_value(&group.metadata_value())),
        });
        return;
    }
    group.protocol = group.select_protocol();
    if !group
        .leader
        .as_ref()
        .is_some_and(|l| group.members.contains_key(l))
    {
        group.leader = group.members.keys().next().cloned();
    }
    group.transition(GroupState::CompletingRebalance, now);
    let responses: Vec<(Waiter, JoinResponse)> = group
        .members
        .values()
        .filter_map(|m| m.join_waiter.map(|w| (w, join_response_for(group, &m.id))))
        .collect();
    for m in group.members.values_mut() {
        m.join_waiter = None;
        m.session_deadline = now + m.session_timeout_ms as i64;
    }
    tracing::info!(group = %group.id, generation = group.generation, members = group.members.len(), protocol = ?group.protocol, "rebalance: join phase complete");
    for (w, r) in responses {
        fx.completions.push((w, Completion::Join(r)));
    }
}
