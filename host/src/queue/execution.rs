//! Running jobs: starting admitted jobs as tasks, the journal flushes, progress and resource
//! snapshots, deadlines, the cancel state machine, and finishing (which releases what
//! admission reserved).

use super::*;

/// Finishes a job whose task panicked (in a backend): the job fails, its lane and
/// reservations are released, its waiters wake.
struct FinishGuard {
    inner: Arc<Inner>,
    id: Option<String>,
}

impl Drop for FinishGuard {
    fn drop(&mut self) {
        let Some(id) = self.id.take() else { return };
        // Dropped without a panic: the runtime is going away with the host. The job stays
        // running in the journal, for the host that reconciles this one ("host lost").
        if !std::thread::panicking() {
            return;
        }
        tracing::error!(job = %id, "a job's task ended without finishing it (panic?)");
        let error = Error::job(JobError::fatal(
            "the job's task panicked; the instance may need a reload",
        ));
        let launches = {
            let mut st = self.inner.lock();
            self.inner.finish(&mut st, &id, Err(error));
            self.inner.dispatch(&mut st)
        };
        self.inner.after(launches);
    }
}

impl Inner {
    /// Starts admitted jobs and wakes the journal writer for what the state changes queued.
    pub(super) fn after(self: &Arc<Self>, launches: Vec<Launch>) {
        for launch in launches {
            let me = Arc::clone(self);
            self.runtime.spawn(async move { me.run(launch).await });
        }
        self.flush();
    }

    pub(super) fn flush(&self) {
        self.emitter.flush();
    }

    pub(super) async fn run(self: Arc<Self>, launch: Launch) {
        // Whatever happens to this task (a panic in a backend included), the job finishes
        // and releases what admission reserved.
        let mut guard = FinishGuard {
            inner: Arc::clone(&self),
            id: Some(launch.id.clone()),
        };
        let snapshots = self.snapshots(&launch);
        drop(launch.admission);
        let span = tracing::info_span!(
            target: "cjm::trace",
            "cjm.attempt",
            cjm.job_id = launch.id.as_str(),
            cjm.instance = launch.instance_id.as_str(),
            cjm.attempt = launch.attempt,
        );
        crate::trace::set_parent(&span, launch.request.envelope.traceparent.as_deref());
        let member = launch.request.envelope.composition_id.is_some();
        let call = self.manager.call_with(
            &launch.instance_id,
            launch.request,
            Arc::clone(&launch.control),
        );
        let result = crate::trace::within(span.clone(), call).await;
        if let Err(e) = &result
            && crate::trace::is_traced(&span)
        {
            crate::trace::fail(&span, &e.to_job_error().message);
        }
        drop(span);
        if let Some(task) = snapshots {
            task.abort();
        }
        // Forced and actually stopped (a call that returned just before the force needs no
        // replacement).
        // (A backend attached by the caller has no manifest to reload from: it handles a
        // forced cancel itself.)
        if launch.control.forced()
            && matches!(result, Err(Error::Cancelled))
            && !self
                .manager
                .instance(&launch.instance_id)
                .is_ok_and(|i| i.attached())
        {
            self.cancel_phase(&launch.id, CancelPhase::Reloading);
            if let Err(e) = self.manager.reload(&launch.instance_id).await {
                tracing::warn!(instance = %launch.instance_id, error = %e, "reload after a forced cancel failed; the next call respawns");
            }
        }
        if launch.control.cancel_requested() {
            self.cancel_phase(&launch.id, CancelPhase::Completed);
        }
        // A member's result is journaled with its outcome (prepared off the lock).
        let node_result = match (&result, member) {
            (Ok(value), true) => Some(self.node_result(&launch.id, value).await),
            _ => None,
        };
        guard.id = None;
        let accounts = launch.control.accounts();
        let launches = {
            let mut st = self.lock();
            if let Some(entry) = st.jobs.get_mut(&launch.id) {
                entry.job.accounts = accounts;
                entry.node_result = node_result;
            }
            self.finish(&mut st, &launch.id, result);
            self.dispatch(&mut st)
        };
        self.after(launches);
    }

