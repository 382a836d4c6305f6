//! Calls on a worker: the [`Backend`] contract implemented over the worker's HTTP API, with
//! the call raced against its deadline and a forced cancel, progress polled beside it,
//! cooperative cancels posted, and streamed results read line by line.

use super::*;

impl NativeBackend {
    /// Runs one call, cancelling through the contract: a cooperative request becomes
    /// `POST /cancel`, a forced one kills the worker's process group (the next call respawns
    /// it), and so does the call's deadline (a `transient` error). Progress is polled from
    /// `GET /progress` while the call runs. The probes run beside the call with short
    /// timeouts, so a hung worker (SIGSTOP, a wedged event loop) delays neither the deadline
    /// nor a forced cancel.
    pub(super) async fn run_call(
        &self,
        request: CallRequest,
        control: Arc<CallControl>,
    ) -> Result<Value> {
        let (path, body) = request_body(request);
        let expired = async {
            match control.deadline() {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(expired);
        tokio::select! {
            started = self.ensure_worker() => started?,
            () = &mut expired => return Err(self.past_deadline()),
        };
        let pid = self.pid();
        let call = self.send(
            Method::POST,
            path,
            Some(body.to_string().into_bytes()),
            None,
        );
        tokio::pin!(call);
        let poller = self.progress_poller(Arc::clone(&control));
        let _stop_polling = AbortOnDrop(poller);
        // From `Running`: a cancel asked while the worker was still starting is seen at once.
        let mut seen = CancelState::Running;
        let answer = loop {
            tokio::select! {
                answer = &mut call => break answer,
                () = &mut expired => {
                    let error = self.past_deadline();
                    self.kill(pid, "the call ran past its deadline").await;
                    return Err(error);
                }
                state = control.changed_from(seen) => {
                    seen = state;
                    match state {
                        CancelState::Requested => self.post_cancel(),
                        CancelState::Forced => {
                            self.kill(pid, "forced cancellation").await;
                            return Err(Error::Cancelled);
                        }
                        CancelState::Running => {}
                    }
                }
            }
        };
        if control.forced() {
            return Err(Error::Cancelled);
        }
        let answer = answer?;
        if let Some(accounts) = &answer.accounts
            && let Ok(list) = serde_json::from_str::<Vec<Account>>(accounts)
        {
            // Masked once parsed: a secret JSON-escaped in the header text would not match.
            for mut a in list {
                self.inner.spec.masker.mask_json(&mut a.payload);
                control.push_account(a);
            }
        }
        self.scrub_records();
        self.answer_json(path, answer)
    }

    /// `value` with the worker's secrets masked in its strings.
    pub(super) fn masked(&self, value: &Value) -> Value {
        let mut value = value.clone();
        self.inner.spec.masker.mask_json(&mut value);
        value
    }

    /// Masks the worker's secrets in the log records it wrote into the diagnostics store.
    pub(super) fn scrub_records(&self) {
        if let Some(session) = self.session_id() {
            self.scrub_session(&session);
        }
    }

    pub(super) fn scrub_session(&self, session: &str) {
        let masker = &self.inner.spec.masker;
        if !masker.is_empty() {
            self.inner.sink.scrub(session, masker.values());
        }
    }

    pub(super) fn past_deadline(&self) -> Error {
        Error::job(
            JobError::transient(format!(
                "capability '{}': the call ran past its time limit and its worker was stopped",
                self.name()
            ))
            .stamped(self.name(), &self.session_id().unwrap_or_default()),
        )
    }

    /// `GET /progress` every `progress_poll` of its spec on the live worker (never spawning
    /// one), each bounded by [`PROBE_TIMEOUT`], into `control`.
    pub(super) fn progress_poller(&self, control: Arc<CallControl>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            // The first poll is one period away: most calls end before it.
            let every = me.inner.spec.progress_poll.max(Duration::from_millis(10));
            let mut poll = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last: Option<Progress> = None;
            loop {
                poll.tick().await;
                let Some(v) = me.probe(Method::GET, "/progress").await else {
                    continue;
                };
                if let Ok(p) = serde_json::from_value::<Progress>(me.masked(&v))
                    && last.as_ref() != Some(&p)
                {
                    control.set_progress(p.clone());
                    last = Some(p);
                }
            }
        })
    }

