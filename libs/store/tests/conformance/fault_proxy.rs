//! A fault-injecting HTTP/1.1 proxy on loopback in front of moto's DynamoDB endpoint.
//!
//! It injects the faults moto never produces: DynamoDB-shaped throttling errors, partial
//! BatchWriteItem results (forward part of the batch, report the rest unprocessed; or forward
//! all and still report some as unprocessed), and dropped responses after the write happened
//! (what a client timeout looks like). Faults are drawn from a seeded RNG.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Fault probabilities per request (they are tried in this order).
#[derive(Debug, Clone, Default)]
pub struct FaultConfig {
    /// Answer with ProvisionedThroughputExceededException without forwarding.
    pub throttle: f64,
    /// BatchWriteItem only: forward half the batch, report the other half unprocessed.
    pub partial_forward: f64,
    /// BatchWriteItem only: forward everything, but report some written items unprocessed.
    pub report_unprocessed: f64,
    /// BatchGetItem only: forward, then drop half the requested keys' results and report
    /// those keys as UnprocessedKeys.
    pub partial_get: f64,
    /// Forward the request, then close the connection without answering.
    pub drop_response: f64,
    /// Deterministically drop the response of the first N requests of this operation.
    pub drop_first: Option<(&'static str, u64)>,
    /// The same, counting only requests of the operation whose body contains the string
    /// (one item among the operation's many, e.g. the live pointer's sort key).
    pub drop_first_containing: Option<(&'static str, &'static str, u64)>,
    /// RNG seed.
    pub seed: u64,
}

/// Counters of what the proxy did.
#[derive(Debug, Default)]
pub struct FaultStats {
    pub requests: AtomicU64,
    pub throttled: AtomicU64,
    pub partial_forwards: AtomicU64,
    pub unprocessed_rewrites: AtomicU64,
    pub partial_gets: AtomicU64,
    pub dropped: AtomicU64,
}

impl FaultStats {
    pub fn get(&self, c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

struct State {
    upstream: SocketAddr,
    config: FaultConfig,
    rng: Mutex<StdRng>,
    stats: Arc<FaultStats>,
    op_counts: Mutex<HashMap<String, u64>>,
}

pub struct FaultProxy {
    pub url: String,
    pub stats: Arc<FaultStats>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultProxy {
    pub async fn start(upstream_url: &str, config: FaultConfig) -> FaultProxy {
        let hostport = upstream_url
            .trim_start_matches("http://")
            .trim_end_matches('/');
        let upstream: SocketAddr = tokio::net::lookup_host(hostport)
            .await
            .unwrap()
            .next()
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stats = Arc::new(FaultStats::default());
        let state = Arc::new(State {
            upstream,
            rng: Mutex::new(StdRng::seed_from_u64(config.seed)),
            config,
            stats: Arc::clone(&stats),
            op_counts: Mutex::new(HashMap::new()),
        });
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let st = Arc::clone(&state);
                tokio::spawn(async move {
                    let _ = serve(sock, st).await;
                });
            }
        });
        FaultProxy {
            url: format!("http://{addr}"),
            stats,
            task,
        }
    }
}

struct Message {
    start_line: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Message {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn encode(&self, connection: &str, drop_headers: &[&str]) -> Vec<u8> {
        let mut out = format!("{}\r\n", self.start_line);
        for (k, v) in &self.headers {
            let skip = ["content-length", "transfer-encoding", "connection"]
                .iter()
                .chain(drop_headers)
                .any(|h| k.eq_ignore_ascii_case(h));
            if !skip {
                out.push_str(&format!("{k}: {v}\r\n"));
            }
        }
        out.push_str(&format!(
            "Content-Length: {}\r\nConnection: {connection}\r\n\r\n",
            self.body.len()
        ));
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reads one HTTP/1.1 message. `to_eof` reads a body without length until the peer closes.
async fn read_message<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
    to_eof: bool,
) -> std::io::Result<Option<Message>> {
    let mut tmp = [0u8; 16384];
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i;
        }
        let n = s.read(&mut tmp).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    buf.drain(..head_end + 4);
    let mut lines = head.split("\r\n");
    let start_line = lines.next().unwrap_or_default().to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut msg = Message {
        start_line,
        headers,
        body: Vec::new(),
    };
    if let Some(len) = msg
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        while buf.len() < len {
            let n = s.read(&mut tmp).await?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "short body",
                ));
            }
            buf.extend_from_slice(&tmp[..n]);
        }
        msg.body = buf.drain(..len).collect();
    } else if msg
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        loop {
            let line_end = loop {
                if let Some(i) = find(buf, b"\r\n") {
                    break i;
                }
                let n = s.read(&mut tmp).await?;
                if n == 0 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "short chunk",
                    ));
                }
                buf.extend_from_slice(&tmp[..n]);
            };
            let size_str = String::from_utf8_lossy(&buf[..line_end]).into_owned();
            let size = usize::from_str_radix(size_str.split(';').next().unwrap_or("0").trim(), 16)
                .unwrap_or(0);
            buf.drain(..line_end + 2);
            while buf.len() < size + 2 {
                let n = s.read(&mut tmp).await?;
                if n == 0 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "short chunk",
                    ));
                }
                buf.extend_from_slice(&tmp[..n]);
            }
            msg.body.extend(buf.drain(..size));
            buf.drain(..2);
            if size == 0 {
                break;
            }
        }
    } else if to_eof {
        loop {
            let n = s.read(&mut tmp).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&tmp[..n]);
        }
        msg.body = std::mem::take(buf);
    }
    Ok(Some(msg))
}

