//! From pending to running: jobs enter the pending index, and admission takes them out in
//! priority order with skip-ahead (the ladder itself is in [`admission`](super::admission)).

use super::*;

/// A job admitted under the lock, started after it is released.
pub(super) struct Launch {
    pub(super) id: String,
    pub(super) instance_id: String,
    pub(super) request: CallRequest,
    pub(super) control: Arc<CallControl>,
    /// The backend serving the instance at admission (its kind and worker pid), when loaded.
    pub(super) backend: Option<Arc<dyn crate::backend::Backend>>,
    /// Which run of the job this is (1-based).
    pub(super) attempt: u32,
    /// The job's wait in the queue, ended when its task starts (not under the lock).
    pub(super) admission: tracing::Span,
}

/// The span of a job's wait in the queue, in the trace its envelope names.
pub(super) fn admission_span(job: &Job, traceparent: Option<&str>) -> tracing::Span {
    let span = tracing::info_span!(
        target: "cjm::trace",
        "cjm.admission",
        cjm.job_id = job.id.as_str(),
        cjm.instance = job.instance_id.as_str(),
        cjm.priority = job.priority,
        cjm.attempt = job.retry_count + 1,
        cjm.exclusive = tracing::field::Empty,
    );
    crate::trace::set_parent(&span, traceparent);
    span
}

/// How a job enters the queue.
pub(super) enum Origin {
    /// Submitted here: its `job_submitted` row (the spec, its kwargs inline or by
    /// reference) is queued with it.
    Submitted(Option<job::PayloadRef>),
    /// Adopted from a gone host, on attempt `attempt`: its `job_adopted` row is written.
    Adopted {
        /// The attempt it starts on (1-based).
        attempt: u32,
        /// Its kwargs file in the data dir, when its spec keeps them by reference.
        payload_file: Option<String>,
    },
}

impl Inner {
    pub(super) fn enqueue(
        &self,
        st: &mut State,
        id: String,
        mut spec: JobSpec,
        name: Option<String>,
        bytes: usize,
        origin: Origin,
    ) {
        spec.request.envelope.job_id = Some(id.clone());
        st.next_seq += 1;
        let order = (Reverse(spec.priority), st.next_seq);
        let retry = spec
            .retry
            .clone()
            .or_else(|| {
                name.as_ref()
                    .and_then(|n| self.config.retry_defaults.get(n).cloned())
            })
            .unwrap_or_default();
        let mut job = Job::new(id.clone(), &spec, name);
        let payload_file = match origin {
            Origin::Submitted(kwargs_ref) => {
                let file = kwargs_ref.as_ref().map(|r| r.path.clone());
                // Kwargs bound from upstream results may be large: past the inline limit
                // they are left out (another host re-binds such a member's node instead).
                let mut record = if kwargs_ref.is_none() && bytes > job::INLINE_KWARGS_BYTES {
                    let mut r = SpecRecord::of(&spec, job.capability_name.as_deref(), &retry, None);
                    r.kwargs = None;
                    r.kwargs_left_out = true;
                    r
                } else {
                    SpecRecord::of(&spec, job.capability_name.as_deref(), &retry, kwargs_ref)
                };
                record.envelope.job_id = None;
                self.emitter.push(Item::Event(job_event(
                    EventKind::JobSubmitted,
                    &job,
                    json!({"host_id": self.emitter.host_id(), "attempt": 1, "spec": record}),
                )));
                file
            }
            Origin::Adopted {
                attempt,
                payload_file,
            } => {
                job.retry_count = attempt.saturating_sub(1);
                payload_file
            }
        };
        let admission = admission_span(&job, spec.request.envelope.traceparent.as_deref());
        st.pending.insert(&spec.instance_id, order, id.clone());
        st.jobs.insert(
            id,
            Box::new(Entry {
                job,
                order,
                request: Some(spec.request),
                timeout: spec.timeout,
                control: None,
                grant: None,
                done: Arc::new(Done::default()),
                waiters: 0,
                bytes,
                retry,
                retry_request: None,
                payload_file,
                retry_wait: false,
                node_result: None,
                admission,
            }),
        );
        st.pending_bytes += bytes;
    }

    /// What the ladder weighs for an instance's head: the instance, its concurrency cap and
    /// its measured peaks. An instance unloaded since submit is admitted (its call fails with
    /// the typed error).
    fn admission_inputs(
        &self,
        instance_id: &str,
    ) -> (Option<Arc<crate::manager::Instance>>, usize, Option<Peaks>) {
        match self.manager.instance(instance_id).ok() {
            Some(i) => {
                let (cap, peaks) = (i.max_concurrency(), i.peaks());
                (Some(i), cap, peaks)
            }
            None => (None, usize::MAX, Some(Peaks::default())),
        }
    }

    fn limits(&self) -> Limits {
        Limits {
            lanes: (self.config.max_concurrent_lanes as usize).max(1),
            gpu_headroom: self.config.gpu_headroom_fraction,
        }
    }

