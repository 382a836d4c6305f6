//! Calls: the permit of the instance, bringing an evicted instance back, the empirical
//! sample after every call (in memory at once, in the store in batches), journaled accounts,
//! and on a resource error eviction of idle instances plus reload-and-retry.

use super::*;

impl CapabilityManager {
    /// Runs one call on instance `id` (a disabled or unknown instance is refused with a typed
    /// error). After every call an empirical sample is recorded under (instance, config
    /// hash) and the accounts the capability reported are journaled; a resource error
    /// reloads the instance and retries once.
    pub async fn call(&self, id: &str, request: CallRequest) -> Result<Value> {
        self.call_with(id, request, Arc::new(CallControl::new()))
            .await
    }

    /// [`call`](Self::call) with the caller's [`CallControl`]: the caller cancels through
    /// it and sees progress, accounts and usage (the job queue does). A retry after a
    /// resource error reuses it; a call cancelled meanwhile is not retried.
    pub async fn call_with(
        &self,
        id: &str,
        mut request: CallRequest,
        control: Arc<CallControl>,
    ) -> Result<Value> {
        if let Err(e) = request.check_bounds() {
            request.drop_flat();
            return Err(Error::job(e));
        }
        let instance = self.instance(id)?;
        if !instance.enabled() {
            return Err(user(format!("capability instance '{id}' is disabled")));
        }
        check_params(&instance, &mut request)?;
        // Held through a reload-and-retry: no other call reaches the backend being replaced.
        let _permit = instance
            .permits
            .acquire()
            .await
            .map_err(|_| user(format!("capability instance '{id}' is shutting down")))?;
        if instance.evicted.load(Ordering::SeqCst) {
            let _reviving = instance.revive.lock().await;
            if instance.evicted.load(Ordering::SeqCst) {
                self.reload(id).await?;
                instance.evicted.store(false, Ordering::SeqCst);
            }
        }
        let config_hash = instance.config_hash();
        let mut attempt = 0;
        loop {
            let started = Instant::now();
            let backend = instance.backend();
            *instance.last_used.lock() = Instant::now();
            let span = tracing::info_span!(
                target: "cjm::trace",
                "cjm.backend.call",
                cjm.instance = id,
                cjm.kind = ?backend.kind(),
                cjm.job_id = request.envelope.job_id.as_deref(),
            );
            crate::trace::adopt(&span, request.envelope.traceparent.as_deref());
            let call = backend.call(request.clone(), Arc::clone(&control));
            // The wasm and native backends stop a call at its deadline themselves (the
            // native one kills its worker); an attached one gets the manager's backstop.
            let call = past_deadline_backstop(
                id,
                call,
                &control,
                instance
                    .attached
                    .then_some(self.inner.config.queue.cancel_timeout),
            );
            let result = crate::trace::within(span, call).await;
            // The latest progress the coalescing held back reaches the listener now.
            control.flush_progress();
            if self.inner.config.substrate.empirical_tracking {
                let usage = match backend.pid() {
                    Some(pid) => self.measure(&instance, pid).await,
                    None => (0.0, 0.0, 0.0),
                };
                self.record(
                    &instance,
                    &config_hash,
                    &control,
                    started,
                    result.is_ok(),
                    usage,
                )?;
            }
            self.journal_accounts(&instance, &control, &request.envelope)
                .await?;
            // The host's names for the failure: this instance, and when the host saw it.
            let result = result.map_err(|e| match e {
                Error::Job(mut job) => {
                    job.capability_instance_id = Some(instance.id.clone());
                    job.occurred_at
                        .get_or_insert_with(cjm_guest::python::time::now_iso);
                    Error::Job(job)
                }
                other => other,
            });
            match result {
                // Only a retriable resource error is worth evicting others and trying again
                // (a worker killed for memory, a GPU shortfall); a wasm guest past its own
                // memory limit would fail the same way.
                Err(Error::Job(e))
                    if e.category == ErrorCategory::Resource
                        && e.retriable
                        && attempt < MAX_RETRIES
                        && !control.cancel_requested()
                        // (An attached backend has no manifest to come back from.)
                        && !instance.attached =>
                {
                    attempt += 1;
                    self.free_and_reload(&instance, attempt, &e.message, &request.envelope)
                        .await?;
                }
                other => return other,
            }
        }
    }

