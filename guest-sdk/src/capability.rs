//! The `Capability` trait an author implements, and the task registry from which the
//! structural surface is derived.

use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::context::Ctx;
use crate::contract::{CallError, JobError, MethodSurface, Status};

/// Keyword arguments of a call, key order kept.
pub type Kwargs = Map<String, Value>;

/// The result of a call: any JSON value, or why there is none.
pub type CallResult = Result<Value, CallError>;

/// A capability: a tool with a declared contract.
///
/// The same implementation is exported as a wasm component (`cjm_guest::export_capability!`)
/// and served as a native worker (`cjm-native-worker`). Its configuration is a serde +
/// schemars struct, so the JSON Schema the host validates against comes for free; its task
/// methods are registered in [`Capability::tasks`] with their parameter names, so the
/// structural surface adapters are matched against is derived from the code that serves it.
pub trait Capability: Sized + Send + 'static {
    /// The configuration. `Default` gives the defaults the schema advertises.
    type Config: Serialize + DeserializeOwned + JsonSchema + Default + Clone + Send;

    /// The capability name.
    const NAME: &'static str;
    /// Its version.
    const VERSION: &'static str;
    /// A one-line description.
    const DESCRIPTION: &'static str = "";

    /// Builds the capability from its effective configuration.
    fn initialize(config: &Self::Config, cx: &Ctx<'_>) -> Result<Self, JobError>;

    /// Moves from the old configuration to the new one. By default the capability is built
    /// again from the new configuration.
    fn reconfigure(
        &mut self,
        _old: &Self::Config,
        new: &Self::Config,
        cx: &Ctx<'_>,
    ) -> Result<(), JobError> {
        *self = Self::initialize(new, cx)?;
        Ok(())
    }

    /// The main entry point.
    fn execute(&mut self, cx: &Ctx<'_>, args: Vec<Value>, kwargs: Kwargs) -> CallResult;

    /// Registers the typed task methods this capability serves.
    fn tasks(_tasks: &mut Tasks<Self>) {}

    /// Live options per config field (`{field: {"options": [...], "constraints": {}}}`).
    fn config_options(&self) -> Value {
        Value::Object(Map::new())
    }

    /// Fetches what the capability needs ahead of time.
    fn prefetch(&mut self, _cx: &Ctx<'_>) -> Result<Status, JobError> {
        Ok(Status::not_supported())
    }

    /// Releases what the capability holds.
    fn cleanup(&mut self) -> Result<(), JobError> {
        Ok(())
    }

    /// Called when the capability is enabled.
    fn on_enable(&mut self) -> Result<Status, JobError> {
        Ok(Status::not_supported())
    }

    /// Called when the capability is disabled.
    fn on_disable(&mut self) -> Result<Status, JobError> {
        Ok(Status::not_supported())
    }
}

/// A task method handler.
pub type Handler<C> = fn(&mut C, &Ctx<'_>, Kwargs) -> CallResult;

pub(crate) struct TaskMethod<C> {
    pub(crate) task: &'static str,
    pub(crate) surface: MethodSurface,
    pub(crate) handler: Handler<C>,
}

/// The registry of task methods of a capability.
pub struct Tasks<C> {
    pub(crate) methods: Vec<TaskMethod<C>>,
}

impl<C> Tasks<C> {
    pub(crate) fn new() -> Self {
        Tasks {
            methods: Vec::new(),
        }
    }

    /// Registers `method` of `task`, with its parameters written as in a Python signature
    /// (`&["text", "**kwargs"]`).
    pub fn method(
        &mut self,
        task: &'static str,
        method: &str,
        params: &[&str],
        handler: Handler<C>,
    ) -> &mut Self {
        self.methods.push(TaskMethod {
            task,
            surface: MethodSurface::from_params(method, params),
            handler,
        });
        self
    }

    /// Registers `method` of `task` with its keyword arguments declared as the type `P` (a
    /// serde and schemars struct): its JSON Schema goes into the structural surface, the host
    /// checks every call against it before the call reaches the capability, and MCP clients
    /// and the API show it. Read them in the handler with [`args`].
    pub fn typed<P: JsonSchema>(
        &mut self,
        task: &'static str,
        method: &str,
        handler: Handler<C>,
    ) -> &mut Self {
        let schema = serde_json::to_value(schemars::schema_for!(P)).unwrap_or_default();
        self.methods.push(TaskMethod {
            task,
            surface: MethodSurface::from_schema(method, schema),
            handler,
        });
        self
    }

    pub(crate) fn find(&self, task: &str, method: &str) -> Option<&TaskMethod<C>> {
        self.methods
            .iter()
            .find(|m| m.task == task && m.surface.name == method)
    }

    pub(crate) fn task_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.methods.iter().map(|m| m.task.to_owned()).collect();
        names.sort();
        names.dedup();
        names
    }
}

/// Reads the keyword arguments as the type a method declared with [`Tasks::typed`]; a
/// mismatch is a `user_input` error naming the field when serde says which.
pub fn args<P: DeserializeOwned>(kwargs: &Kwargs) -> Result<P, JobError> {
    let value = Value::Object(kwargs.clone());
    serde_path_to_error::deserialize(value).map_err(|e| {
        let message = e.inner().to_string();
        // The path names a mistyped field; a missing or unknown one is in the message
        // ("missing field `text`").
        let field = e
            .path()
            .iter()
            .next()
            .map(|segment| segment.to_string())
            .or_else(|| {
                (message.starts_with("missing field") || message.starts_with("unknown field"))
                    .then(|| message.split('`').nth(1).map(str::to_owned))
                    .flatten()
            });
        match field {
            Some(f) => {
                JobError::user_input(format!("invalid argument '{f}': {message}")).with_fields([f])
            }
            None => JobError::user_input(format!("invalid arguments: {message}")),
        }
    })
}

/// Reads one keyword argument: a missing or mistyped required argument is a `user_input`
/// error naming the field.
pub fn arg<T: DeserializeOwned>(kwargs: &Kwargs, name: &str) -> Result<T, JobError> {
    let value = kwargs.get(name).ok_or_else(|| {
        JobError::user_input(format!("missing required argument '{name}'")).with_fields([name])
    })?;
    T::deserialize(value).map_err(|e| {
        JobError::user_input(format!("invalid argument '{name}': {e}")).with_fields([name])
    })
}

/// Reads an optional keyword argument (absent or null gives `None`).
pub fn opt_arg<T: DeserializeOwned>(kwargs: &Kwargs, name: &str) -> Result<Option<T>, JobError> {
    match kwargs.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => arg(kwargs, name).map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::ErrorCategory;

    #[test]
    fn arg_errors_name_the_field() {
        let kwargs: Kwargs = serde_json::from_str(r#"{"text": 3}"#).unwrap();
        let e = arg::<String>(&kwargs, "text").unwrap_err();
        assert_eq!(e.category, ErrorCategory::UserInput);
        assert_eq!(e.fields_invalid.as_deref(), Some(&["text".to_owned()][..]));
        let e = arg::<String>(&kwargs, "other").unwrap_err();
        assert!(e.message.contains("missing required argument 'other'"));
        assert_eq!(opt_arg::<String>(&kwargs, "none").unwrap(), None);
    }

    #[test]
    fn typed_args_name_the_mistyped_or_missing_field() {
        #[derive(Debug, serde::Deserialize)]
        struct Args {
            #[allow(dead_code)]
            text: String,
            #[allow(dead_code)]
            n: Option<u32>,
        }
        let bad: Kwargs = serde_json::from_str(r#"{"text": "x", "n": "three"}"#).unwrap();
        let e = args::<Args>(&bad).unwrap_err();
        assert_eq!(e.fields_invalid.as_deref(), Some(&["n".to_owned()][..]));
        let missing: Kwargs = serde_json::from_str(r#"{"n": 1}"#).unwrap();
        let e = args::<Args>(&missing).unwrap_err();
        assert_eq!(e.category, ErrorCategory::UserInput);
        assert_eq!(e.fields_invalid.as_deref(), Some(&["text".to_owned()][..]));
        let ok: Kwargs = serde_json::from_str(r#"{"text": "x", "extra": 1}"#).unwrap();
        assert!(args::<Args>(&ok).is_ok());
    }
}
