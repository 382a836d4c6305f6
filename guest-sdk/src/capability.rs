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
}
