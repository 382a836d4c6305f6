//! The wasm side of the SDK: the component's exports forward to one [`Hosted`] capability,
//! host services go through the component's imports. Used by [`crate::export_capability!`].

pub mod bindings;

use std::cell::RefCell;

use serde_json::{Map, Value};

use self::bindings::cjm::capability::host;
use self::bindings::cjm::capability::types as wit;
use crate::capability::Capability;
use crate::context::{Ctx, HostServices, LogLevel};
use crate::contract::{CallError, Envelope, ErrorCategory, JobError, ResourceShortfall};
use crate::hosted::{DynCapability, Hosted};

thread_local! {
    static INSTANCE: RefCell<Option<Box<dyn DynCapability>>> = const { RefCell::new(None) };
}

/// Host services reached through the component's imports.
struct Imports;

impl HostServices for Imports {
    fn progress(&self, fraction: f64, message: &str) {
        host::progress(fraction, message);
    }
    fn cancelled(&self) -> bool {
        host::cancelled()
    }
    fn log(&self, level: LogLevel, logger: &str, message: &str) {
        let level = match level {
            LogLevel::Debug => host::LogLevel::Debug,
            LogLevel::Info => host::LogLevel::Info,
            LogLevel::Warning => host::LogLevel::Warning,
            LogLevel::Error => host::LogLevel::Error,
            LogLevel::Critical => host::LogLevel::Critical,
        };
        host::log(level, logger, message);
    }
    fn record_account(&self, event_type: &str, payload: &Value) {
        host::record_account(event_type, &payload.to_string());
    }
    fn report_usage(&self, usage: &Value) {
        host::report_usage(&usage.to_string());
    }
}