async fn forward(state: &State, req: &Message) -> std::io::Result<Message> {
    let mut up = TcpStream::connect(state.upstream).await?;
    up.write_all(&req.encode("close", &[])).await?;
    let mut buf = Vec::new();
    read_message(&mut up, &mut buf, true)
        .await?
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "no response"))
}

enum Fault {
    None,
    Throttle,
    PartialForward,
    ReportUnprocessed,
    PartialGet,
    Drop,
}

/// How many requests have been counted under `key`, this one included.
fn count(state: &State, key: String) -> u64 {
    let mut counts = state.op_counts.lock().unwrap();
    let c = counts.entry(key).or_default();
    *c += 1;
    *c
}

fn choose(state: &State, op: &str, body: &[u8]) -> Fault {
    let n = count(state, op.to_string());
    if let Some((dop, first)) = state.config.drop_first
        && dop == op
        && n <= first
    {
        return Fault::Drop;
    }
    if let Some((dop, needle, first)) = state.config.drop_first_containing
        && dop == op
        && body.windows(needle.len()).any(|w| w == needle.as_bytes())
        && count(state, format!("{op}\0{needle}")) <= first
    {
        return Fault::Drop;
    }
    let c = &state.config;
    let mut rng = state.rng.lock().unwrap();
    let batch_write = op == "BatchWriteItem";
    if rng.random::<f64>() < c.throttle {
        Fault::Throttle
    } else if batch_write && rng.random::<f64>() < c.partial_forward {
        Fault::PartialForward
    } else if batch_write && rng.random::<f64>() < c.report_unprocessed {
        Fault::ReportUnprocessed
    } else if op == "BatchGetItem" && rng.random::<f64>() < c.partial_get {
        Fault::PartialGet
    } else if rng.random::<f64>() < c.drop_response {
        Fault::Drop
    } else {
        Fault::None
    }
}

fn json_response(status: u16, reason: &str, body: Vec<u8>) -> Message {
    Message {
        start_line: format!("HTTP/1.1 {status} {reason}"),
        headers: vec![
            ("Content-Type".into(), "application/x-amz-json-1.0".into()),
            ("x-amzn-RequestId".into(), "fault-proxy".into()),
        ],
        body,
    }
}

/// Splits a BatchWriteItem body: (body with the first half, the held-back requests per table).
fn split_batch(body: &[u8]) -> Option<(Vec<u8>, Value)> {
    let mut v: Value = serde_json::from_slice(body).ok()?;
    let items = v.get_mut("RequestItems")?.as_object_mut()?;
    let mut held = serde_json::Map::new();
    for (table, reqs) in items.iter_mut() {
        let arr = reqs.as_array_mut()?;
        if arr.len() < 2 {
            continue;
        }
        let rest = arr.split_off(arr.len() / 2);
        held.insert(table.clone(), Value::Array(rest));
    }
    if held.is_empty() {
        return None;
    }
    Some((serde_json::to_vec(&v).ok()?, Value::Object(held)))
}

/// Merges `extra` unprocessed requests into a BatchWriteItem response body.
fn add_unprocessed(resp_body: &[u8], extra: Value) -> Option<Vec<u8>> {
    let mut v: Value = serde_json::from_slice(resp_body).ok()?;
    let obj = v.as_object_mut()?;
    let un = obj
        .entry("UnprocessedItems")
        .or_insert_with(|| Value::Object(Default::default()));
    let un = un.as_object_mut()?;
    for (table, reqs) in extra.as_object()? {
        let entry = un
            .entry(table.clone())
            .or_insert_with(|| Value::Array(vec![]));
        entry
            .as_array_mut()?
            .extend(reqs.as_array()?.iter().cloned());
    }
    serde_json::to_vec(&v).ok()
}

/// Rewrites a BatchGetItem response: the second half of the requested keys become
/// UnprocessedKeys and their items are removed from Responses.
fn withhold_keys(req_body: &[u8], resp_body: &[u8]) -> Option<Vec<u8>> {
    let req: Value = serde_json::from_slice(req_body).ok()?;
    let mut resp: Value = serde_json::from_slice(resp_body).ok()?;
    let mut unprocessed = serde_json::Map::new();
    for (table, spec) in req.get("RequestItems")?.as_object()? {
        let keys = spec.get("Keys")?.as_array()?;
        if keys.len() < 2 {
            continue;
        }
        let held: Vec<Value> = keys[keys.len() / 2..].to_vec();
        let matches = |item: &Value| {
            held.iter().any(|k| {
                k.as_object()
                    .is_some_and(|k| k.iter().all(|(name, v)| item.get(name) == Some(v)))
            })
        };
        if let Some(items) = resp
            .get_mut("Responses")
            .and_then(|r| r.get_mut(table))
            .and_then(Value::as_array_mut)
        {
            items.retain(|i| !matches(i));
        }
        let mut spec = spec.clone();
        spec.as_object_mut()?
            .insert("Keys".into(), Value::Array(held));
        unprocessed.insert(table.clone(), spec);
    }
    if unprocessed.is_empty() {
        return None;
    }
    resp.as_object_mut()?
        .insert("UnprocessedKeys".into(), Value::Object(unprocessed));
    serde_json::to_vec(&resp).ok()
}

