//! Compositions at run time: the public API (submit, get, list, wait, cancel), and moving
//! them on: a member's outcome is recorded, downstream nodes whose inputs now exist get
//! jobs, failures skip dependents and (fail-fast) cancel independent pending members, and a
//! composition finishes once every node is terminal.

use super::*;

impl JobQueue {
    /// Submits a composition; returns its run id. Validated first: structure (duplicate ids,
    /// unknown bindings, cycles) and every node's instance (unknown, disabled), every problem
    /// listed. Member jobs are created when their inputs exist.
    pub async fn submit_composition(&self, mut composition: Composition) -> Result<String> {
        let span = tracing::info_span!(
            target: "cjm::trace",
            "cjm.composition.submit",
            cjm.nodes = composition.nodes.len(),
            cjm.composition_id = tracing::field::Empty,
        );
        crate::trace::adopt(&span, composition.traceparent.as_deref());
        if let Some(traceparent) = crate::trace::traceparent(&span) {
            composition.traceparent = Some(traceparent);
        }
        let result =
            crate::trace::within(span.clone(), self.submit_composition_within(composition)).await;
        match &result {
            Ok(id) => {
                span.record("cjm.composition_id", id.as_str());
            }
            Err(e) => crate::trace::fail(&span, &e.to_string()),
        }
        result
    }

    async fn submit_composition_within(&self, composition: Composition) -> Result<String> {
        let inner = &self.inner;
        inner.admissible_submission()?;
        let deps = match composition.validate() {
            Ok(deps) => deps,
            Err(problems) => {
                // Its args may nest past any stack: dropped without recursion.
                crate::bounds::drop_flat(composition.nodes.into_iter().flat_map(|n| {
                    n.kwargs.into_iter().filter_map(|(_, a)| match a {
                        Arg::Value(v) => Some(v),
                        Arg::Output(_) => None,
                    })
                }));
                return Err(QueueError::InvalidComposition(problems).into());
            }
        };
        // Each node's instance and its capability (journaled: a host resuming the
        // composition loads what its nodes call).
        let mut instances = std::collections::BTreeMap::new();
        let mut problems = Vec::new();
        for n in &composition.nodes {
            match inner.check_instance(&n.instance_id) {
                Ok(name) => {
                    instances.insert(n.instance_id.clone(), name);
                }
                Err(e) => problems.push(format!("node '{}': {}", n.id, e.to_job_error().message)),
            }
        }
        if !problems.is_empty() {
            return Err(QueueError::InvalidComposition(problems).into());
        }
        let id = uuid::Uuid::now_v7().to_string();
        let written = Arc::new(Done::default());
        let launches = {
            let mut st = inner.lock();
            if st.closed {
                return Err(QueueError::Closed.into());
            }
            let mut submitted = JobEvent::new(
                EventKind::CompositionSubmitted,
                json!({"host_id": inner.emitter.host_id(), "composition": &composition,
                       "instances": instances}),
            );
            submitted.composition_id = Some(id.clone());
            submitted.run_id.clone_from(&composition.run_id);
            submitted.actor.clone_from(&composition.actor);
            inner.emitter.push(Item::Event(submitted));
            inner.emitter.push(Item::Done(Arc::clone(&written)));
            st.compositions.insert(
                id.clone(),
                CompositionEntry {
                    run: CompositionRun::new(id.clone(), composition, deps),
                    done: Arc::new(Done::default()),
                },
            );
            inner.start_ready(&mut st, &id, None);
            inner.maybe_finish(&mut st, &id);
            inner.dispatch(&mut st)
        };
        inner.after(launches);
        self.journaled(&written).await?;
        Ok(id)
    }

    /// A snapshot of a composition run.
    pub fn composition(&self, id: &str) -> Option<CompositionRun> {
        let st = self.inner.lock();
        st.compositions
            .get(id)
            .map(|c| composition_view(&st, &c.run))
    }

    /// The composition runs this host holds (running ones and the recent finished ones),
    /// newest first, at most `limit`.
    pub fn compositions(&self, limit: usize) -> Vec<CompositionRun> {
        let st = self.inner.lock();
        let mut runs: Vec<&CompositionRun> = st.compositions.values().map(|c| &c.run).collect();
        runs.sort_by(|a, b| b.submitted_at.cmp(&a.submitted_at).then(b.id.cmp(&a.id)));
        runs.into_iter()
            .take(limit)
            .map(|run| composition_view(&st, run))
            .collect()
    }

    /// Waits until a composition reached its terminal status and returns it.
    pub async fn wait_composition(
        &self,
        id: &str,
        timeout: Option<Duration>,
    ) -> Result<CompositionRun> {
        let done = self
            .inner
            .lock()
            .compositions
            .get(id)
            .map(|c| Arc::clone(&c.done))
            .ok_or_else(|| QueueError::UnknownComposition(id.to_owned()))?;
        wait_done(&done, timeout, id).await?;
        self.composition(id)
            .ok_or_else(|| QueueError::UnknownComposition(id.to_owned()).into())
    }

    /// Cancels a composition as a unit (it lands `cancelled`): nodes without a job never
    /// get one, pending members are cancelled, running ones go through the cancel state
    /// machine.
    pub fn cancel_composition(&self, id: &str) -> Result<()> {
        let inner = &self.inner;
        let launches = {
            let mut st = inner.lock();
            let entry = st
                .compositions
                .get_mut(id)
                .ok_or_else(|| QueueError::UnknownComposition(id.to_owned()))?;
            if entry.run.status.is_terminal() {
                return Err(QueueError::Finished {
                    id: id.to_owned(),
                    status: entry.run.status.as_str().to_owned(),
                }
                .into());
            }
            entry.run.cancel_requested = true;
            let mut e = JobEvent::new(EventKind::CompositionCancelRequested, json!({}));
            e.composition_id = Some(id.to_owned());
            e.run_id.clone_from(&entry.run.composition.run_id);
            e.actor.clone_from(&entry.run.composition.actor);
            inner.emitter.push(Item::Event(e));
            inner.cancel_members(&mut st, id, true);
            inner.maybe_finish(&mut st, id);
            inner.dispatch(&mut st)
        };
        inner.after(launches);
        Ok(())
    }
}

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
        super::execution::forget_oldest(
            &mut st.composition_history,
            &mut st.compositions,
            self.config.max_history as usize,
            |c| c.done.is_set() && Arc::strong_count(&c.done) == 1,
        );
    }
}

/// A composition as callers see it: a node whose job still waits in the queue is `pending`
/// (the run itself counts it in flight from the moment its job exists).
fn composition_view(st: &State, run: &CompositionRun) -> CompositionRun {
    let mut view = run.clone();
    for node in view.nodes.values_mut() {
        if node.state == NodeState::Running
            && let Some(job) = &node.job_id
            && st
                .jobs
                .get(job)
                .is_some_and(|e| e.job.status == JobStatus::Pending)
        {
            node.state = NodeState::Pending;
        }
    }
    view
}