/// Runs `f` on the component's one capability, creating it on first use. A panic is reported
/// to the host (as a CRITICAL record of logger `panic`) before the instance traps, so the
/// host's error says why.
fn with<C: Capability, R>(
    f: impl FnOnce(&mut dyn DynCapability, &Ctx<'_>) -> R,
    env: &Envelope,
) -> R {
    INSTANCE.with(|cell| {
        let mut slot = cell.borrow_mut();
        let cap = slot.get_or_insert_with(|| {
            std::panic::set_hook(Box::new(|info| {
                host::log(host::LogLevel::Critical, "panic", &info.to_string());
            }));
            Box::new(Hosted::<C>::new())
        });
        let out = f(cap.as_mut(), &Ctx::new(&Imports, env));
        // The guest's std buffers a line until its newline: hand over what a call printed
        // without one, so the host sees every byte a call wrote before the call returns.
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
        out
    })
}

fn parse_json(what: &str, text: &str) -> Result<Value, JobError> {
    serde_json::from_str(text).map_err(|e| {
        JobError::user_input(format!("{what} is not valid JSON: {e}")).with_fields([what])
    })
}

fn parse_object(what: &str, text: &str) -> Result<Map<String, Value>, JobError> {
    match parse_json(what, text)? {
        Value::Object(map) => Ok(map),
        Value::Null => Ok(Map::new()),
        _ => Err(JobError::user_input(format!("{what} must be a JSON object")).with_fields([what])),
    }
}

fn envelope(e: wit::Envelope) -> Envelope {
    let control = e
        .control
        .and_then(|c| serde_json::from_str::<Map<String, Value>>(&c).ok())
        .unwrap_or_default();
    Envelope {
        job_id: e.job_id,
        run_id: e.run_id,
        composition_id: e.composition_id,
        node_id: e.node_id,
        actor: e.actor,
        control,
        // The WIT envelope does not carry it: the host records a guest's log records as
        // events of the call's span instead.
        traceparent: None,
    }
}

fn job_error(e: JobError) -> wit::JobError {
    wit::JobError {
        category: match e.category {
            ErrorCategory::UserInput => wit::ErrorCategory::UserInput,
            ErrorCategory::Transient => wit::ErrorCategory::Transient,
            ErrorCategory::Resource => wit::ErrorCategory::Resource,
            ErrorCategory::Fatal => wit::ErrorCategory::Fatal,
        },
        message: e.message,
        retriable: e.retriable,
        original_exc_repr: e.original_exc_repr,
        traceback: e.traceback,
        retry_after_seconds: e.retry_after_seconds,
        fields_invalid: e.fields_invalid,
        resource_shortfall: e.resource_shortfall.map(
            |ResourceShortfall {
                 resource,
                 needed,
                 available,
             }| {
                wit::ResourceShortfall {
                    resource,
                    needed,
                    available,
                }
            },
        ),
    }
}

fn call_error(e: CallError) -> wit::CallError {
    match e {
        CallError::Failed(e) => wit::CallError::Failed(job_error(e)),
        CallError::Cancelled => wit::CallError::Cancelled,
        CallError::NotFound(what) => wit::CallError::NotFound(what),
    }
}

fn status(r: Result<crate::contract::Status, JobError>) -> Result<String, wit::JobError> {
    r.map(|s| s.status).map_err(job_error)
}

#[doc(hidden)]
pub fn info<C: Capability>() -> wit::CapabilityInfo {
    with::<C, _>(
        |cap, _| {
            let info = cap.info();
            wit::CapabilityInfo {
                name: info.name,
                version: info.version,
                description: info.description,
                config_schema: info.config_schema.to_string(),
                structural_surface: serde_json::to_string(&info.structural_surface)
                    .unwrap_or_default(),
                tasks: serde_json::to_string(&info.tasks).unwrap_or_default(),
            }
        },
        &Envelope::default(),
    )
}

#[doc(hidden)]
pub fn initialize<C: Capability>(config: String) -> Result<(), wit::JobError> {
    let config = parse_json("config", &config).map_err(job_error)?;
    with::<C, _>(|cap, cx| cap.initialize(config, cx), &Envelope::default()).map_err(job_error)
}

#[doc(hidden)]
pub fn reconfigure<C: Capability>(old: String, new: String) -> Result<(), wit::JobError> {
    let old = parse_json("old_config", &old).map_err(job_error)?;
    let new = parse_json("new_config", &new).map_err(job_error)?;
    with::<C, _>(
        |cap, cx| cap.reconfigure(old, new, cx),
        &Envelope::default(),
    )
    .map_err(job_error)
}

#[doc(hidden)]
pub fn current_config<C: Capability>() -> String {
    with::<C, _>(
        |cap, _| cap.current_config().to_string(),
        &Envelope::default(),
    )
}

#[doc(hidden)]
pub fn config_options<C: Capability>() -> String {
    with::<C, _>(
        |cap, _| cap.config_options().to_string(),
        &Envelope::default(),
    )
}

#[doc(hidden)]
pub fn execute<C: Capability>(
    args: String,
    kwargs: String,
    env: wit::Envelope,
) -> Result<String, wit::CallError> {
    let run = || -> Result<String, CallError> {
        let args = match parse_json("args", &args)? {
            Value::Array(items) => items,
            Value::Null => Vec::new(),
            _ => {
                return Err(JobError::user_input("args must be a JSON list")
                    .with_fields(["args"])
                    .into());
            }
        };
        let kwargs = parse_object("kwargs", &kwargs)?;
        let value = with::<C, _>(|cap, cx| cap.execute(cx, args, kwargs), &envelope(env))?;
        Ok(value.to_string())
    };
    run().map_err(call_error)
}

#[doc(hidden)]
pub fn task<C: Capability>(
    task: String,
    method: String,
    kwargs: String,
    env: wit::Envelope,
) -> Result<String, wit::CallError> {
    let run = || -> Result<String, CallError> {
        let kwargs = parse_object("kwargs", &kwargs)?;
        let value = with::<C, _>(
            |cap, cx| cap.task(cx, &task, &method, kwargs),
            &envelope(env),
        )?;
        Ok(value.to_string())
    };
    run().map_err(call_error)
}

#[doc(hidden)]
pub fn prefetch<C: Capability>() -> Result<String, wit::JobError> {
    status(with::<C, _>(
        |cap, cx| cap.prefetch(cx),
        &Envelope::default(),
    ))
}

#[doc(hidden)]
pub fn cleanup<C: Capability>() -> Result<(), wit::JobError> {
    with::<C, _>(|cap, _| cap.cleanup(), &Envelope::default()).map_err(job_error)
}

#[doc(hidden)]
pub fn on_enable<C: Capability>() -> Result<String, wit::JobError> {
    status(with::<C, _>(|cap, _| cap.on_enable(), &Envelope::default()))
}

#[doc(hidden)]
pub fn on_disable<C: Capability>() -> Result<String, wit::JobError> {
    status(with::<C, _>(
        |cap, _| cap.on_disable(),
        &Envelope::default(),
    ))
}

/// Exports a [`Capability`] as the component's `guest` interface.
#[macro_export]
macro_rules! export_capability {
    ($cap:ty) => {
        #[doc(hidden)]
        pub struct __CjmGuest;

        const _: () = {
            use $crate::wasm::bindings::cjm::capability::types as wit;
            use $crate::wasm::bindings::exports::cjm::capability::guest::Guest;

            impl Guest for __CjmGuest {
                fn info() -> wit::CapabilityInfo {
                    $crate::wasm::info::<$cap>()
                }
                fn initialize(config: String) -> Result<(), wit::JobError> {
                    $crate::wasm::initialize::<$cap>(config)
                }
                fn reconfigure(old: String, new: String) -> Result<(), wit::JobError> {
                    $crate::wasm::reconfigure::<$cap>(old, new)
                }
                fn current_config() -> String {
                    $crate::wasm::current_config::<$cap>()
                }
                fn config_options() -> String {
                    $crate::wasm::config_options::<$cap>()
                }
                fn execute(args: String, kwargs: String, env: wit::Envelope) -> Result<String, wit::CallError> {
                    $crate::wasm::execute::<$cap>(args, kwargs, env)
                }
                fn task(
                    task: String,
                    method: String,
                    kwargs: String,
                    env: wit::Envelope,
                ) -> Result<String, wit::CallError> {
                    $crate::wasm::task::<$cap>(task, method, kwargs, env)
                }
                fn prefetch() -> Result<String, wit::JobError> {
                    $crate::wasm::prefetch::<$cap>()
                }
                fn cleanup() -> Result<(), wit::JobError> {
                    $crate::wasm::cleanup::<$cap>()
                }
                fn on_enable() -> Result<String, wit::JobError> {
                    $crate::wasm::on_enable::<$cap>()
                }
                fn on_disable() -> Result<String, wit::JobError> {
                    $crate::wasm::on_disable::<$cap>()
                }
            }
        };

        $crate::wasm::bindings::export_guest!(__CjmGuest with_types_in $crate::wasm::bindings);
    };
}