    /// Before attempt `attempt` of a call that failed for want of resources (`error`):
    /// evicts idle instances, journals `retry_started` and reloads the instance.
    async fn free_and_reload(
        &self,
        instance: &Instance,
        attempt: u32,
        error: &str,
        envelope: &cjm_guest::contract::Envelope,
    ) -> Result<()> {
        let evicted = self.evict_idle(&instance.id).await?;
        let mut event = JournalEvent::new(event_types::RETRY_STARTED)
            .instance(&instance.id)
            .payload(json!({"attempt": attempt, "error": error, "evicted": evicted}));
        event.capability_name = Some(instance.name.clone());
        event.job_id.clone_from(&envelope.job_id);
        event.run_id.clone_from(&envelope.run_id);
        self.inner.stores.journal.append(&event)?;
        self.reload(&instance.id).await
    }

    /// Frees resources for a retry: shuts down the backend of every idle instance but `except`
    /// (each comes back on its next call), most expensive
    /// first by measured peak (GPU memory, then RAM), least recently used first among equals.
    /// Returns the evicted ids (each also journaled as `capability_evicted`).
    async fn evict_idle(&self, except: &str) -> Result<Vec<String>> {
        self.flush_samples()?;
        let mut idle: Vec<(f64, f64, Instant, String)> = Vec::new();
        for i in self.instances() {
            if i.id == except
                || i.attached
                || i.evicted.load(Ordering::SeqCst)
                || i.permits.available_permits() < i.max_concurrency
            {
                continue;
            }
            let peaks = self.inner.stores.empirical.list_records(Some(&i.name))?;
            let peak = |f: fn(&crate::store::EmpiricalRecord) -> f64| {
                peaks
                    .iter()
                    .filter(|r| r.instance_id == i.id)
                    .map(f)
                    .fold(0.0, f64::max)
            };
            let last = *i.last_used.lock();
            idle.push((
                peak(|r| r.gpu_memory_mb_peak_max),
                peak(|r| r.memory_mb_peak_max),
                last,
                i.id.clone(),
            ));
        }
        idle.sort_by(|a, b| {
            b.0.total_cmp(&a.0)
                .then(b.1.total_cmp(&a.1))
                .then(a.2.cmp(&b.2))
        });
        let mut evicted = Vec::new();
        for (gpu, ram, _, id) in idle {
            let Ok(instance) = self.instance(&id) else {
                continue;
            };
            // Every permit is held while its backend goes: a call arriving meanwhile waits,
            // then finds it evicted and brings it back; one already running keeps it.
            let cap = u32::try_from(instance.max_concurrency).unwrap_or(u32::MAX);
            let Ok(_all) = instance.permits.try_acquire_many(cap) else {
                continue;
            };
            self.journal_event(
                &instance,
                event_types::CAPABILITY_EVICTED,
                json!({"gpu_memory_mb_peak": gpu, "memory_mb_peak": ram, "for": except}),
            )?;
            // The instance stays registered (jobs queued for it keep their target); its
            // backend goes, and its next call brings it back.
            instance.evicted.store(true, Ordering::SeqCst);
            let _ = instance.backend().shutdown().await;
            evicted.push(id);
        }
        Ok(evicted)
    }

    /// CPU percent, RSS and GPU memory (MB) of a worker and its descendants, measured after
    /// a call (sysinfo + NVML, on a blocking thread: a process-table scan takes milliseconds).
    async fn measure(&self, instance: &Instance, pid: u32) -> (f64, f64, f64) {
        if let Some((at, usage)) = *instance.measured.lock()
            && at.elapsed() < MEASURE_REUSE
        {
            return usage;
        }
        let usage = self.measure_now(pid).await;
        *instance.measured.lock() = Some((Instant::now(), usage));
        usage
    }

    async fn measure_now(&self, pid: u32) -> (f64, f64, f64) {
        let telemetry = self.inner.telemetry.clone();
        tokio::task::spawn_blocking(move || {
            let Some(tree) = telemetry.process_tree(pid) else {
                return (0.0, 0.0, 0.0);
            };
            let gpu = telemetry
                .gpu_memory_of(&tree.subtree_pids)
                .map_or(0.0, |g| g.gpu_memory_mb);
            (tree.cpu_percent, tree.memory_rss_mb, gpu)
        })
        .await
        .unwrap_or((0.0, 0.0, 0.0))
    }

