//! Moving compositions on: a member's outcome is recorded, downstream nodes whose inputs
//! now exist get jobs, failures skip dependents and (fail-fast) cancel independent pending
//! members, and a composition finishes once every node is terminal.

use super::*;

impl Inner {
    /// Records a member's outcome and moves its composition on: downstream nodes whose
    /// inputs now exist get jobs; a failure or cancel skips dependents and, fail-fast,
    /// cancels independent pending members.
    pub(super) fn advance(
        self: &Arc<Self>,
        st: &mut State,
        comp_id: &str,
        node_id: &str,
        state: NodeState,
        result: Option<Value>,
        error: Option<JobError>,
    ) {
        let Some(entry) = st.compositions.get_mut(comp_id) else {
            return;
        };
        entry.run.record(node_id, state, result, error);
        match state {
            NodeState::Completed => self.start_ready(st, comp_id, Some(node_id)),
            NodeState::Failed | NodeState::Cancelled => {
                entry.run.skip_dependents(node_id);
                if state == NodeState::Failed
                    && entry.run.composition.fail_fast
                    && !entry.run.cancel_requested
                {
                    self.cancel_members(st, comp_id, false);
                }
            }
            _ => {}
        }
        self.maybe_finish(st, comp_id);
    }

    /// Moves a composition resumed from the journal on as if its nodes' outcomes had just
    /// arrived: failed and cancelled nodes skip their dependents (fail-fast: independent
    /// pending members are cancelled), ready nodes get jobs, and it finishes when nothing
    /// is left to run. One cancelled as a unit cancels what is left instead.
    pub(super) fn resume(self: &Arc<Self>, st: &mut State, comp_id: &str) {
        let Some(entry) = st.compositions.get_mut(comp_id) else {
            return;
        };
        let run = &mut entry.run;
        let stopped: Vec<String> = run
            .nodes
            .iter()
            .filter(|(_, n)| matches!(n.state, NodeState::Failed | NodeState::Cancelled))
            .map(|(id, _)| id.clone())
            .collect();
        for node in &stopped {
            run.skip_dependents(node);
        }
        let failed = run.nodes.values().any(|n| n.state == NodeState::Failed);
        if run.cancel_requested {
            self.cancel_members(st, comp_id, true);
        } else if failed && run.composition.fail_fast {
            self.cancel_members(st, comp_id, false);
        }
        self.start_ready(st, comp_id, None);
        self.maybe_finish(st, comp_id);
    }

    /// Creates jobs for every ready node (bindings resolved now); a binding that cannot be
    /// resolved fails its node.
    pub(super) fn start_ready(
        self: &Arc<Self>,
        st: &mut State,
        comp_id: &str,
        completed: Option<&str>,
    ) {
        if st.closed {
            // A closed queue starts nothing new. One that leaves its work to the host that
            // reconciles it (`stop_admitting`) leaves the next nodes pending for it to
            // resume; otherwise what would run next is cancelled.
            if st.leaving {
                return;
            }
            if let Some(entry) = st.compositions.get_mut(comp_id) {
                for node in entry.run.ready_nodes() {
                    entry.run.record(&node, NodeState::Cancelled, None, None);
                    entry.run.skip_dependents(&node);
                }
            }
            return;
        }
        let Some(entry) = st.compositions.get(comp_id) else {
            return;
        };
        let run = &entry.run;
        // Bound results are read where they are: none is copied under the lock.
        let result_of = |id: &str| run.nodes.get(id).and_then(|n| n.result.as_ref());
        let mut specs = Vec::new();
        let mut failures = Vec::new();
        for node_id in run.ready_nodes() {
            let Some(node) = run.composition.nodes.iter().find(|n| n.id == node_id) else {
                continue;
            };
            let resolved = node
                .resolve(result_of)
                .map_err(|m| JobError::user_input(format!("composition binding failed: {m}")));
            let checked = resolved.and_then(|kwargs| {
                self.check_instance(&node.instance_id)
                    .map(|name| (kwargs, name))
                    .map_err(|e| e.to_job_error())
            });
            match checked {
                Ok((kwargs, name)) => {
                    let request = match (&node.task, &node.method) {
                        (Some(t), Some(m)) => CallRequest::task(t, m, kwargs),
                        _ => CallRequest::execute(kwargs),
                    };
                    let mut spec =
                        JobSpec::call(&node.instance_id, request).priority(if node.priority != 0 {
                            node.priority
                        } else {
                            run.composition.priority
                        });
                    let env = &mut spec.request.envelope;
                    env.composition_id = Some(comp_id.to_owned());
                    env.node_id = Some(node.id.clone());
                    env.run_id.clone_from(&run.composition.run_id);
                    env.actor.clone_from(&run.composition.actor);
                    env.control.clone_from(&node.control);
                    env.traceparent.clone_from(&run.composition.traceparent);
                    specs.push((node.id.clone(), spec, name));
                }
                Err(e) => failures.push((node.id.clone(), e)),
            }
        }
        let mut enqueued = Vec::new();
        for (node_id, spec, name) in specs {
            let id = uuid::Uuid::now_v7().to_string();
            let bytes = spec.request.approx_bytes();
            self.enqueue(
                st,
                id.clone(),
                spec,
                Some(name),
                bytes,
                dispatch::Origin::Submitted(None),
            );
            if let Some(entry) = st.compositions.get_mut(comp_id)
                && let Some(n) = entry.run.nodes.get_mut(&node_id)
            {
                n.job_id = Some(id);
                n.state = NodeState::Running;
            }
            enqueued.push(node_id);
        }
        if let Some(entry) = st.compositions.get(comp_id)
            && completed.is_some()
            && !enqueued.is_empty()
        {
            let mut e = JobEvent::new(
                EventKind::CompositionAdvanced,
                json!({"completed_node": completed, "enqueued_nodes": enqueued}),
            );
            e.composition_id = Some(comp_id.to_owned());
            e.node_id = completed.map(str::to_owned);
            e.run_id.clone_from(&entry.run.composition.run_id);
            e.actor.clone_from(&entry.run.composition.actor);
            self.emitter.push(Item::Event(e));
        }
        for (node_id, error) in failures {
            self.advance(st, comp_id, &node_id, NodeState::Failed, None, Some(error));
        }
    }

