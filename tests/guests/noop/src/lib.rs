//! The cheapest possible capability: measures the host's own overhead.

use cjm_guest::{CallResult, Capability, Ctx, JobError, Kwargs, Tasks};
use serde_json::{Value, json};

#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, Default, Clone)]
#[serde(default, deny_unknown_fields)]
pub struct Config {}

pub struct Noop;

impl Capability for Noop {
    type Config = Config;
    const NAME: &'static str = "noop";
    const VERSION: &'static str = "0.0.0";

    fn initialize(_: &Config, _: &Ctx<'_>) -> Result<Self, JobError> {
        Ok(Noop)
    }

    fn execute(&mut self, _: &Ctx<'_>, _: Vec<Value>, _: Kwargs) -> CallResult {
        Ok(json!({}))
    }

    fn tasks(tasks: &mut Tasks<Self>) {
        tasks.method("noop", "noop", &["**kwargs"], |_, _, _| Ok(Value::Null));
    }
}

cjm_guest::export_capability!(Noop);
