//! The CLI's client of the API: one HTTP/1.1 request per call over TCP or a Unix socket (hyper),
//! a bearer token, JSON in and out, and the API's error body turned back into code and message.

use std::time::Duration;

use axum::http::{header, Method, Request, StatusCode};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::ErrorBody;
use crate::config::Listen;

#[derive(Debug, thiserror::Error)]
pub enum ApiClientError {
    /// Nothing listens there (no daemon running, or another address).
    #[error("cannot reach the API at {at}: {source}")]
    Unreachable { at: String, source: std::io::Error },
    #[error("{message} ({code}, HTTP {status})")]
    Api { status: u16, code: String, message: String },
    #[error("API at {at}: {message}")]
    Protocol { at: String, message: String },
    /// Writing the answer out failed (standard output closed, disk full).
    #[error("cannot write the answer out: {0}")]
    Output(std::io::Error),
    /// What answers there could not prove it knows the token: not this daemon.
    #[error(
        "the process answering at {at} could not prove it is the stickwarden daemon (it does not know \
         the token): nothing was sent to it; check [api] listen and what listens there"
    )]
    Impostor { at: String },
}

pub struct ApiClient {
    pub at: Listen,
    token: Option<String>,
}

const TIMEOUT: Duration = Duration::from_secs(60);

impl ApiClient {
    pub fn new(at: Listen, token: Option<String>) -> ApiClient {
        ApiClient { at, token }
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ApiClientError> {
        self.call(Method::GET, path, None).await
    }

    pub async fn post<T: DeserializeOwned>(&self, path: &str, body: &impl Serialize) -> Result<T, ApiClientError> {
        let body = serde_json::to_vec(body).expect("requests serialize");
        self.call(Method::POST, path, Some(body)).await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, ApiClientError> {
        let (status, bytes) = self.exchange(method, path, body, true).await?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| self.protocol(format!("unexpected answer: {e}")));
        }
        Err(api_error(status, &bytes))
    }

    /// `GET path` asking for JSON Lines (`application/x-ndjson`), copied to `out` as it arrives:
    /// a long list is never held whole on either side.
    pub async fn get_lines(&self, path: &str, out: &mut impl std::io::Write) -> Result<(), ApiClientError> {
        let resp = tokio::time::timeout(TIMEOUT, self.request(Method::GET, path, None, Some(NDJSON)))
            .await
            .map_err(|_| self.protocol("no answer within 60 s".into()))??;
        let status = resp.status();
        let mut body = resp.into_body();
        if !status.is_success() {
            let bytes = body.collect().await.map_err(|e| self.protocol(e.to_string()))?.to_bytes();
            return Err(api_error(status, &bytes));
        }
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| self.protocol(e.to_string()))?;
            if let Some(data) = frame.data_ref() {
                out.write_all(data).map_err(ApiClientError::Output)?;
            }
        }
        Ok(())
    }

    /// Makes the listener prove it knows this client's token (`GET /v1/identity` with a fresh
    /// nonce, no token sent) before any request carries the token. Without a token there is
    /// nothing to protect: only that something answers is checked.
    pub async fn prove(&self) -> Result<(), ApiClientError> {
        let nonce = super::auth::new_nonce().map_err(|e| self.protocol(format!("no random nonce: {e}")))?;
        let path = format!("/v1/identity?nonce={nonce}");
        let (status, bytes) = self.exchange(Method::GET, &path, None, false).await?;
        let Some(token) = &self.token else { return Ok(()) };
        let expected = super::auth::proof(token.as_bytes(), &nonce);
        let proven = status.is_success()
            && serde_json::from_slice::<super::IdentityView>(&bytes).is_ok_and(|v| v.proofs.contains(&expected));
        if proven {
            Ok(())
        } else {
            Err(ApiClientError::Impostor { at: self.at.to_string() })
        }
    }

    /// One request and its whole answer, within [`TIMEOUT`].
    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        with_token: bool,
    ) -> Result<(StatusCode, Bytes), ApiClientError> {
        let exchange = async {
            let resp = self.request_with(method, path, body, None, with_token).await?;
            let status = resp.status();
            let bytes = resp.into_body().collect().await.map_err(|e| self.protocol(e.to_string()))?.to_bytes();
            Ok::<_, ApiClientError>((status, bytes))
        };
        tokio::time::timeout(TIMEOUT, exchange).await.map_err(|_| self.protocol("no answer within 60 s".into()))?
    }

    fn protocol(&self, message: String) -> ApiClientError {
        ApiClientError::Protocol { at: self.at.to_string(), message }
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        accept: Option<&str>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ApiClientError> {
        self.request_with(method, path, body, accept, true).await
    }

    async fn request_with(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        accept: Option<&str>,
        with_token: bool,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ApiClientError> {
        let at = self.at.to_string();
        let unreachable = |source| ApiClientError::Unreachable { at: at.clone(), source };
        let mut req = Request::builder().method(method).uri(path).header(header::HOST, "stickwarden");
        if let Some(t) = self.token.as_ref().filter(|_| with_token) {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        if let Some(a) = accept {
            req = req.header(header::ACCEPT, a);
        }
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req =
            req.body(Full::new(Bytes::from(body.unwrap_or_default()))).map_err(|e| self.protocol(e.to_string()))?;
        match &self.at {
            Listen::Tcp(addr) => {
                let s = tokio::net::TcpStream::connect(addr).await.map_err(unreachable)?;
                send(TokioIo::new(s), req).await
            }
            Listen::Unix(path) => {
                let s = tokio::net::UnixStream::connect(path).await.map_err(unreachable)?;
                send(TokioIo::new(s), req).await
            }
        }
        .map_err(|e| self.protocol(e.to_string()))
    }
}

/// The media type of JSON Lines.
pub const NDJSON: &str = "application/x-ndjson";

fn api_error(status: StatusCode, bytes: &[u8]) -> ApiClientError {
    match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(b) => ApiClientError::Api { status: status.as_u16(), code: b.error.code, message: b.error.message },
        Err(_) => ApiClientError::Api {
            status: status.as_u16(),
            code: "http_error".into(),
            message: String::from_utf8_lossy(bytes).trim().to_owned(),
        },
    }
}

async fn send<IO>(io: IO, req: Request<Full<Bytes>>) -> Result<hyper::Response<hyper::body::Incoming>, hyper::Error>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(conn);
    sender.send_request(req).await
}

impl ApiClientError {
    /// Whether the API answered that the input was bad (HTTP 400).
    pub fn is_bad_input(&self) -> bool {
        matches!(self, ApiClientError::Api { status, .. } if *status == StatusCode::BAD_REQUEST.as_u16())
    }
}
