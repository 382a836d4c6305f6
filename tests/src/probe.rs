//! `probe`: a Rust twin of the Python echo capability in
//! `host/tests/fixtures/python/capability`, so one table of cases runs against the real
//! cjm-substrate worker and against a cjm-native-worker binary.

use cjm_guest::{CallResult, Capability, Ctx, JobError, Kwargs, Tasks, arg, opt_arg, wire};
use serde_json::{Value, json};

/// Configuration, as the Python `EchoConfig`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(default)]
pub struct ProbeConfig {
    /// Prepended to every echoed text.
    pub prefix: String,
    /// How many times the text is repeated.
    #[schemars(range(min = 1, max = 10))]
    pub repeat: u32,
    /// `plain` or `upper`.
    pub mode: String,
    /// Sleep per step of `slow`.
    pub step_seconds: f64,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            prefix: String::new(),
            repeat: 1,
            mode: "plain".into(),
            step_seconds: 0.05,
        }
    }
}

/// The capability.
pub struct Probe {
    config: ProbeConfig,
}

impl Probe {
    fn render(&self, text: &str) -> String {
        let out = format!("{}{text}", self.config.prefix).repeat(self.config.repeat as usize);
        if self.config.mode == "upper" {
            out.to_uppercase()
        } else {
            out
        }
    }

    fn echo_task(&mut self, _: &Ctx<'_>, kwargs: Kwargs) -> CallResult {
        let text: String = arg(&kwargs, "text")?;
        let times: u32 = opt_arg(&kwargs, "times")?.unwrap_or(1);
        let out = self.render(&text).repeat(times as usize);
        Ok(wire(
            "echo.result",
            json!({"text": out, "times": times, "length": out.chars().count()}),
        ))
    }
}

impl Capability for Probe {
    type Config = ProbeConfig;
    const NAME: &'static str = "probe";
    const VERSION: &'static str = "0.1.0";

    fn initialize(config: &ProbeConfig, _: &Ctx<'_>) -> Result<Self, JobError> {
        Ok(Probe {
            config: config.clone(),
        })
    }

    fn execute(&mut self, cx: &Ctx<'_>, _: Vec<Value>, mut kwargs: Kwargs) -> CallResult {
        let action = opt_arg::<String>(&kwargs, "action")?.unwrap_or_else(|| "echo".into());
        kwargs.shift_remove("action");
        match action.as_str() {
            "echo" => {
                let text = opt_arg::<String>(&kwargs, "text")?.unwrap_or_default();
                kwargs.shift_remove("text");
                let out = self.render(&text);
                Ok(json!({"text": out, "length": out.chars().count(), "kwargs": kwargs}))
            }
            "fail" => Err(match opt_arg::<String>(&kwargs, "kind")?
                .as_deref()
                .unwrap_or("input")
            {
                "input" => JobError::user_input("bad text").with_fields(["text"]),
                "transient" => JobError::transient("try later").with_retry_after(2.5),
                "resource" => {
                    let e = JobError::resource("out of VRAM").with_shortfall(
                        "gpu_vram_mb",
                        4096.0,
                        1024.0,
                    );
                    // When it asks to be tried again no sooner than `after` seconds.
                    match opt_arg::<f64>(&kwargs, "after")? {
                        Some(after) => e.with_retry_after(after),
                        None => e,
                    }
                }
                _ => JobError::fatal("broken"),
            }
            .into()),
            "slow" => {
                let steps: u32 = opt_arg(&kwargs, "steps")?.unwrap_or(20);
                for i in 0..steps {
                    cx.check_cancel()?;
                    cx.progress(
                        f64::from(i) / f64::from(steps),
                        &format!("step {}/{steps}", i + 1),
                    );
                    std::thread::sleep(std::time::Duration::from_secs_f64(
                        self.config.step_seconds,
                    ));
                }
                cx.progress(1.0, "done");
                Ok(json!({"steps": steps}))
            }
            // Sleeps without ever checking for cancellation: only a forced cancel stops it.
            "sleep" => {
                let seconds: f64 = opt_arg(&kwargs, "seconds")?.unwrap_or(1.0);
                cx.progress(0.0, "sleeping");
                std::thread::sleep(std::time::Duration::from_secs_f64(seconds));
                Ok(json!({"slept": seconds}))
            }
            // Starts `sleep` in a session of its own (outside the worker's process group)
            // and returns its pid.
            "detach" => {
                let out = std::process::Command::new("sh")
                    .arg("-c")
                    .arg("setsid sleep 3600 >/dev/null 2>&1 </dev/null & echo $!")
                    .output()
                    .map_err(|e| JobError::fatal(format!("cannot start a child: {e}")))?;
                let pid: u32 = String::from_utf8_lossy(&out.stdout)
                    .trim()
                    .parse()
                    .map_err(|e| JobError::fatal(format!("no pid from sh: {e}")))?;
                Ok(json!({"pid": pid}))
            }
            // The value of one environment variable of the worker (null when unset).
            "env" => {
                let name: String = arg(&kwargs, "name")?;
                Ok(json!({"value": std::env::var(&name).ok()}))
            }
            "log" => {
                cx.info("info line");
                cx.warn("warning line");
                cx.log(cjm_guest::LogLevel::Error, "error line");
                Ok(json!({"logged": 3}))
            }
            other => Err(JobError::user_input(format!("Unknown action: {other}"))
                .with_fields(["action"])
                .into()),
        }
    }

    fn tasks(tasks: &mut Tasks<Self>) {
        tasks.method("echo", "echo", &["text", "times=1"], Self::echo_task);
    }
}
