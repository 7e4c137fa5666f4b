//! The HTTP sink: each event is POSTed as a CloudEvent in binary content mode, and the answer
//! is sorted into accepted, worth retrying, or refused for good.

use std::time::{Duration, SystemTime};

use bridge_events::CloudEvent;
use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, HOST, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::retry::parse_retry_after;

/// How much of a refusing sink's answer is kept for the logs and the dead-letter headers.
const ERROR_BODY_LIMIT: usize = 512;

/// What one delivery attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkAnswer {
    /// 2xx: the sink has the event.
    Accepted { status: u16 },
    /// A network error, a timeout, 408, 429 or 5xx: the same event may succeed later.
    Retryable {
        status: Option<u16>,
        retry_after: Option<Duration>,
        error: String,
    },
    /// Any other answer (4xx, or a redirect, which is not followed because it would turn
    /// the POST into a GET): trying again would get the same.
    Rejected { status: u16, error: String },
}

impl SinkAnswer {
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Accepted { status } | Self::Rejected { status, .. } => Some(*status),
            Self::Retryable { status, .. } => *status,
        }
    }

    /// The label of this outcome in the metrics.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Accepted { .. } => "accepted",
            Self::Retryable { .. } => "retryable",
            Self::Rejected { .. } => "rejected",
        }
    }
}

/// An event ready to be sent as often as needed: its headers and body built once.
#[derive(Debug, Clone)]
pub struct SinkRequest {
    headers: HeaderMap,
    body: Bytes,
}

impl SinkRequest {
    /// The event's data.
    pub fn body(&self) -> &Bytes {
        &self.body
    }
}

/// The header names of the attributes the binding writes for most events: taken as they
/// are rather than checked and copied for every event.
const KNOWN_HEADERS: [&str; 12] = [
    "ce-specversion",
    "ce-id",
    "ce-source",
    "ce-type",
    "ce-time",
    "ce-subject",
    "ce-correlationid",
    "ce-causationid",
    "ce-schemaversion",
    "traceparent",
    "tracestate",
    "content-type",
];

fn header_name(name: &str) -> Option<HeaderName> {
    match KNOWN_HEADERS.iter().find(|known| **known == name) {
        Some(known) => Some(HeaderName::from_static(known)),
        None => HeaderName::from_bytes(name.as_bytes()).ok(),
    }
}

/// hyper's pooled client, without reqwest's layers on top: those showed in the profile (the
/// URL parsed again from every response, the headers copied twice per request), and the
/// sink needs none of them (no redirects, no cookies, no decompression).
#[derive(Debug, Clone)]
pub struct SinkClient {
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    uri: Uri,
    /// The `host` header of every request, which hyper would otherwise build each time.
    host: HeaderValue,
    timeout: Duration,
}

impl SinkClient {
    /// `uri` is http:// or https:// (the config checked it); HTTPS trusts the Mozilla roots.
    pub fn new(uri: Uri, timeout: Duration) -> Self {
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        // A request is one write; nothing is gained by holding it back.
        tcp.set_nodelay(true);
        let connector = HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);
        let http = Client::builder(TokioExecutor::new())
            // Idle connections are closed after the pool's idle timeout (90 s).
            .pool_timer(TokioTimer::new())
            .build(connector);
        // As hyper would write it: the host and a port that is not the scheme's default
        // (the URL's parser already dropped a default one), never the credentials.
        let host = uri.host().expect("an http(s) URI has a host");
        let host = match uri.port_u16() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        let host = HeaderValue::try_from(host).expect("a URI's host is a valid header value");
        Self {
            http,
            uri,
            host,
            timeout,
        }
    }

    pub fn url(&self) -> &Uri {
        &self.uri
    }

    /// The request for `event`, complete: what hyper would add to each attempt (`host`,
    /// `content-length`) is in it, so an attempt copies it and nothing more. Fails when an
    /// attribute cannot be an HTTP header (the binding percent-encodes values, so only a
    /// malformed extension name can).
    pub fn request(&self, event: CloudEvent) -> Result<SinkRequest, String> {
        let attributes = event.http_binary_headers();
        let mut headers = HeaderMap::with_capacity(attributes.len() + 2);
        headers.insert(HOST, self.host.clone());
        // The values in one buffer, so each attempt's copy of the headers shares it.
        let mut values = BytesMut::with_capacity(attributes.iter().map(|(_, v)| v.len()).sum());
        for (_, value) in &attributes {
            values.extend_from_slice(value.as_bytes());
        }
        let mut values = values.freeze();
        for (name, value) in &attributes {
            let header = header_name(name)
                .ok_or_else(|| format!("the attribute `{name}` cannot be an HTTP header name"))?;
            let value = HeaderValue::from_maybe_shared(values.split_to(value.len()))
                .map_err(|_| format!("the value of `{name}` cannot be an HTTP header value"))?;
            headers.append(header, value);
        }
        let body = Bytes::from(event.data);
        headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        Ok(SinkRequest { headers, body })
    }

    /// One attempt: POST the event and sort the answer, all within the request timeout.
    pub async fn send(&self, request: &SinkRequest) -> SinkAnswer {
        let mut post = Request::new(Full::new(request.body.clone()));
        *post.method_mut() = Method::POST;
        *post.uri_mut() = self.uri.clone();
        *post.headers_mut() = request.headers.clone();
        match tokio::time::timeout(self.timeout, self.exchange(post)).await {
            Ok(answer) => answer,
            Err(_) => SinkAnswer::Retryable {
                status: None,
                retry_after: None,
                error: format!("the sink did not answer within {:?}", self.timeout),
            },
        }
    }

    async fn exchange(&self, post: Request<Full<Bytes>>) -> SinkAnswer {
        let response = match self.http.request(post).await {
            Ok(response) => response,
            Err(error) => {
                return SinkAnswer::Retryable {
                    status: None,
                    retry_after: None,
                    error: format!("could not reach the sink: {}", error_chain(&error)),
                };
            }
        };
        let (answer, mut body) = response.into_parts();
        let status = answer.status;
        if status.is_success() {
            // Read the answer to the end so the connection goes back to the pool.
            while let Some(Ok(_)) = body.frame().await {}
            return SinkAnswer::Accepted {
                status: status.as_u16(),
            };
        }
        let retry_after = answer
            .headers
            .get(RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| parse_retry_after(value, SystemTime::now()));
        let error = describe_refusal(status, body).await;
        let code = status.as_u16();
        if code == 408 || code == 429 || status.is_server_error() {
            SinkAnswer::Retryable {
                status: Some(code),
                retry_after,
                error,
            }
        } else {
            SinkAnswer::Rejected {
                status: code,
                error,
            }
        }
    }
}