    fn record(
        &self,
        instance: &Instance,
        config_hash: &str,
        control: &CallControl,
        started: Instant,
        ok: bool,
        (cpu, rss, gpu): (f64, f64, f64),
    ) -> Result<()> {
        let mut sample = ResourceSample::new(cpu, rss, gpu, started.elapsed().as_secs_f64(), ok);
        for (unit, amount) in control.usage() {
            if let Some(n) = amount.as_f64() {
                sample.api_usage.insert(unit, n);
            }
        }
        {
            let mut profile = instance.profile.lock();
            if *instance.config_hash.lock() == config_hash {
                profile
                    .get_or_insert_with(|| {
                        EmpiricalRecord::first(&instance.id, &instance.name, config_hash)
                    })
                    .fold(&sample);
            }
        }
        let first = {
            let mut pending = self.inner.samples.lock();
            pending.push(BufferedSample {
                instance_id: instance.id.clone(),
                capability_name: instance.name.clone(),
                config_hash: config_hash.to_owned(),
                sample,
            });
            pending.len() == 1
        };
        if first {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    let weak = Arc::downgrade(&self.inner);
                    rt.spawn(async move {
                        tokio::time::sleep(SAMPLE_FLUSH).await;
                        let Some(inner) = weak.upgrade() else { return };
                        let manager = CapabilityManager { inner };
                        // SQLite waits on a blocking thread, never on the runtime's.
                        let written =
                            tokio::task::spawn_blocking(move || manager.flush_samples()).await;
                        if let Ok(Err(e)) = written {
                            tracing::error!(error = %e, "cannot write empirical samples");
                        }
                    });
                }
                Err(_) => self.flush_samples()?,
            }
        }
        Ok(())
    }

    /// Journals the accounts a call reported (once each), stamped with the instance and the
    /// call's envelope (job, run, composition, node, actor), `worker_reported`.
    ///
    /// Written in one transaction, on a blocking thread (never on the runtime's).
    async fn journal_accounts(
        &self,
        instance: &Instance,
        control: &CallControl,
        envelope: &cjm_guest::contract::Envelope,
    ) -> Result<()> {
        let rows: Vec<JournalEvent> = control
            .take_accounts()
            .into_iter()
            .map(|account| {
                let mut e = JournalEvent::new(account.event_type)
                    .instance(&instance.id)
                    .payload(account.payload);
                e.capability_name = Some(instance.name.clone());
                e.job_id.clone_from(&envelope.job_id);
                e.run_id.clone_from(&envelope.run_id);
                e.composition_id.clone_from(&envelope.composition_id);
                e.node_id.clone_from(&envelope.node_id);
                e.actor.clone_from(&envelope.actor);
                e.worker_reported = true;
                e
            })
            .collect();
        if rows.is_empty() {
            return Ok(());
        }
        let manager = self.clone();
        tokio::task::spawn_blocking(move || manager.inner.stores.journal.append_batch(&rows))
            .await
            .map_err(|e| Error::job(JobError::fatal(format!("journal write failed: {e}"))))??;
        Ok(())
    }

    /// Writes the buffered after-call samples into the empirical store (one transaction).
    pub fn flush_samples(&self) -> Result<()> {
        let samples = std::mem::take(&mut *self.inner.samples.lock());
        self.inner.stores.empirical.record_samples(&samples)
    }
}

/// A method whose arguments its author typed is checked before the call reaches the
/// capability (its schema compiled once per instance and backend), in place: the kwargs are
/// moved into a value and back, never copied.
fn check_params(instance: &Instance, request: &mut CallRequest) -> Result<()> {
    if let crate::backend::Target::Task { task, method } = &request.target
        && let Some(validator) = instance.params_validator(method)?
    {
        let kwargs = Value::Object(std::mem::take(&mut request.kwargs));
        let checked = config::validate_kwargs(
            instance.name(),
            &format!("{task}.{method}"),
            &validator,
            &kwargs,
        );
        if let Value::Object(map) = kwargs {
            request.kwargs = map;
        }
        checked.map_err(Error::job)?;
    }
    Ok(())
}

/// `call` under its deadline, abandoned `grace` after it (when there is a grace: for a
/// backend the caller attached, which may not honour deadlines), failing as a `transient`
/// error like the built-in backends' own. Dropping the call is its cancellation.
async fn past_deadline_backstop(
    id: &str,
    call: impl std::future::Future<Output = Result<Value>>,
    control: &CallControl,
    grace: Option<std::time::Duration>,
) -> Result<Value> {
    let (Some(deadline), Some(grace)) = (control.deadline(), grace) else {
        return call.await;
    };
    match tokio::time::timeout_at((deadline + grace).into(), call).await {
        Ok(result) => result,
        Err(_) => Err(Error::job(JobError::transient(format!(
            "capability instance '{id}': the call ran past its time limit and was abandoned"
        )))),
    }
}
