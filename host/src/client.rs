//! A client of the service (`cjm-ctl serve`): what the CLI and the tests use to reach a host
//! over `/v1`. Found from a data dir's discovery file ([`Client::discover`]) or given a URL.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::server::Token;
use crate::server::discovery::Discovery;

/// What can go wrong talking to the service.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The service could not be reached or the exchange broke.
    #[error("cannot reach the host at {url}: {source}")]
    Unreachable {
        /// The base URL.
        url: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// The service answered with an error.
    #[error("{message} ({status} {kind})")]
    Api {
        /// The HTTP status.
        status: u16,
        /// The error kind (`not_found`, `invalid`, ...).
        kind: String,
        /// The message.
        message: String,
    },
    /// The answer was not the JSON expected.
    #[error("unexpected answer from the host: {0}")]
    BadAnswer(String),
}

/// A raw answer: status, headers, body.
#[derive(Debug, Clone)]
pub struct RawAnswer {
    /// The status code.
    pub status: u16,
    /// `X-CJM-Accounts`, when present.
    pub accounts: Option<String>,
    /// `X-CJM-Job-Id`, when present.
    pub job_id: Option<String>,
    /// The body's bytes.
    pub body: bytes::Bytes,
}

/// A client of one service.
#[derive(Clone)]
pub struct Client {
    base: String,
    token: Option<Token>,
    http: reqwest::Client,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("token", &self.token)
            .finish()
    }
}

type Result<T> = std::result::Result<T, ClientError>;

impl Client {
    /// A client of the service at `url` (`http://127.0.0.1:8631`), with a bearer token when
    /// it requires one.
    pub fn new(url: impl Into<String>, token: Option<Token>) -> Self {
        let http = reqwest::Client::builder()
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_default();
        Client {
            base: url.into().trim_end_matches('/').to_owned(),
            token,
            http,
        }
    }

    /// The live service serving `data_dir`, from its discovery file (`None`: none runs).
    pub fn discover(data_dir: &Path) -> Option<Client> {
        let found = Discovery::find(data_dir)?;
        let token = match &found.token_file {
            Some(file) => Some(Token::read(file).ok()?),
            None => None,
        };
        Some(Client::new(found.url, token))
    }

    /// The base URL.
    pub fn url(&self) -> &str {
        &self.base
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token.expose());
        }
        request
    }

    fn unreachable(&self, source: reqwest::Error) -> ClientError {
        ClientError::Unreachable {
            url: self.base.clone(),
            source,
        }
    }

    /// Sends a request and returns the raw answer (any status).
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<RawAnswer> {
        let mut request = self.request(method, path);
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(serde_json::to_vec(body).unwrap_or_default());
        }
        let response = request.send().await.map_err(|e| self.unreachable(e))?;
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let accounts = header("x-cjm-accounts");
        let job_id = header("x-cjm-job-id");
        let body = response.bytes().await.map_err(|e| self.unreachable(e))?;
        Ok(RawAnswer {
            status,
            accounts,
            job_id,
            body,
        })
    }

    /// A JSON request whose answer must be a 2xx JSON body.
    pub async fn json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value> {
        let answer = self.send(method, path, body).await?;
        let value: Value = if answer.body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&answer.body)
                .map_err(|e| ClientError::BadAnswer(format!("{e}")))?
        };
        if (200..300).contains(&answer.status) {
            return Ok(value);
        }
        let error = &value["error"];
        Err(ClientError::Api {
            status: answer.status,
            kind: error["kind"].as_str().unwrap_or("unknown").to_owned(),
            message: error["message"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| String::from_utf8_lossy(&answer.body).into_owned()),
        })
    }

    /// Stores a secret for `capability` (`PUT /v1/secrets/{capability}/{key}`): the
    /// service's loaded instances of it reload to see it.
    pub async fn set_secret(&self, capability: &str, key: &str, value: &str) -> Result<()> {
        let path = format!("/v1/secrets/{}/{}", segment(capability), segment(key));
        let body = serde_json::json!({ "value": value });
        self.json(reqwest::Method::PUT, &path, Some(&body))
            .await
            .map(drop)
    }

    /// `GET /v1/health`.
    pub async fn health(&self) -> Result<Value> {
        self.json(reqwest::Method::GET, "/v1/health", None).await
    }

    /// Submits a job (`POST /v1/jobs`, the body as the API takes it); its id.
    pub async fn submit(&self, job: &Value) -> Result<String> {
        let answer = self
            .json(reqwest::Method::POST, "/v1/jobs", Some(job))
            .await?;
        answer["job_id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| ClientError::BadAnswer(answer.to_string()))
    }

    /// A job as the service knows it.
    pub async fn job(&self, id: &str) -> Result<Value> {
        self.json(
            reqwest::Method::GET,
            &format!("/v1/jobs/{}", segment(id)),
            None,
        )
        .await
    }

    /// Waits (long polls, up to `timeout` per request) until job `id` ends.
    pub async fn wait(&self, id: &str, timeout: Duration) -> Result<Value> {
        loop {
            let job = self
                .json(
                    reqwest::Method::GET,
                    &format!(
                        "/v1/jobs/{}/wait?timeout_s={}",
                        segment(id),
                        timeout.as_secs_f64()
                    ),
                    None,
                )
                .await?;
            if matches!(
                job["status"].as_str(),
                Some("completed" | "failed" | "cancelled")
            ) {
                return Ok(job);
            }
        }
    }

    /// Cancels job `id` (waiting or running).
    pub async fn cancel(&self, id: &str) -> Result<()> {
        self.json(
            reqwest::Method::POST,
            &format!("/v1/jobs/{}/cancel", segment(id)),
            None,
        )
        .await
        .map(|_| ())
    }

    /// Jobs from the journal (`query`: `status=failed&limit=20`, or empty).
    pub async fn jobs(&self, query: &str) -> Result<Value> {
        let path = if query.is_empty() {
            "/v1/jobs".to_owned()
        } else {
            format!("/v1/jobs?{query}")
        };
        self.json(reqwest::Method::GET, &path, None).await
    }

    /// Opens an event stream (`/v1/events?...`), resuming after `last_event_id`.
    pub async fn events(&self, query: &str, last_event_id: Option<i64>) -> Result<EventStream> {
        let mut request = self.request(reqwest::Method::GET, &format!("/v1/events?{query}"));
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id.to_string());
        }
        let response = request.send().await.map_err(|e| self.unreachable(e))?;
        if !response.status().is_success() {
            return Err(ClientError::Api {
                status: response.status().as_u16(),
                kind: "event_stream".into(),
                message: response.text().await.unwrap_or_default(),
            });
        }
        Ok(EventStream {
            response,
            buffer: Vec::new(),
            pos: 0,
        })
    }
}

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerEvent {
    /// `id:` (the journal seq), when given.
    pub id: Option<i64>,
    /// `event:`.
    pub event: String,
    /// `data:`, as sent (JSON text; [`ServerEvent::json`] parses it).
    pub data: String,
}

