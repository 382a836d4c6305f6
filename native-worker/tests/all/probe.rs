//! `probe`: a capability that exercises every service a worker offers.

use std::time::Duration;

use cjm_guest::{CallResult, Capability, Ctx, JobError, Kwargs, Status, Tasks, arg, opt_arg};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ProbeConfig {
    /// Prepended to shouted text.
    pub prefix: String,
    /// A bounded number.
    #[schemars(range(min = 0, max = 10))]
    pub level: u32,
}

pub struct Probe {
    prefix: String,
}

impl Capability for Probe {
    type Config = ProbeConfig;
    const NAME: &'static str = "probe";
    const VERSION: &'static str = "0.3.0";

    fn initialize(config: &ProbeConfig, _: &Ctx<'_>) -> Result<Self, JobError> {
        if config.level > 10 {
            return Err(
                JobError::user_input("level: 11 is greater than maximum 10").with_fields(["level"])
            );
        }
        Ok(Probe {
            prefix: config.prefix.clone(),
        })
    }

    fn execute(&mut self, cx: &Ctx<'_>, args: Vec<Value>, mut kwargs: Kwargs) -> CallResult {
        let action = opt_arg::<String>(&kwargs, "action")?.unwrap_or_else(|| "echo".into());
        kwargs.shift_remove("action");
        match action.as_str() {
            "echo" => Ok(json!({"args": args, "kwargs": kwargs})),
            "fail" => {
                cx.record_account("result_saved", &json!({"path": "/tmp/x"}));
                Err(JobError::resource("out of VRAM")
                    .with_shortfall("gpu_vram_mb", 4096.0, 1024.0)
                    .into())
            }
            "input" => Err(JobError::user_input("bad text")
                .with_fields(["text"])
                .into()),
            "accounts" => {
                cx.record_account("cache_hit", &json!({"key": "abc", "n": 1}));
                cx.record_account("result_saved", &json!({"path": "/tmp/é"}));
                Ok(json!({"accounts": 2}))
            }
            "usage" => {
                cx.report_usage(&json!({"characters": 42, "requests": 1}));
                Ok(json!({"ok": true}))
            }
            "log" => {
                cx.info("hello from probe");
                cx.log(cjm_guest::LogLevel::Debug, "not kept at INFO");
                Ok(Value::Null)
            }
            "slow" => {
                let steps: u32 = arg(&kwargs, "steps")?;
                for i in 0..steps {
                    cx.check_cancel()?;
                    cx.progress(
                        f64::from(i) / f64::from(steps),
                        &format!("step {}/{steps}", i + 1),
                    );
                    std::thread::sleep(Duration::from_millis(5));
                }
                cx.progress(1.0, "done");
                Ok(json!({"steps": steps}))
            }
            "panic" => panic!("probe panicked on purpose"),
            other => Err(JobError::user_input(format!("Unknown action: {other}"))
                .with_fields(["action"])
                .into()),
        }
    }

    fn tasks(tasks: &mut Tasks<Self>) {
        tasks.method("probe_task", "shout", &["text", "**kwargs"], |me, cx, kw| {
            let text: String = arg(&kw, "text")?;
            cx.record_account("cache_hit", &json!({"key": text}));
            Ok(json!({"__wire__": "probe.result", "data": {"text": format!("{}{}", me.prefix, text.to_uppercase())}}))
        });
    }

    fn prefetch(&mut self, _: &Ctx<'_>) -> Result<Status, JobError> {
        Ok(Status::new("prefetched"))
    }

    fn on_disable(&mut self) -> Result<Status, JobError> {
        Err(JobError::fatal("cannot release"))
    }
}