async fn serve(mut client: TcpStream, state: Arc<State>) -> std::io::Result<()> {
    let mut buf = Vec::new();
    loop {
        let Some(req) = read_message(&mut client, &mut buf, false).await? else {
            return Ok(());
        };
        state.stats.requests.fetch_add(1, Ordering::Relaxed);
        let op = req
            .header("x-amz-target")
            .and_then(|t| t.split('.').nth(1))
            .unwrap_or("other")
            .to_string();
        let resp = match choose(&state, &op, &req.body) {
            Fault::None => forward(&state, &req).await?,
            Fault::Throttle => {
                state.stats.throttled.fetch_add(1, Ordering::Relaxed);
                json_response(
                    400,
                    "Bad Request",
                    br#"{"__type":"com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException","message":"The level of configured provisioned throughput for the table was exceeded (injected)"}"#.to_vec(),
                )
            }
            Fault::Drop => {
                let _ = forward(&state, &req).await?;
                state.stats.dropped.fetch_add(1, Ordering::Relaxed);
                // The write happened; the client never hears about it.
                let _ = client.shutdown().await;
                return Ok(());
            }
            Fault::PartialForward => match split_batch(&req.body) {
                Some((first_half, held)) => {
                    let mut part = Message {
                        start_line: req.start_line.clone(),
                        headers: req.headers.clone(),
                        body: first_half,
                    };
                    part.headers
                        .retain(|(k, _)| !k.eq_ignore_ascii_case("x-amz-crc32"));
                    let mut resp = forward(&state, &part).await?;
                    if resp.start_line.contains(" 200 ")
                        && let Some(b) = add_unprocessed(&resp.body, held)
                    {
                        resp.body = b;
                        state.stats.partial_forwards.fetch_add(1, Ordering::Relaxed);
                    }
                    resp
                }
                None => forward(&state, &req).await?,
            },
            Fault::PartialGet => {
                let mut resp = forward(&state, &req).await?;
                if resp.start_line.contains(" 200 ")
                    && let Some(b) = withhold_keys(&req.body, &resp.body)
                {
                    resp.body = b;
                    state.stats.partial_gets.fetch_add(1, Ordering::Relaxed);
                }
                resp
            }
            Fault::ReportUnprocessed => {
                let mut resp = forward(&state, &req).await?;
                if resp.start_line.contains(" 200 ")
                    && let Some((_, held)) = split_batch(&req.body)
                    && let Some(b) = add_unprocessed(&resp.body, held)
                {
                    resp.body = b;
                    state
                        .stats
                        .unprocessed_rewrites
                        .fetch_add(1, Ordering::Relaxed);
                }
                resp
            }
        };
        client
            .write_all(&resp.encode("keep-alive", &["x-amz-crc32"]))
            .await?;
    }
}

#[test]
fn split_and_merge_batches() {
    let body = br#"{"RequestItems":{"t":[{"PutRequest":{"Item":{"pk":{"S":"a"}}}},{"PutRequest":{"Item":{"pk":{"S":"b"}}}},{"PutRequest":{"Item":{"pk":{"S":"c"}}}}]}}"#;
    let (first, held) = split_batch(body).unwrap();
    let first: Value = serde_json::from_slice(&first).unwrap();
    assert_eq!(first["RequestItems"]["t"].as_array().unwrap().len(), 1);
    assert_eq!(held["t"].as_array().unwrap().len(), 2);
    let merged = add_unprocessed(br#"{"UnprocessedItems":{}}"#, held).unwrap();
    let merged: Value = serde_json::from_slice(&merged).unwrap();
    assert_eq!(merged["UnprocessedItems"]["t"].as_array().unwrap().len(), 2);
}

#[test]
fn withheld_keys_leave_responses() {
    let req = br#"{"RequestItems":{"t":{"Keys":[{"pk":{"S":"a"}},{"pk":{"S":"b"}}],"ConsistentRead":true}}}"#;
    let resp = br#"{"Responses":{"t":[{"pk":{"S":"a"},"x":{"N":"1"}},{"pk":{"S":"b"},"x":{"N":"2"}}]},"UnprocessedKeys":{}}"#;
    let out: Value = serde_json::from_slice(&withhold_keys(req, resp).unwrap()).unwrap();
    assert_eq!(out["Responses"]["t"].as_array().unwrap().len(), 1);
    assert_eq!(out["UnprocessedKeys"]["t"]["Keys"][0]["pk"]["S"], "b");
    assert_eq!(out["UnprocessedKeys"]["t"]["ConsistentRead"], true);
}