impl ServerEvent {
    /// The data parsed (`Null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or(Value::Null)
    }
}

/// An open event stream.
#[derive(Debug)]
pub struct EventStream {
    response: reqwest::Response,
    /// Bytes received (a chunk may end inside a character or an event).
    buffer: Vec<u8>,
    /// Where the unread part of `buffer` starts.
    pos: usize,
}

impl EventStream {
    /// The next event; `None` when the stream ended.
    pub async fn next(&mut self) -> Result<Option<ServerEvent>> {
        loop {
            let unread = &self.buffer[self.pos..];
            if let Some(end) = unread.windows(2).position(|w| w == b"\n\n") {
                let block = String::from_utf8_lossy(&unread[..end]).into_owned();
                self.pos += end + 2;
                if let Some(event) = parse_event(&block) {
                    return Ok(Some(event));
                }
                continue; // a keep-alive comment
            }
            if self.pos > 0 {
                self.buffer.drain(..self.pos);
                self.pos = 0;
            }
            match self.response.chunk().await {
                Ok(Some(chunk)) => self.buffer.extend_from_slice(&chunk),
                Ok(None) => return Ok(None),
                Err(e) => {
                    return Err(ClientError::Unreachable {
                        url: self.response.url().to_string(),
                        source: e,
                    });
                }
            }
        }
    }
}

/// One event block (its lines, without the blank line ending it); `None` for a block with
/// no data (a comment).
fn parse_event(block: &str) -> Option<ServerEvent> {
    let mut event = ServerEvent {
        id: None,
        event: "message".into(),
        data: String::new(),
    };
    let mut lines = 0;
    for line in block.lines() {
        if let Some(v) = line.strip_prefix("id:") {
            event.id = v.trim().parse().ok();
        } else if let Some(v) = line.strip_prefix("event:") {
            event.event = v.trim().to_owned();
        } else if let Some(v) = line.strip_prefix("data:") {
            if lines > 0 {
                event.data.push('\n');
            }
            event.data.push_str(v.strip_prefix(' ').unwrap_or(v));
            lines += 1;
        }
    }
    (lines > 0).then_some(event)
}

/// `text` as one URL path segment: everything but unreserved characters percent-encoded, so
/// an id like `../x` stays one segment.
fn segment(text: &str) -> String {
    use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
    const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    utf8_percent_encode(text, SEGMENT).to_string()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::parse_event;

    #[test]
    fn ids_stay_one_path_segment() {
        assert_eq!(super::segment("0193-ab_c.d~"), "0193-ab_c.d~");
        assert_eq!(super::segment("../../v1/health"), "..%2F..%2Fv1%2Fhealth");
        assert_eq!(super::segment("a b?c#d"), "a%20b%3Fc%23d");
    }

    #[test]
    fn event_blocks_parse_as_the_sse_format_says() {
        let e = parse_event("id: 42\nevent: state_transition\ndata: {\"a\":\ndata: 1}").unwrap();
        assert_eq!(e.id, Some(42));
        assert_eq!(e.event, "state_transition");
        assert_eq!(e.data, "{\"a\":\n1}");
        assert_eq!(e.json()["a"], 1);
        // A keep-alive comment is no event; an event without a name is a `message`.
        assert!(parse_event(": keep-alive").is_none());
        assert_eq!(parse_event("data: é").unwrap().event, "message");
    }
}