async fn describe_refusal(status: StatusCode, mut response: Incoming) -> String {
    let mut body = Vec::new();
    while body.len() < ERROR_BODY_LIMIT {
        match response.frame().await {
            Some(Ok(frame)) => {
                if let Ok(chunk) = frame.into_data() {
                    body.extend_from_slice(&chunk);
                }
            }
            _ => break,
        }
    }
    body.truncate(ERROR_BODY_LIMIT);
    let body = String::from_utf8_lossy(&body);
    let body = body.trim();
    if body.is_empty() {
        format!("the sink answered {status}")
    } else {
        format!("the sink answered {status}: {body}")
    }
}

/// The error and its causes on one line: hyper's own message names only the kind of failure.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text_headers(headers: &HeaderMap) -> Vec<(String, String)> {
        headers
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_str().unwrap().to_owned()))
            .collect()
    }

    #[test]
    fn the_request_carries_every_header_of_binary_mode_as_the_binding_writes_it() {
        let mut event =
            CloudEvent::new("e-1", "/tests/sink", "workflow.step", "wf-1", b"{}".into());
        event.time = Some("2026-11-27T10:00:00Z".into());
        event.datacontenttype = Some("application/json".into());
        event.subject = Some("a subject with spaces".into());
        event.causation_id = Some("cause-1".into());
        event.schema_version = Some("2".into());
        event.traceparent = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
        event
            .extensions
            .insert("tracestate".into(), "vendor=1".into());
        event
            .extensions
            .insert("dataschema".into(), "urn:step:2".into());
        let mut expected = vec![("host".to_owned(), "127.0.0.1:8088".to_owned())];
        expected.extend(event.http_binary_headers());
        expected.push(("content-length".into(), "2".into()));

        let request = sink_at("127.0.0.1:8088".parse().unwrap())
            .request(event)
            .unwrap();
        assert_eq!(text_headers(&request.headers), expected);
        assert_eq!(request.body(), &b"{}"[..]);
    }

    fn sink_at(address: std::net::SocketAddr) -> SinkClient {
        let uri = format!("http://{address}/events").parse().unwrap();
        SinkClient::new(uri, Duration::from_millis(200))
    }

    fn event() -> CloudEvent {
        CloudEvent::new("e-1", "/tests/sink", "t", "c", b"{}".into())
    }

    /// Sends one event; the answer must be a retryable failure with no HTTP status, whose
    /// error is returned.
    async fn retryable_without_status(sink: &SinkClient) -> String {
        let answer = sink.send(&sink.request(event()).unwrap()).await;
        let SinkAnswer::Retryable {
            status: None,
            error,
            ..
        } = answer
        else {
            panic!("{answer:?}");
        };
        error
    }

    #[tokio::test]
    async fn a_sink_that_does_not_answer_in_time_is_a_retryable_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sink = sink_at(listener.local_addr().unwrap());
        // Accepts the connection and never answers.
        let _held = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(socket);
        });
        let error = retryable_without_status(&sink).await;
        assert_eq!(error, "the sink did not answer within 200ms");
    }

    #[tokio::test]
    async fn a_sink_that_cannot_be_reached_is_retryable_and_the_error_names_the_cause() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let sink = sink_at(listener.local_addr().unwrap());
        drop(listener);
        let error = retryable_without_status(&sink).await;
        assert!(error.starts_with("could not reach the sink: "), "{error}");
        assert!(error.contains("Connection refused"), "{error}");
    }

    #[test]
    fn an_extension_that_cannot_be_a_header_name_is_refused_by_name() {
        let mut event = CloudEvent::new("e-1", "/tests/sink", "workflow.step", "wf-1", Vec::new());
        event.extensions.insert("not a name".into(), "x".into());
        let error = sink_at("127.0.0.1:8088".parse().unwrap())
            .request(event)
            .unwrap_err();
        assert!(error.contains("`ce-not a name`"), "{error}");
    }
}