    /// How a composition member's terminal row keeps its result: inline up to
    /// [`job::INLINE_KWARGS_BYTES`], else by reference to `payloads/<job>.result.json`
    /// (removed when the composition ends). A result that cannot be written is left out: a
    /// host resuming the composition fails the nodes bound to it.
    async fn node_result(&self, job_id: &str, value: &Value) -> Value {
        let bytes = match serde_json::to_vec(value) {
            Ok(b) => b,
            Err(e) => return json!({"result_error": e.to_string()}),
        };
        if bytes.len() <= job::INLINE_KWARGS_BYTES {
            return json!({"result": value});
        }
        let dir = self.manager.host_config().data_dir.clone();
        let name = format!("{job_id}.result");
        match tokio::task::spawn_blocking(move || job::PayloadRef::write(&dir, &name, &bytes)).await
        {
            Ok(Ok(r)) => json!({"result_ref": r}),
            Ok(Err(e)) => json!({"result_error": e.to_string()}),
            Err(e) => json!({"result_error": e.to_string()}),
        }
    }

    /// While a native job runs, publishes a resource snapshot of its worker's process
    /// subtree every `progress_poll_interval x resource_snapshot_cadence_polls`.
    pub(super) fn snapshots(
        self: &Arc<Self>,
        launch: &Launch,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let pid = launch.backend.as_ref()?.pid()?;
        let every = self.config.progress_poll_interval.mul_f64(f64::from(
            self.config.resource_snapshot_cadence_polls.max(1),
        ));
        let weak = Arc::downgrade(self);
        let job_id = launch.id.clone();
        Some(self.runtime.spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(inner) = weak.upgrade() else { return };
                let telemetry = inner.manager.telemetry().clone();
                let sample = tokio::task::spawn_blocking(move || {
                    let tree = telemetry.process_tree(pid)?;
                    let gpu = telemetry.gpu_memory_of(&tree.subtree_pids);
                    Some((tree, gpu))
                })
                .await;
                let Ok(Some((tree, gpu))) = sample else {
                    continue;
                };
                let event = {
                    let st = inner.lock();
                    let Some(entry) = st.jobs.get(&job_id) else {
                        return;
                    };
                    job_event(
                        EventKind::ResourceSnapshot,
                        &entry.job,
                        json!({
                            "worker_pid": pid,
                            "cpu_percent": tree.cpu_percent,
                            "memory_rss_mb": tree.memory_rss_mb,
                            "subtree_pids": tree.subtree_pids,
                            "gpu_memory_mb": gpu.as_ref().map(|g| g.gpu_memory_mb),
                            "gpu_index": gpu.as_ref().and_then(|g| g.gpu_index),
                        }),
                    )
                };
                inner.bus.publish(&event);
            }
        }))
    }

    /// A running job's progress: queued with the rows of its state changes, so a listener
    /// never gets it before the job's own rows (it goes out after the next commit).
    pub(super) fn progress(&self, job_id: &str, p: &cjm_guest::contract::Progress) {
        {
            let mut st = self.lock();
            // A late poll of a call that already ended changes nothing.
            let Some(entry) = st
                .jobs
                .get_mut(job_id)
                .filter(|e| e.job.status == JobStatus::Running)
            else {
                return;
            };
            entry.job.progress = p.progress;
            entry.job.status_message.clone_from(&p.message);
            let event = job_event(
                EventKind::ProgressChanged,
                &entry.job,
                json!({"progress": p.progress, "message": p.message}),
            );
            self.emitter.push(Item::Event(event));
        }
        self.flush();
    }

    pub(super) fn cancel_phase(&self, job_id: &str, phase: CancelPhase) {
        {
            let mut st = self.lock();
            let Some(entry) = st.jobs.get_mut(job_id) else {
                return;
            };
            let from = entry.job.cancel_phase.map(CancelPhase::as_str);
            entry.job.cancel_phase = Some(phase);
            self.emitter.push(Item::Event(job_event(
                EventKind::CancelPhaseChanged,
                &entry.job,
                json!({"from": from, "to": phase.as_str()}),
            )));
        }
        self.flush();
    }

    /// Records a running job's outcome, releases what admission reserved and advances its
    /// composition.
    pub(super) fn finish(self: &Arc<Self>, st: &mut State, job_id: &str, result: Result<Value>) {
        let Some(entry) = st.jobs.get_mut(job_id) else {
            return;
        };
        let (status, value, error) = match result {
            Ok(v) => (JobStatus::Completed, Some(v), None),
            Err(Error::Cancelled) => (JobStatus::Cancelled, None, None),
            Err(e) => {
                if let Error::NotFound(what) = &e {
                    entry.job.not_found = Some(what.clone());
                }
                let raw = e.to_job_error();
                // The host's names for the instance, whatever the worker calls itself.
                let mut je = host_view(&raw, &entry.job.instance_id);
                if let Some(name) = entry.job.capability_name.clone().filter(|n| !n.is_empty()) {
                    je.capability_name = Some(name);
                }
                entry.job.raw_error = Some(Box::new(raw));
                (JobStatus::Failed, None, Some(je))
            }
        };
        if let Some(grant) = entry.grant.take() {
            st.ledger.running -= 1;
            if let Some(n) = st.ledger.by_instance.get_mut(&entry.job.instance_id) {
                *n -= 1;
                if *n == 0 {
                    st.ledger.by_instance.remove(&entry.job.instance_id);
                }
            }
            if grant.exclusive {
                st.ledger.exclusive = false;
            }
            st.ledger.gpu_reserved_mb = (st.ledger.gpu_reserved_mb - grant.gpu_mb).max(0.0);
        }
        entry.control = None;
        if status == JobStatus::Failed
            && !st.closed
            && entry.job.cancel_requested_at.is_none()
            && let Some(e) = &error
            && entry.retry.retries(e, entry.job.retry_count + 1)
            && let Some(request) = entry.retry_request.take()
        {
            let attempt = entry.job.retry_count + 1;
            // Never sooner than the capability asked (`retry_after_seconds`, of any category:
            // the recorded error keeps it only on a transient one, as cjm-substrate's does).
            let asked = entry
                .job
                .raw_error
                .as_ref()
                .and_then(|raw| raw.retry_after_seconds)
                .or(e.retry_after_seconds);
            let asked = super::retry::seconds(asked.unwrap_or(0.0));
            let delay = entry
                .retry
                .delay(attempt, super::retry::jitter())
                .max(asked.min(super::retry::seconds(entry.retry.max_backoff_seconds)));
            entry.job.retry_count = attempt;
            entry.job.status = JobStatus::Pending;
            entry.retry_wait = true;
            st.retry_waiting += 1;
            entry.job.started_at = None;
            entry.job.error = error.clone().map(Box::new);
            entry.request = Some(*request);
            self.emitter.push(Item::Event(job_event(
                EventKind::StateTransition,
                &entry.job,
                json!({"from": "running", "to": "pending", "retry": {
                    "attempt": attempt + 1, "of": entry.retry.max_attempts,
                    "delay_ms": delay.as_secs_f64() * 1000.0, "error": e}}),
            )));
            let weak = Arc::downgrade(self);
            let id = job_id.to_owned();
            self.runtime.spawn(async move {
                tokio::time::sleep(delay).await;
                let Some(inner) = weak.upgrade() else { return };
                let launches = {
                    let mut st = inner.lock();
                    inner.requeue(&mut st, &id);
                    inner.dispatch(&mut st)
                };
                inner.after(launches);
            });
            return;
        }
        if status == JobStatus::Completed {
            entry.job.progress = 1.0;
        }
        entry.job.result.clone_from(&value);
        entry.job.error = error.clone().map(Box::new);
        self.terminal(st, job_id, JobStatus::Running, status);
        let member = st
            .jobs
            .get(job_id)
            .and_then(|e| Some((e.job.composition_id.clone()?, e.job.node_id.clone()?)));
        if let Some((comp, node)) = member {
            let state = match status {
                JobStatus::Completed => NodeState::Completed,
                JobStatus::Cancelled => NodeState::Cancelled,
                _ => NodeState::Failed,
            };
            self.advance(st, &comp, &node, state, value, error);
        }
    }

    /// Puts a job waiting for its retry back into the pending index (unless it was
    /// cancelled meanwhile); it queues behind the jobs of its priority submitted since.
    fn requeue(&self, st: &mut State, job_id: &str) {
        st.next_seq += 1;
        let seq = st.next_seq;
        let closed = st.closed;
        let Some(entry) = st.jobs.get_mut(job_id) else {
            return;
        };
        if std::mem::take(&mut entry.retry_wait) {
            st.retry_waiting -= 1;
        }
        if entry.job.status != JobStatus::Pending || closed {
            return;
        }
        let order = (std::cmp::Reverse(entry.job.priority), seq);
        entry.order = order;
        entry.admission = super::dispatch::admission_span(
            &entry.job,
            entry
                .request
                .as_ref()
                .and_then(|r| r.envelope.traceparent.as_deref()),
        );
        entry.bytes = entry.request.as_ref().map_or(0, CallRequest::approx_bytes);
        st.pending_bytes += entry.bytes;
        st.pending
            .insert(&entry.job.instance_id, order, job_id.to_owned());
    }

    /// Marks a job terminal: counts it, journals the transition with its snapshot, marks
    /// it done after that row, keeps it in the bounded in-memory history.
    pub(super) fn terminal(&self, st: &mut State, job_id: &str, from: JobStatus, to: JobStatus) {
        let Some(entry) = st.jobs.get_mut(job_id) else {
            return;
        };
        entry.job.status = to;
        entry.job.completed_at = Some(now());
        entry.request = None;
        if let Some(file) = entry.payload_file.take() {
            let path = self.manager.host_config().data_dir.join(file);
            self.runtime
                .spawn_blocking(move || std::fs::remove_file(path));
        }
        st.pending_bytes -= std::mem::take(&mut entry.bytes);
        let snapshot = serde_json::to_value(entry.job.snapshot()).unwrap_or(Value::Null);
        let mut payload =
            json!({"from": from.as_str(), "to": to.as_str(), "job_snapshot": snapshot});
        if let Some(result) = entry
            .node_result
            .take()
            .filter(|_| to == JobStatus::Completed)
        {
            payload["node_result"] = result;
        }
        self.emitter.push(Item::Event(job_event(
            EventKind::StateTransition,
            &entry.job,
            payload,
        )));
        // Written at once for those waiting on the job now (a later waiter hurries it);
        // otherwise with the next batch, so that a composition's members or a burst nobody
        // waits on job by job share transactions.
        self.emitter
            .push_done(Arc::clone(&entry.done), entry.waiters > 0);
        match to {
            JobStatus::Completed => st.stats.completed += 1,
            JobStatus::Cancelled => st.stats.cancelled += 1,
            _ => st.stats.failed += 1,
        }
        // A large result stays only for the waiters present now (they release it).
        if let Some(size) = entry
            .job
            .result
            .as_ref()
            .and_then(|v| size_over(v, self.config.max_history_result_bytes))
            && entry.waiters == 0
        {
            entry.job.result = None;
            entry.job.result_dropped_bytes = Some(size);
        }
        st.history.push_back(job_id.to_owned());
        // Forget the oldest finished jobs once their terminal row is written (a job not in
        // memory is then always in the journal) and nobody is waiting on it (a waiter gets
        // the result, not a record).
        forget_oldest(
            &mut st.history,
            &mut st.jobs,
            self.config.max_history as usize,
            |e| e.done.is_set() && e.waiters == 0,
        );
    }

    /// A waiter of a job leaves: the last one to leave drops a finished job's result over
    /// `max_history_result_bytes` from memory.
    pub(super) fn release_result(&self, job_id: &str) {
        let mut st = self.lock();
        let limit = self.config.max_history_result_bytes;
        let Some(entry) = st.jobs.get_mut(job_id) else {
            return;
        };
        entry.waiters = entry.waiters.saturating_sub(1);
        if entry.waiters == 0
            && entry.job.status.is_terminal()
            && let Some(size) = entry.job.result.as_ref().and_then(|v| size_over(v, limit))
        {
            entry.job.result = None;
            entry.job.result_dropped_bytes = Some(size);
        }
    }

    pub(super) fn cancel_job(self: &Arc<Self>, st: &mut State, job_id: &str) -> Result<()> {
        let entry = st
            .jobs
            .get_mut(job_id)
            .ok_or_else(|| QueueError::UnknownJob(job_id.to_owned()))?;
        match entry.job.status {
            JobStatus::Pending => {
                entry.job.cancel_requested_at = Some(now());
                if std::mem::take(&mut entry.retry_wait) {
                    st.retry_waiting -= 1;
                }
                let (instance, order) = (entry.job.instance_id.clone(), entry.order);
                st.pending.remove(&instance, order);
                self.terminal(st, job_id, JobStatus::Pending, JobStatus::Cancelled);
                let member = st
                    .jobs
                    .get(job_id)
                    .and_then(|e| Some((e.job.composition_id.clone()?, e.job.node_id.clone()?)));
                if let Some((comp, node)) = member {
                    self.advance(st, &comp, &node, NodeState::Cancelled, None, None);
                }
                Ok(())
            }
            JobStatus::Running => {
                if entry.job.cancel_requested_at.is_some() {
                    return Ok(());
                }
                entry.job.cancel_requested_at = Some(now());
                entry.job.cancel_phase = Some(CancelPhase::Cooperative);
                self.emitter.push(Item::Event(job_event(
                    EventKind::CancelPhaseChanged,
                    &entry.job,
                    json!({"from": null, "to": CancelPhase::Cooperative.as_str()}),
                )));
                if let Some(control) = &entry.control {
                    control.request_cancel();
                    let control = Arc::clone(control);
                    let weak: Weak<Inner> = Arc::downgrade(self);
                    let grace = self.config.cancel_timeout;
                    let id = job_id.to_owned();
                    self.runtime.spawn(async move {
                        tokio::time::sleep(grace).await;
                        let Some(inner) = weak.upgrade() else { return };
                        let still_running = inner
                            .lock()
                            .jobs
                            .get(&id)
                            .is_some_and(|e| e.job.status == JobStatus::Running);
                        if still_running {
                            inner.cancel_phase(&id, CancelPhase::Force);
                            control.force_cancel();
                        }
                    });
                }
                Ok(())
            }
            done => Err(QueueError::Finished {
                id: job_id.to_owned(),
                status: done.as_str().to_owned(),
            }
            .into()),
        }
    }
}

/// Forgets the oldest finished entries of `map` (in `history` order) beyond `max`, stopping
/// at the first one not yet `idle`: the in-memory history of jobs or compositions.
pub(super) fn forget_oldest<V>(
    history: &mut std::collections::VecDeque<String>,
    map: &mut std::collections::HashMap<String, V>,
    max: usize,
    idle: impl Fn(&V) -> bool,
) {
    while history.len() > max {
        if !history.front().and_then(|id| map.get(id)).is_none_or(&idle) {
            break;
        }
        if let Some(old) = history.pop_front() {
            map.remove(&old);
        }
    }
}
