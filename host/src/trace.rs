//! One trace per job, across the service, the queue, the sandbox and native workers.
//!
//! The host's spans are `tracing` spans of the target [`TARGET`], bridged to OpenTelemetry by
//! `tracing-opentelemetry`:
//! - `http.request` (server): every API, dashboard and `/mcp` request, a child of the
//!   caller's W3C `traceparent` header when it sends one;
//! - `mcp.tools/call`: an MCP tool call, a child of its `_meta.traceparent` (SEP-414) or of
//!   its HTTP request;
//! - `cjm.submit`: a submission (one or many jobs);
//! - `cjm.admission`: a job's wait in the queue, from entering it to its admission;
//! - `cjm.attempt`: each run of a job (retries are siblings);
//! - `cjm.backend.call`: the call on the instance's backend (wasm or native); a wasm guest's
//!   log records are events of it;
//! - `cjm.worker.call` (client): the HTTP call to a native worker.
//!
//! A job carries its trace context in its call envelope ([`Envelope::traceparent`]): the
//! queue runs a job in another task than the one that submitted it, a recovering host may run
//! it after its own host is gone (the envelope is in the job's journaled spec), and a native
//! worker receives it with the call. Spans carry the job id (`cjm.job_id`), so journal rows
//! and traces join.
//!
//! Nothing is built unless a subscriber wants the target: with no exporter (see
//! [`otlp_from_env`], feature `otlp`) every span here is disabled at its callsite, and the
//! helpers below return at once.
//!
//! [`Envelope::traceparent`]: crate::contract::Envelope::traceparent

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The `tracing` target of every span and event that belongs to traces (and only to them:
/// log output leaves it out).
pub const TARGET: &str = "cjm::trace";

/// The W3C header (and envelope key) that carries a trace context.
pub const TRACEPARENT: &str = "traceparent";

/// A carrier of the one header this host propagates.
struct One<'a>(Option<&'a str>);

impl Extractor for One<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        if key == TRACEPARENT { self.0 } else { None }
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT]
    }
}

struct Out(Option<String>);

impl Injector for Out {
    fn set(&mut self, key: &str, value: String) {
        if key == TRACEPARENT {
            self.0 = Some(value);
        }
    }
}

/// Whether `span` is recorded for a trace (an exporter wants it).
pub fn is_traced(span: &Span) -> bool {
    !span.is_disabled()
}

/// The `traceparent` that makes a span a child of `span`; `None` when `span` is not traced.
pub fn traceparent(span: &Span) -> Option<String> {
    if !is_traced(span) {
        return None;
    }
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut out = Out(None);
    TraceContextPropagator::new().inject_context(&cx, &mut out);
    out.0
}

/// Makes `span` a child of the W3C trace context `traceparent` (a malformed one is ignored:
/// the span starts a trace of its own). Call it before the span is first entered.
pub fn set_parent(span: &Span, traceparent: Option<&str>) {
    let Some(value) = traceparent else { return };
    if !is_traced(span) || value.len() > 128 {
        return;
    }
    let cx = TraceContextPropagator::new().extract(&One(Some(value)));
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// Parents `span` on `traceparent` unless it already has a traced parent in this task (the
/// current span): a call's own trace context wins over one it was handed.
pub fn adopt(span: &Span, traceparent: Option<&str>) {
    if is_traced(span) && !in_trace(&Span::current()) {
        set_parent(span, traceparent);
    }
}

/// Whether `span` belongs to a trace (another layer, a log's, may record spans that are not
/// traced).
fn in_trace(span: &Span) -> bool {
    is_traced(span) && span.context().span().span_context().is_valid()
}

/// `future` inside `span` when it is traced; the bare future otherwise (no wrapper on the
/// untraced path).
pub fn within<F: std::future::Future>(
    span: Span,
    future: F,
) -> futures_util::future::Either<tracing::instrument::Instrumented<F>, F> {
    use tracing::Instrument as _;
    if is_traced(&span) {
        futures_util::future::Either::Left(future.instrument(span))
    } else {
        futures_util::future::Either::Right(future)
    }
}

/// Marks `span` failed with `message` (the job error's, never the kwargs).
pub fn fail(span: &Span, message: &str) {
    if is_traced(span) {
        span.set_status(opentelemetry::trace::Status::error(message.to_owned()));
    }
}

#[cfg(feature = "otlp")]
pub use otlp::{Exporter, otlp_from_env};

#[cfg(feature = "otlp")]
mod otlp {
    use tracing_subscriber::Layer;
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::registry::LookupSpan;

    /// The OTLP exporter behind the trace layer; dropping it sends what is buffered and stops
    /// it.
    pub struct Exporter {
        provider: opentelemetry_sdk::trace::SdkTracerProvider,
    }

    impl std::fmt::Debug for Exporter {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Exporter").finish_non_exhaustive()
        }
    }

    impl Drop for Exporter {
        fn drop(&mut self) {
            if let Err(e) = self.provider.shutdown() {
                tracing::warn!(error = %e, "the trace exporter did not shut down cleanly");
            }
        }
    }

    /// When `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set:
    /// a layer that records the host's spans (target [`TARGET`](super::TARGET) only) and
    /// exports them over OTLP/HTTP (protobuf) in batches, and the exporter to keep alive while
    /// the host runs. The standard `OTEL_*` variables apply (`OTEL_SERVICE_NAME`,
    /// `OTEL_BSP_SCHEDULE_DELAY`, `OTEL_EXPORTER_OTLP_HEADERS`, ...). `None` when neither is
    /// set: then no span is built.
    pub fn otlp_from_env<S>()
    -> Result<Option<(impl Layer<S>, Exporter)>, opentelemetry_otlp::ExporterBuildError>
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    {
        let set = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty());
        if !set("OTEL_EXPORTER_OTLP_ENDPOINT") && !set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            return Ok(None);
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()?;
        let mut resource = opentelemetry_sdk::Resource::builder();
        if !set("OTEL_SERVICE_NAME") {
            resource = resource.with_service_name("cjm-host");
        }
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build();
        use opentelemetry::trace::TracerProvider as _;
        let layer = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("cjm-host"))
            .with_location(false)
            .with_threads(false)
            .with_filter(Targets::new().with_target(super::TARGET, tracing::Level::TRACE));
        Ok(Some((layer, Exporter { provider })))
    }
}