    /// `POST /cancel` to the live worker, in the background, bounded by [`PROBE_TIMEOUT`].
    pub(super) fn post_cancel(&self) {
        let me = self.clone();
        tokio::spawn(async move { me.probe(Method::POST, "/cancel").await });
    }
}

/// Aborts a background task when dropped (the call it served ended, or was dropped).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The client span of a call to the worker; when traced, the call's envelope carries its
/// context, so a worker that traces makes its spans children of it.
fn worker_call_span(request: &mut CallRequest, pid: Option<u32>) -> tracing::Span {
    let path = match request.target {
        Target::Execute { .. } => "/execute",
        Target::Task { .. } => "/task",
    };
    let span = tracing::info_span!(
        target: "cjm::trace",
        "cjm.worker.call",
        otel.name = format_args!("POST {path}"),
        otel.kind = "client",
        http.request.method = "POST",
        url.path = path,
        cjm.job_id = request.envelope.job_id.as_deref(),
        cjm.worker.pid = pid,
    );
    if let Some(traceparent) = crate::trace::traceparent(&span) {
        request.envelope.traceparent = Some(traceparent);
    }
    span
}

#[async_trait]
impl Backend for NativeBackend {
    fn kind(&self) -> RuntimeKind {
        self.inner.kind
    }

    fn info(&self) -> &CapabilityInfo {
        &self.inner.info
    }

    fn pid(&self) -> Option<u32> {
        NativeBackend::pid(self)
    }

    fn condition(&self) -> Condition {
        if let Some(why) = self.inner.supervision.lock().failed() {
            return Condition::CrashLooping(why.to_owned());
        }
        if self.inner.live.lock().is_some() {
            Condition::Ready
        } else {
            Condition::Starting
        }
    }

    async fn health(&self) -> Result<Value> {
        if let Some(why) = self.inner.supervision.lock().failed() {
            return Ok(json!({"status": "failed", "name": self.name(), "reason": why}));
        }
        self.get_json_within("/health", STATUS_TIMEOUT).await
    }

    async fn stats(&self) -> Result<Value> {
        self.get_json_within("/stats", STATUS_TIMEOUT).await
    }

    async fn initialize(&self, config: Value) -> Result<()> {
        let endpoint = self.ensure_worker().await?;
        self.post_initialize(&endpoint, &config).await?;
        *self.inner.config.lock() = Some(config);
        Ok(())
    }

    async fn reconfigure(&self, old: Value, new: Value) -> Result<()> {
        self.post_json(
            "/reconfigure",
            &json!({"old_config": old, "new_config": new}),
        )
        .await?;
        *self.inner.config.lock() = Some(new);
        Ok(())
    }

    async fn current_config(&self) -> Result<Value> {
        self.get_json("/config").await
    }

    async fn config_options(&self) -> Result<Value> {
        self.get_json("/config_options").await
    }

    async fn call(&self, mut request: CallRequest, control: Arc<CallControl>) -> Result<Value> {
        if control.cancel_requested() {
            return Err(Error::Cancelled);
        }
        let span = worker_call_span(&mut request, self.pid());
        crate::trace::within(span, self.run_call(request, control)).await
    }

