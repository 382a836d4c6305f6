//! `Hosted<C>`: a [`Capability`] behind the object-safe, JSON-in/JSON-out [`DynCapability`]
//! the wasm export and the native worker both serve. Config parsing, the not-initialized
//! state, task dispatch and the derived structural surface live here, once.

use schemars::schema_for;
use serde_json::{Map, Value};

use crate::capability::{Capability, Kwargs, Tasks};
use crate::context::Ctx;
use crate::contract::{
    CallError, CapabilityInfo, JobError, MethodSurface, Status, StructuralSurface,
};

/// A capability instance reached through JSON values, whatever its Rust type.
pub trait DynCapability: Send {
    /// Identity, config schema, structural surface, tasks.
    fn info(&self) -> CapabilityInfo;
    /// Applies the effective configuration (a JSON object) and builds the capability.
    fn initialize(&mut self, config: Value, cx: &Ctx<'_>) -> Result<(), JobError>;
    /// Moves from `old` to `new`; an uninitialized capability is initialized with `new`.
    fn reconfigure(&mut self, old: Value, new: Value, cx: &Ctx<'_>) -> Result<(), JobError>;
    /// The configuration in force (the defaults before `initialize`).
    fn current_config(&self) -> Value;
    /// Live options per config field.
    fn config_options(&self) -> Value;
    /// Runs the main entry point.
    fn execute(
        &mut self,
        cx: &Ctx<'_>,
        args: Vec<Value>,
        kwargs: Kwargs,
    ) -> Result<Value, CallError>;
    /// Runs one task method.
    fn task(
        &mut self,
        cx: &Ctx<'_>,
        task: &str,
        method: &str,
        kwargs: Kwargs,
    ) -> Result<Value, CallError>;
    /// Prefetches.
    fn prefetch(&mut self, cx: &Ctx<'_>) -> Result<Status, JobError>;
    /// Releases what the capability holds.
    fn cleanup(&mut self) -> Result<(), JobError>;
    /// Enable hook.
    fn on_enable(&mut self) -> Result<Status, JobError>;
    /// Disable hook.
    fn on_disable(&mut self) -> Result<Status, JobError>;
}

/// The members every capability has, whatever its tasks, as the Python base class exposes
/// them: protocols may name them (`get_current_config()` is a member of most).
const BASE_MEMBERS: &[(&str, &[&str])] = &[
    ("cleanup", &[]),
    ("execute", &["*args", "**kwargs"]),
    ("get_config_schema", &[]),
    ("get_current_config", &[]),
    ("initialize", &["config=None"]),
];

/// A [`Capability`] with its configuration and task registry, erased to [`DynCapability`].
pub struct Hosted<C: Capability> {
    config: C::Config,
    instance: Option<C>,
    tasks: Tasks<C>,
}

impl<C: Capability> Default for Hosted<C> {
    fn default() -> Self {
        Self::new()
    }
}

impl<C: Capability> Hosted<C> {
    /// An uninitialized capability with the default configuration.
    pub fn new() -> Self {
        let mut tasks = Tasks::new();
        C::tasks(&mut tasks);
        Hosted {
            config: C::Config::default(),
            instance: None,
            tasks,
        }
    }

    /// The structural surface: the base members plus every registered task method.
    pub fn surface(&self) -> StructuralSurface {
        let mut methods: Vec<MethodSurface> = BASE_MEMBERS
            .iter()
            .map(|(name, params)| MethodSurface::from_params(name, params))
            .collect();
        methods.extend(self.tasks.methods.iter().map(|m| m.surface.clone()));
        StructuralSurface {
            methods,
            properties: Vec::new(),
            attributes: Vec::new(),
        }
        .normalized()
    }

    fn parse_config(config: Value) -> Result<C::Config, JobError> {
        // Null means "the defaults", as an absent config does for the Python worker.
        let config = match config {
            Value::Null => Value::Object(Map::new()),
            other => other,
        };
        serde_json::from_value(config).map_err(|e| {
            let field = field_of_serde_error(&e.to_string());
            let err = JobError::user_input(format!("invalid configuration: {e}"));
            match field {
                Some(f) => err.with_fields([f]),
                None => err,
            }
        })
    }

    fn instance(&mut self) -> Result<&mut C, JobError> {
        self.instance
            .as_mut()
            .ok_or_else(|| JobError::fatal(format!("capability '{}' is not initialized", C::NAME)))
    }
}

/// Pulls the field name out of serde's "unknown field `x`" / "missing field `x`" messages.
fn field_of_serde_error(msg: &str) -> Option<String> {
    let start = msg.find('`')? + 1;
    let len = msg[start..].find('`')?;
    Some(msg[start..start + len].to_owned())
}

impl<C: Capability> DynCapability for Hosted<C> {
    fn info(&self) -> CapabilityInfo {
        let schema = serde_json::to_value(schema_for!(C::Config)).unwrap_or(Value::Null);
        CapabilityInfo {
            name: C::NAME.to_owned(),
            version: C::VERSION.to_owned(),
            description: C::DESCRIPTION.to_owned(),
            config_schema: schema,
            structural_surface: self.surface(),
            tasks: self.tasks.task_names(),
            extra: Map::new(),
        }
    }

    fn initialize(&mut self, config: Value, cx: &Ctx<'_>) -> Result<(), JobError> {
        let config = Self::parse_config(config)?;
        if let Some(mut old) = self.instance.take() {
            old.cleanup()?;
        }
        self.instance = Some(C::initialize(&config, cx)?);
        self.config = config;
        Ok(())
    }

    fn reconfigure(&mut self, _old: Value, new: Value, cx: &Ctx<'_>) -> Result<(), JobError> {
        let new = Self::parse_config(new)?;
        match self.instance.as_mut() {
            Some(instance) => instance.reconfigure(&self.config, &new, cx)?,
            None => self.instance = Some(C::initialize(&new, cx)?),
        }
        self.config = new;
        Ok(())
    }

    fn current_config(&self) -> Value {
        serde_json::to_value(&self.config).unwrap_or(Value::Null)
    }

    fn config_options(&self) -> Value {
        self.instance
            .as_ref()
            .map(C::config_options)
            .unwrap_or_else(|| Value::Object(Map::new()))
    }

    fn execute(
        &mut self,
        cx: &Ctx<'_>,
        args: Vec<Value>,
        kwargs: Kwargs,
    ) -> Result<Value, CallError> {
        self.instance()?.execute(cx, args, kwargs)
    }

    fn task(
        &mut self,
        cx: &Ctx<'_>,
        task: &str,
        method: &str,
        kwargs: Kwargs,
    ) -> Result<Value, CallError> {
        // The Python worker's 404 details, word for word: a client cannot tell the kinds apart.
        use crate::python::job_error::{py_list_repr, py_str_repr};
        let bound = self.tasks.task_names();
        if !bound.iter().any(|t| t == task) {
            return Err(CallError::NotFound(format!(
                "No adapter bound for task {} (bound: {})",
                py_str_repr(task),
                py_list_repr(&bound)
            )));
        }
        if method.is_empty() || method.starts_with('_') {
            return Err(CallError::NotFound(format!(
                "Invalid task method {}",
                py_str_repr(method)
            )));
        }
        let handler = self
            .tasks
            .find(task, method)
            .map(|m| m.handler)
            .ok_or_else(|| {
                CallError::NotFound(format!(
                    "Task {} adapter has no method {}",
                    py_str_repr(task),
                    py_str_repr(method)
                ))
            })?;
        handler(self.instance()?, cx, kwargs)
    }

    fn prefetch(&mut self, cx: &Ctx<'_>) -> Result<Status, JobError> {
        self.instance()?.prefetch(cx)
    }

    fn cleanup(&mut self) -> Result<(), JobError> {
        match self.instance.take() {
            Some(mut instance) => instance.cleanup(),
            None => Ok(()),
        }
    }

    fn on_enable(&mut self) -> Result<Status, JobError> {
        self.instance()?.on_enable()
    }

    fn on_disable(&mut self) -> Result<Status, JobError> {
        self.instance()?.on_disable()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::NullServices;
    use crate::contract::{Envelope, ErrorCategory};
    use schemars::JsonSchema;
    use serde::{Deserialize, Serialize};
    use serde_json::json;

    #[derive(Serialize, Deserialize, JsonSchema, Default, Clone)]
    #[serde(deny_unknown_fields, default)]
    struct EchoConfig {
        prefix: String,
    }

    struct Echo {
        prefix: String,
    }

    impl Capability for Echo {
        type Config = EchoConfig;
        const NAME: &'static str = "echo";
        const VERSION: &'static str = "1.0.0";

        fn initialize(config: &EchoConfig, _: &Ctx<'_>) -> Result<Self, JobError> {
            Ok(Echo {
                prefix: config.prefix.clone(),
            })
        }

        fn execute(
            &mut self,
            _: &Ctx<'_>,
            args: Vec<Value>,
            _: Kwargs,
        ) -> Result<Value, CallError> {
            Ok(json!(format!("{}{}", self.prefix, args.len())))
        }

        fn tasks(tasks: &mut Tasks<Self>) {
            tasks.method("echo", "shout", &["text", "**kwargs"], |me, _, kw| {
                let text: String = crate::arg(&kw, "text")?;
                Ok(json!(format!("{}{}", me.prefix, text.to_uppercase())))
            });
        }
    }

    #[test]
    fn lifecycle_dispatch_and_surface() {
        let services = NullServices;
        let env = Envelope::default();
        let cx = Ctx::new(&services, &env);
        let mut h = Hosted::<Echo>::new();
        let err = h.execute(&cx, vec![], Kwargs::new()).unwrap_err();
        assert_eq!(err.job_error().unwrap().category, ErrorCategory::Fatal);

        h.initialize(json!({"prefix": "> "}), &cx).unwrap();
        assert_eq!(
            h.execute(&cx, vec![json!(1)], Kwargs::new()).unwrap(),
            json!("> 1")
        );
        let kw: Kwargs = serde_json::from_value(json!({"text": "hi"})).unwrap();
        assert_eq!(h.task(&cx, "echo", "shout", kw).unwrap(), json!("> HI"));
        assert!(matches!(
            h.task(&cx, "echo", "whisper", Kwargs::new()),
            Err(CallError::NotFound(_))
        ));

        let bad = h
            .initialize(json!({"prefix": "x", "nope": 1}), &cx)
            .unwrap_err();
        assert_eq!(
            bad.fields_invalid.as_deref(),
            Some(&["nope".to_owned()][..])
        );

        let info = h.info();
        let names: Vec<_> = info
            .structural_surface
            .methods
            .iter()
            .map(|m| m.name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "cleanup",
                "execute",
                "get_config_schema",
                "get_current_config",
                "initialize",
                "shout"
            ]
        );
        assert_eq!(info.tasks, ["echo"]);
        assert_eq!(info.config_schema["properties"]["prefix"]["type"], "string");
    }
}
