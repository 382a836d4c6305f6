//! A capability that attacks its sandbox, one attack per call (`execute(attack=...)`), and
//! reports what it managed. The host must contain each with a typed error.

use std::io::Write;

use cjm_guest::{CallError, CallResult, Capability, Ctx, JobError, Kwargs, arg};
use serde_json::{Value, json};

#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema, Default, Clone)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Reported back by `echo_config`, to check initialize took effect.
    pub label: String,
}

pub struct Hostile {
    label: String,
    /// What `remember` calls left in this instance's memory.
    remembered: Vec<String>,
}

fn io(what: &str, e: std::io::Error) -> CallError {
    JobError::fatal(format!("{what}: {e}")).into()
}

#[allow(unconditional_recursion)]
fn recurse(depth: u64, pad: &mut [u8; 256]) -> u64 {
    pad[(depth % 256) as usize] = depth as u8;
    recurse(depth + 1, pad) + u64::from(pad[0])
}

impl Capability for Hostile {
    type Config = Config;
    const NAME: &'static str = "hostile";
    const VERSION: &'static str = "0.0.0";

    fn initialize(config: &Config, _: &Ctx<'_>) -> Result<Self, JobError> {
        Ok(Hostile {
            label: config.label.clone(),
            remembered: Vec::new(),
        })
    }

    fn execute(&mut self, cx: &Ctx<'_>, _: Vec<Value>, kwargs: Kwargs) -> CallResult {
        let attack: String = arg(&kwargs, "attack")?;
        match attack.as_str() {
            "ok" => Ok(json!("ok")),
            "echo_config" => Ok(json!(self.label)),
            // Keeps `value` in the instance's memory and returns everything kept so far:
            // what earlier callers left, unless each call gets a fresh instance.
            "remember" => {
                self.remembered.push(arg(&kwargs, "value")?);
                Ok(json!(self.remembered))
            }
            "read_passwd" => std::fs::read_to_string("/etc/passwd")
                .map(Value::String)
                .map_err(|e| io("read /etc/passwd", e)),
            "list_root" => std::fs::read_dir("/")
                .map(|d| json!(d.filter_map(|e| e.ok()).map(|e| e.path().display().to_string()).collect::<Vec<_>>()))
                .map_err(|e| io("list /", e)),
            "read_env" => {
                let name: String = arg(&kwargs, "name")?;
                std::env::var(&name)
                    .map(Value::String)
                    .map_err(|e| JobError::fatal(format!("env {name}: {e}")).into())
            }
            "open_socket" => std::net::TcpStream::connect("127.0.0.1:9")
                .map(|_| json!("connected"))
                .map_err(|e| io("connect 127.0.0.1:9", e)),
            "read_file" => {
                let path: String = arg(&kwargs, "path")?;
                std::fs::read_to_string(&path).map(Value::String).map_err(|e| io(&path, e))
            }
            "write_file" => {
                let path: String = arg(&kwargs, "path")?;
                std::fs::File::create(&path)
                    .and_then(|mut f| f.write_all(b"pwned"))
                    .map(|()| json!("written"))
                    .map_err(|e| io(&path, e))
            }
            "loop_forever" => {
                cx.progress(0.0, "looping");
                let mut x: u64 = 0;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            "loop_cooperative" => {
                cx.progress(0.0, "looping");
                let mut i: u64 = 0;
                loop {
                    i = std::hint::black_box(i.wrapping_add(1));
                    if i % 4096 == 0 {
                        cx.check_cancel()?;
                    }
                }
            }
            "grow_memory" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 8 * 1024 * 1024]);
                    std::hint::black_box(&hoard);
                }
            }
            "recurse" => {
                let mut pad = [0u8; 256];
                Ok(json!(recurse(0, &mut pad)))
            }
            "panic" => panic!("hostile guest panics on purpose"),
            "print" => {
                println!("line one to stdout");
                print!("progress 10%\rprogress 50%\rprogress 100%\n");
                eprintln!("a line to stderr");
                Ok(json!("printed"))
            }
            // Logs and prints `text` (a secret it read, say).
            "echo_log" => {
                let text: String = arg(&kwargs, "text")?;
                cx.info(&format!("the guest says {text}"));
                println!("printed {text}");
                Ok(json!("echoed"))
            }
            "log" => {
                cx.info("hello from the guest");
                cx.warn("careful");
                Ok(json!("logged"))
            }
            "account" => {
                cx.record_account("api_call", &json!({"provider": "none", "tokens": 12}));
                cx.report_usage(&json!({"tokens": 12}));
                cx.progress(0.5, "half");
                Ok(json!("accounted"))
            }
            "sleep" => {
                let secs: f64 = arg(&kwargs, "secs")?;
                cx.progress(0.0, "sleeping");
                std::thread::sleep(std::time::Duration::from_secs_f64(secs));
                Ok(json!("slept"))
            }
            "progress_flood" => {
                let n: u64 = arg(&kwargs, "n")?;
                for i in 0..n {
                    cx.progress((i + 1) as f64 / n as f64, &format!("step {}", i + 1));
                }
                Ok(json!(n))
            }
            "big_message" => {
                let bytes: usize = arg(&kwargs, "bytes")?;
                let text = "x".repeat(bytes);
                cx.progress(0.5, &text);
                cx.info(&text);
                Ok(json!("sent"))
            }
            "log_flood" => {
                let n: u64 = arg(&kwargs, "n")?;
                for i in 0..n {
                    cx.info(&format!("record {i}"));
                }
                Ok(json!(n))
            }
            "big_result" => {
                let bytes: usize = arg(&kwargs, "bytes")?;
                Ok(Value::String("r".repeat(bytes)))
            }
            "print_unterminated" => {
                print!("no newline at the end");
                Ok(json!("printed"))
            }
            "fail_user" => Err(JobError::user_input("the text is too short")
                .with_fields(["text"])
                .into()),
            "fail_resource" => Err(JobError::resource("no GPU")
                .with_shortfall("gpu_vram_mb", 4096.0, 1024.0)
                .with_retry_after(2.5)
                .into()),
            other => Err(JobError::user_input(format!("unknown attack '{other}'"))
                .with_fields(["attack"])
                .into()),
        }
    }
}

cjm_guest::export_capability!(Hostile);