    async fn call_stream(
        &self,
        mut request: CallRequest,
        control: Arc<CallControl>,
    ) -> Result<CallStream> {
        if control.cancel_requested() {
            return Err(Error::Cancelled);
        }
        // Ends when the stream starts (the worker's own spans cover the chunks).
        let _span = worker_call_span(&mut request, self.pid());
        let (_, body) = request_body(request);
        let busy = Busy::new(&self.inner);
        let answer = self
            .ensure_worker()
            .await?
            .request(Method::POST, "/execute_stream");
        let mut response = match answer
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => return Err(self.transport_failed("/execute_stream", e).await),
        };
        if response.status() != StatusCode::OK {
            let a = Answer {
                status: response.status(),
                accounts: None,
                body: response.bytes().await.unwrap_or_default(),
            };
            self.answer_json("/execute_stream", a)?;
            return Err(Error::job(JobError::transient(
                "execute_stream answered without a stream",
            )));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let me = self.clone();
        let session = self.session_id().unwrap_or_default();
        tokio::spawn(async move {
            let _busy = busy;
            let name = me.name().to_owned();
            let mut pending: Vec<u8> = Vec::new();
            let mut seen = control.state();
            loop {
                let chunk = tokio::select! {
                    chunk = response.chunk() => chunk,
                    state = control.changed_from(seen) => {
                        seen = state;
                        match state {
                            CancelState::Requested => me.post_cancel(),
                            CancelState::Forced => {
                                me.kill(me.pid(), "forced cancellation").await;
                                let _ = tx.send(Err(Error::Cancelled)).await;
                                return;
                            }
                            CancelState::Running => {}
                        }
                        continue;
                    }
                };
                let bytes = match chunk {
                    Ok(Some(bytes)) => bytes,
                    Ok(None) => break,
                    Err(e) => {
                        let _ = tx
                            .send(Err(me.transport_failed("/execute_stream", e).await))
                            .await;
                        return;
                    }
                };
                pending.extend_from_slice(&bytes);
                if pending.len() > MAX_STREAM_LINE && !pending.contains(&b'\n') {
                    let e = JobError::transient(format!(
                        "capability '{name}': a stream line grew past {MAX_STREAM_LINE} bytes without a newline"
                    ))
                    .stamped(&name, &session);
                    let _ = tx.send(Err(Error::job(e))).await;
                    return;
                }
                while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=end).collect();
                    let line = line.trim_ascii();
                    if line.is_empty() {
                        continue;
                    }
                    let item = stream_item(line, &name, &session, &me.inner.spec.masker);
                    let last = item.is_err();
                    if tx.send(item).await.is_err() || last {
                        return;
                    }
                }
            }
            let rest = pending.trim_ascii();
            if !rest.is_empty() {
                let _ = tx
                    .send(stream_item(rest, &name, &session, &me.inner.spec.masker))
                    .await;
            }
        });
        Ok(rx)
    }

    /// `POST /prefetch` while watching progress: when it does not move for the configured
    /// stall threshold, the worker is stopped and the prefetch fails with a timeout.
    async fn prefetch(&self) -> Result<Status> {
        let stall = self.inner.spec.prefetch_stall;
        let hook = self.status_hook("/prefetch");
        tokio::pin!(hook);
        let mut last: Option<Progress> = None;
        let mut since = Instant::now();
        let mut poll = tokio::time::interval_at(
            tokio::time::Instant::now() + self.inner.spec.progress_poll,
            self.inner.spec.progress_poll.min(stall),
        );
        loop {
            tokio::select! {
                status = &mut hook => return status,
                _ = poll.tick() => {
                    let now = self.get_json_within("/progress", STATUS_TIMEOUT).await.ok().and_then(|v| serde_json::from_value::<Progress>(v).ok());
                    if now.is_some() && now != last {
                        last = now;
                        since = Instant::now();
                    } else if since.elapsed() >= stall {
                        self.stop_worker("prefetch stalled").await;
                        return Err(Error::job(
                            JobError::transient(format!(
                                "capability '{}': prefetch made no progress for {:.0}s; the worker was stopped",
                                self.name(),
                                stall.as_secs_f64()
                            ))
                            .stamped(self.name(), ""),
                        ));
                    }
                }
            }
        }
    }

    async fn on_enable(&self) -> Result<Status> {
        self.status_hook("/on_enable").await
    }

    async fn on_disable(&self) -> Result<Status> {
        self.status_hook("/on_disable").await
    }

    async fn shutdown(&self) -> Result<()> {
        if self.live().is_some() {
            // Cleanup is best effort: the worker is terminated whatever it answers.
            let _ = tokio::time::timeout(
                Duration::from_secs(10),
                self.post_json("/cleanup", &json!({})),
            )
            .await;
        }
        self.stop_worker("unload").await;
        Ok(())
    }
}