    /// Why each of the first `limit` pending jobs (of `only`, when given) waits: the ladder
    /// of [`Self::dispatch`] asked about every instance head without admitting anything.
    pub(super) fn waiting(
        &self,
        st: &State,
        limit: usize,
        only: Option<&std::collections::BTreeSet<String>>,
    ) -> Vec<admission::WaitReason> {
        let limits = self.limits();
        let mut view: Option<ResourceView> = None;
        let mut heads: HashMap<&str, (&'static str, String)> = HashMap::new();
        // The head whose first run waits for the lanes to drain: nothing after it is admitted.
        let mut first_run: Option<&str> = None;
        for (_, instance_id) in st.pending.heads() {
            let verdict = if st.closed {
                (
                    "closed",
                    "the host is stopping: it is left to recovery".to_owned(),
                )
            } else if st.ledger.exclusive {
                (
                    "exclusive",
                    "a first run is being measured alone: nothing is admitted beside it".into(),
                )
            } else if st.ledger.running >= limits.lanes {
                ("lanes", format!("all {} lanes are in use", limits.lanes))
            } else if let Some(ahead) = first_run {
                (
                    "first_run_ahead",
                    format!(
                        "waits behind the first run of '{ahead}', which needs the lanes to drain"
                    ),
                )
            } else {
                let (_, cap, peaks) = self.admission_inputs(instance_id);
                let mut live = || *view.get_or_insert_with(|| self.resources.view());
                match admission::decide(&st.ledger, limits, instance_id, cap, peaks, &mut live) {
                    Ok(_) => ("next", "admissible: it starts at the next dispatch".into()),
                    Err(blocked) => {
                        if blocked == admission::Blocked::Exclusive {
                            first_run = Some(instance_id);
                        }
                        blocked.explain(instance_id, st.ledger.running)
                    }
                }
            };
            heads.insert(instance_id, verdict);
        }
        let queued = match only {
            Some(ids) => st
                .pending
                .queued(usize::MAX)
                .into_iter()
                .filter(|(id, ..)| ids.contains(*id))
                .take(limit)
                .collect(),
            None => st.pending.queued(limit),
        };
        queued
            .into_iter()
            .map(|(job_id, instance_id, ahead)| {
                let (kind, message) = match heads.get(instance_id) {
                    Some(head) if ahead == 0 => head.clone(),
                    _ => (
                        "behind",
                        format!("behind {ahead} earlier job(s) of '{instance_id}'"),
                    ),
                };
                admission::WaitReason {
                    job_id: job_id.to_owned(),
                    instance_id: instance_id.to_owned(),
                    kind,
                    message,
                    ahead,
                }
            })
            .collect()
    }

    /// Admits every job the ladder allows, in priority order with skip-ahead.
    pub(super) fn dispatch(self: &Arc<Self>, st: &mut State) -> Vec<Launch> {
        let limits = self.limits();
        let mut launches = Vec::new();
        if st.closed {
            // Stopped: what still waits is left to the host that reconciles this one.
            return launches;
        }
        let mut view: Option<ResourceView> = None;
        while st.ledger.running < limits.lanes && !st.ledger.exclusive && st.pending.len() > 0 {
            let mut chosen = None;
            for (order, instance_id) in st.pending.heads() {
                let (instance, cap, peaks) = self.admission_inputs(instance_id);
                let mut live = || *view.get_or_insert_with(|| self.resources.view());
                match admission::decide(&st.ledger, limits, instance_id, cap, peaks, &mut live) {
                    Ok(grant) => {
                        let backend = instance.map(|i| i.backend());
                        chosen = Some((*order, instance_id.clone(), grant, peaks, backend));
                        break;
                    }
                    // A first run waits for the lanes to drain: admitting what comes after
                    // it would starve it under steady load.
                    Err(admission::Blocked::Exclusive) => break,
                    Err(_) => {}
                }
            }
            let Some((order, instance_id, grant, peaks, backend)) = chosen else {
                break;
            };
            let Some(id) = st.pending.remove(&instance_id, order) else {
                break;
            };
            if !st.jobs.contains_key(&id) {
                continue;
            }
            st.ledger.running += 1;
            *st.ledger
                .by_instance
                .entry(instance_id.clone())
                .or_default() += 1;
            st.ledger.exclusive |= grant.exclusive;
            st.ledger.gpu_reserved_mb += grant.gpu_mb;
            let detail = json!({
                "lanes_in_use": st.ledger.running,
                "lanes": limits.lanes,
                "exclusive": grant.exclusive,
                "measured": peaks.is_some(),
                "gpu_memory_mb": grant.gpu_mb,
                "gpu_reserved_mb": st.ledger.gpu_reserved_mb,
                "memory_mb_peak": peaks.map_or(0.0, |p| p.ram_mb),
                "pending": st.pending.len(),
            });
            let Some(entry) = st.jobs.get_mut(&id) else {
                break;
            };
            entry.grant = Some(grant);
            entry.job.status = JobStatus::Running;
            entry.job.started_at = Some(now());
            let mut control = CallControl::new();
            if let Some(t) = entry.timeout {
                control = control.with_timeout(t);
            }
            let weak = Arc::downgrade(self);
            let job_id = id.clone();
            let control = Arc::new(control.with_progress_listener(move |p| {
                if let Some(inner) = weak.upgrade() {
                    inner.progress(&job_id, p);
                }
            }));
            entry.control = Some(Arc::clone(&control));
            let request = entry
                .request
                .take()
                .unwrap_or_else(|| CallRequest::execute(Default::default()));
            // Attempts remain: keep the call for the next one.
            if entry.retry.max_attempts > entry.job.retry_count + 1 {
                entry.retry_request = Some(Box::new(request.clone()));
            }
            st.pending_bytes -= std::mem::take(&mut entry.bytes);
            self.emitter.push(Item::Event(job_event(
                EventKind::AdmissionDecided,
                &entry.job,
                detail,
            )));
            self.emitter.push(Item::Event(job_event(
                EventKind::StateTransition,
                &entry.job,
                json!({"from": "pending", "to": "running"}),
            )));
            let admission = std::mem::replace(&mut entry.admission, tracing::Span::none());
            admission.record("cjm.exclusive", grant.exclusive);
            launches.push(Launch {
                id,
                instance_id,
                request,
                control,
                backend,
                attempt: entry.job.retry_count + 1,
                admission,
            });
        }
        launches
    }
}
