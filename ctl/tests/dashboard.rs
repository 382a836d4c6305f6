#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! The dashboard in a real browser: headless Chromium driven through chromedriver
//! (WebDriver) against a real `cjm-ctl serve`. Screenshots of every page land in
//! `target/tmp/dashboard/`.
//!
//! Chromium and chromedriver must be installed (`.ci/run` installs Debian's `chromium` and
//! `chromium-driver`); without them this test fails and says so.

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

mod common;
use common::*;

/// chromedriver on a free port, killed on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    fn start() -> Driver {
        let exe = [
            "chromedriver",
            "/usr/bin/chromedriver",
            "/usr/lib/chromium/chromedriver",
        ]
        .into_iter()
        .find(|p| {
            std::process::Command::new(p)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .expect("chromedriver is not installed (apt-get install chromium chromium-driver)");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new(exe)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "chromedriver did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn shots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The browser and what the test needs around it.
struct Page {
    browser: Client,
}

impl Page {
    async fn open(driver: &Driver) -> Page {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                            "--disable-dev-shm-usage", "--window-size=1400,900"]}),
        );
        let browser = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&driver.url)
            .await
            .expect("chromium starts under chromedriver");
        Page { browser }
    }

    async fn js(&self, script: &str) -> Value {
        self.browser.execute(script, vec![]).await.unwrap()
    }

    async fn shot(&self, name: &str) {
        let png = self.browser.screenshot().await.unwrap();
        std::fs::write(shots().join(format!("{name}.png")), png).unwrap();
    }

    /// Waits until `condition` (a JS expression) is true in the page.
    async fn until(&self, what: &str, condition: &str) {
        let script = format!("return !!({condition});");
        let started = Instant::now();
        loop {
            if self.js(&script).await == Value::Bool(true) {
                return;
            }
            if started.elapsed() > Duration::from_secs(30) {
                self.shot(&format!("failed-{}", what.replace(' ', "-")))
                    .await;
                let text = self.js("return document.body.innerText").await;
                panic!("the page never showed {what} ({condition}); it shows:\n{text}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Another page of the dashboard, without a reload.
    async fn go(&self, hash: &str) {
        self.js(&format!("location.hash = {};", json!(hash))).await;
    }

    async fn click(&self, css: &str) {
        self.browser
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"))
            .click()
            .await
            .unwrap();
    }
}

fn row(id: &str, status: &str) -> String {
    format!(
        "document.querySelector('#jobs-table tr[data-job-id=\"{id}\"][data-status=\"{status}\"]')"
    )
}

async fn submit(client: &cjm_host::client::Client, job: Value) -> String {
    client.submit(&job).await.unwrap()
}

#[test]
fn the_dashboard_shows_jobs_compositions_and_capabilities_live_in_a_browser() {
    let env = Env::new();
    install_served(&env);
    let serving = Serving::start(&env);
    let base = serving.url.trim_end_matches('/').to_owned();
    let bind = base.trim_start_matches("http://").to_owned();
    let driver = Driver::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = serving.client();
        let page = Page::open(&driver).await;
        page.browser.goto(&format!("{base}/#/jobs")).await.unwrap();
        page.until("the live stream", "document.querySelector('#conn').dataset.state === 'live'")
            .await;

        // A job submitted through the API appears and completes without a reload.
        let done = submit(&client, json!({"capability": "text-stats", "kwargs": {"text": "a b b"}})).await;
        page.until("a completed job", &row(&done, "completed")).await;

        // One lane: a job that runs until cancelled holds it, the next one waits and says why.
        let forever = submit(
            &client,
            json!({"capability": "hostile", "kwargs": {"attack": "loop_cooperative"}}),
        )
        .await;
        page.until("a running job", &row(&forever, "running")).await;
        let waiting = submit(&client, json!({"capability": "text-stats", "kwargs": {"text": "x"}, "priority": 5})).await;
        page.until(
            "why a job waits",
            &format!("{} && {}.querySelector('td.why').textContent.length > 0", row(&waiting, "pending"), row(&waiting, "pending")),
        )
        .await;
        page.until(
            "progress of the running job",
            &format!("{}.textContent.includes('looping')", row(&forever, "running")),
        )
        .await;
        // Its priority goes up from its button.
        page.click(&format!("#jobs-table tr[data-job-id=\"{waiting}\"] button.prio-up")).await;
        page.until(
            "the raised priority",
            &format!("{}.querySelector('td.num').textContent.startsWith('6')", row(&waiting, "pending")),
        )
        .await;
        assert_eq!(client.job(&waiting).await.unwrap()["priority"], 6);
        page.shot("jobs").await;
        page.click("#theme").await;
        page.until("the other theme", "document.documentElement.dataset.theme").await;
        page.shot("jobs-other-theme").await;
        page.click("#theme").await;
        // Its Cancel button ends it `cancelled`; the waiting job then runs.
        page.click(&format!("#jobs-table tr[data-job-id=\"{forever}\"] button.cancel")).await;
        page.until("the cancelled job", &row(&forever, "cancelled")).await;
        page.until("the job that waited, completed", &row(&waiting, "completed")).await;
        let journal = client.json(reqwest::Method::GET, &format!("/v1/jobs/{forever}"), None).await.unwrap();
        assert_eq!(journal["status"], "cancelled");

        // A composition appears and completes live, its DAG drawn with every node's state.
        let comp = client
            .json(
                reqwest::Method::POST,
                "/v1/compositions",
                Some(&json!({"nodes": [
                    {"id": "a", "instance_id": "text-stats", "kwargs": {"text": "one two two"}},
                    {"id": "b", "instance_id": "text-stats", "kwargs": {"text": "three"}},
                    {"id": "merge", "instance_id": "text-stats", "task": "text_statistics",
                     "method": "merge_stats", "kwargs": {"x": {"$output": "a"}, "y": {"$output": "b"}}}
                ]})),
            )
            .await
            .unwrap();
        let comp = comp["composition_id"].as_str().unwrap().to_owned();
        page.go("#/compositions").await;
        page.until(
            "the completed composition",
            &format!("document.querySelector('#compositions-table tr[data-composition-id=\"{comp}\"][data-status=\"completed\"]')"),
        )
        .await;
        page.shot("compositions").await;
        page.go(&format!("#/compositions/{comp}")).await;
        page.until("its DAG", "document.querySelectorAll('#dag g.node[data-state=\"completed\"]').length === 3").await;
        page.until("its edges", "document.querySelectorAll('#dag path.edge').length === 2").await;
        page.shot("composition").await;

        // A job's detail: its timeline and its logs.
        let logged = submit(&client, json!({"capability": "hostile", "kwargs": {"attack": "log"}})).await;
        page.go(&format!("#/jobs/{logged}")).await;
        page.until("the timeline", "[...document.querySelectorAll('#timeline li')].some(li => li.dataset.type === 'admission_decided') && [...document.querySelectorAll('#timeline li')].some(li => li.textContent.includes('→ completed'))").await;
        page.until("the logs", "document.querySelector('#logs').textContent.includes('hello from the guest')").await;
        page.until("the arguments", "document.querySelector('#kwargs').textContent.includes('\"attack\": \"log\"')").await;
        page.until("the result", "document.querySelector('#result') && document.querySelector('#result').textContent.includes('logged')").await;
        page.shot("job").await;

        // A capability: its config form refuses a bad value, naming the field.
        page.go("#/capabilities/text-stats").await;
        page.until("the config form", "document.querySelector('#config-form input[name=\"top_n\"]')").await;
        page.js("const i = document.querySelector('#config-form input[name=\"top_n\"]'); i.value = '1000';").await;
        page.click("#config-form button[type=submit]").await;
        page.until(
            "the field's error",
            "document.querySelector('.field-error[data-field=\"top_n\"]').textContent.length > 0 && document.querySelector('#config-form input[name=\"top_n\"]').getAttribute('aria-invalid') === 'true'",
        )
        .await;
        page.shot("capability").await;
        let config = client.json(reqwest::Method::GET, "/v1/capabilities/text-stats/config", None).await.unwrap();
        assert_eq!(config["top_n"], 3, "a refused config changes nothing");
        page.js("const i = document.querySelector('#config-form input[name=\"top_n\"]'); i.value = '5';").await;
        page.click("#config-form button[type=submit]").await;
        page.until("the saved config", "document.querySelector('#config-status').textContent === 'saved'").await;
        let config = client.json(reqwest::Method::GET, "/v1/capabilities/text-stats/config", None).await.unwrap();
        assert_eq!(config["top_n"], 5);
        page.go("#/capabilities").await;
        page.until("the capabilities", "document.querySelectorAll('#capabilities-table tr[data-capability]').length === 3").await;
        page.shot("capabilities").await;
        page.go("#/overview").await;
        page.until("the instances", "document.querySelectorAll('#instances-table tr[data-instance]').length === 3").await;
        page.until("a worker's pid", "[...document.querySelectorAll('#instances-table td.num')].some(td => /^[0-9]+$/.test(td.textContent))").await;
        page.shot("overview").await;

        // The server restarts: the page reconnects and catches up from its last event — a job
        // run while the service was down (by `cjm-ctl --local`) appears once, and so does one
        // submitted after.
        page.go("#/jobs").await;
        let rows_before: u64 = page.js("return document.querySelectorAll('#jobs-table tr[data-job-id]').length").await.as_u64().unwrap();
        let (status, log) = serving.stop();
        assert!(status.success(), "{log}");
        page.until("the lost stream", "document.querySelector('#conn').dataset.state === 'reconnecting'").await;
        let out = env.json(&["--local", "submit", "text-stats", r#"{"text": "while down"}"#]);
        let offline = out["id"].as_str().unwrap().to_owned();
        let serving = Serving::start_with(&env, &bind, &[]);
        page.until("the stream again", "document.querySelector('#conn').dataset.state === 'live' && document.querySelector('#conn').dataset.connects === '2'").await;
        page.until("the job run while the server was down", &row(&offline, "completed")).await;
        let after = submit(&serving.client(), json!({"capability": "text-stats", "kwargs": {"text": "after"}})).await;
        page.until("a job after the restart", &row(&after, "completed")).await;
        let ids: Vec<Value> = page
            .js("return [...document.querySelectorAll('#jobs-table tr[data-job-id]')].map(r => r.dataset.jobId)")
            .await
            .as_array()
            .unwrap()
            .clone();
        let unique: std::collections::BTreeSet<_> = ids.iter().map(|v| v.as_str().unwrap()).collect();
        assert_eq!(unique.len(), ids.len(), "a row is doubled: {ids:?}");
        assert_eq!(ids.len() as u64, rows_before + 2, "{ids:?}");

        // A server that requires a token: the page asks for it, then goes live again.
        drop(serving);
        let serving = Serving::start_with(&env, &bind, &["--require-token"]);
        let token = std::fs::read_to_string(env.data().join("serve.token")).unwrap();
        page.until("the token prompt", "document.querySelector('#token-dialog').open").await;
        page.shot("token").await;
        page.browser
            .find(Locator::Css("#token-input"))
            .await
            .unwrap()
            .send_keys(token.trim())
            .await
            .unwrap();
        page.click("#token-form button[type=submit]").await;
        page.until("live with the token", "!document.querySelector('#token-dialog').open && document.querySelector('#conn').dataset.state === 'live'").await;
        page.browser.close().await.unwrap();
        drop(serving);
    });
}

#[test]
fn the_dashboard_assets_are_public_and_locked_down() {
    let env = Env::new();
    std::fs::create_dir_all(env.data()).unwrap();
    let serving = Serving::start_with(&env, "127.0.0.1:0", &["--require-token"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let http = reqwest::Client::new();
        for path in ["/", "/ui/app.js", "/ui/app.css", "/ui/icon.svg"] {
            let r = http
                .get(format!("{}{path}", serving.url.trim_end_matches('/')))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{path}");
            let csp = r.headers()["content-security-policy"]
                .to_str()
                .unwrap()
                .to_owned();
            assert!(
                csp.contains("script-src 'self'") && !csp.contains("unsafe"),
                "{csp}"
            );
            assert_eq!(r.headers()["x-frame-options"], "DENY");
        }
        // The API behind it is not public.
        let r = http
            .get(format!("{}/v1/jobs", serving.url.trim_end_matches('/')))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    });
}