    /// Stops members that have not started: nodes without a job are cancelled, pending
    /// member jobs are cancelled; running members run to completion unless `running` (a
    /// user cancel of the whole composition).
    pub(super) fn cancel_members(self: &Arc<Self>, st: &mut State, comp_id: &str, running: bool) {
        let Some(entry) = st.compositions.get_mut(comp_id) else {
            return;
        };
        let mut jobs = Vec::new();
        for n in entry.run.nodes.values_mut() {
            match (&n.job_id, n.state) {
                (None, NodeState::Pending) => n.state = NodeState::Cancelled,
                (Some(job), NodeState::Running) => jobs.push(job.clone()),
                _ => {}
            }
        }
        for job in jobs {
            let status = st.jobs.get(&job).map(|e| e.job.status);
            if status == Some(JobStatus::Pending) || (running && status == Some(JobStatus::Running))
            {
                let _ = self.cancel_job(st, &job);
            }
        }
    }

    pub(super) fn maybe_finish(&self, st: &mut State, comp_id: &str) {
        let Some(entry) = st.compositions.get_mut(comp_id) else {
            return;
        };
        let run = &mut entry.run;
        if run.status.is_terminal() || !run.all_terminal() {
            return;
        }
        run.status = run.terminal_status();
        run.completed_at = Some(now());
        let nodes: serde_json::Map<String, Value> = run
            .nodes
            .iter()
            .map(|(id, n)| (id.clone(), Value::from(n.state.as_str())))
            .collect();
        let mut e = JobEvent::new(
            EventKind::CompositionFinished,
            json!({"status": run.status.as_str(), "nodes": nodes, "fail_fast": run.composition.fail_fast}),
        );
        e.composition_id = Some(comp_id.to_owned());
        e.run_id.clone_from(&run.composition.run_id);
        e.actor.clone_from(&run.composition.actor);
        self.emitter.push(Item::Event(e));
        self.emitter.push(Item::Done(Arc::clone(&entry.done)));
        // Results kept by reference for a resume are not needed any more.
        let dir = self.manager.host_config().data_dir.join("payloads");
        let files: Vec<_> = run
            .nodes
            .values()
            .filter_map(|n| n.job_id.as_ref())
            .map(|job| dir.join(format!("{job}.result.json")))
            .collect();
        self.runtime.spawn_blocking(move || {
            for file in files {
                let _ = std::fs::remove_file(file);
            }
        });
        st.composition_history.push_back(comp_id.to_owned());
        while st.composition_history.len() > self.config.max_history as usize {
            let idle = st
                .composition_history
                .front()
                .and_then(|id| st.compositions.get(id))
                .is_none_or(|c| c.done.is_set() && Arc::strong_count(&c.done) == 1);
            if !idle {
                break;
            }
            if let Some(old) = st.composition_history.pop_front() {
                st.compositions.remove(&old);
            }
        }
    }
}
