//! The API client: `kube` with every request bounded.
//!
//! kube (since 4.0) retries 429/503/504 by itself, which against an aggregated API that
//! keeps answering 503 measured about five minutes per request. Here its retry layer is
//! off and each request has one deadline (`request_timeout_secs`): a failing group costs
//! one request, and the source decides what to retry (a 410 on a continue token).

use std::path::Path;
use std::time::Duration;

use super::KubeError;

/// How to reach the API server; the kinds that talk to it (`kubernetes`, `volume`) share
/// these settings and their validation.
#[derive(Clone, Copy, Debug)]
pub struct Connection<'a> {
    pub kubeconfig: Option<&'a Path>,
    pub context: Option<&'a str>,
    pub server: Option<&'a str>,
    pub token_file: Option<&'a Path>,
    pub ca_file: Option<&'a Path>,
    pub request_timeout_secs: u64,
}

impl Connection<'_> {
    /// Checked at config load: one way in (a kubeconfig, or server + token), and a sane
    /// timeout. Returns the offending key and the message.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        match (self.kubeconfig, self.server, self.token_file) {
            (Some(_), None, None) => {}
            (None, Some(s), Some(_)) => {
                if !(s.starts_with("https://") || s.starts_with("http://")) {
                    return Err((
                        "server",
                        format!("{s:?} must be an http:// or https:// URL"),
                    ));
                }
            }
            (None, Some(_), None) => {
                return Err(("token_file", "is needed with `server`".into()));
            }
            (None, None, _) => {
                return Err((
                    "kubeconfig",
                    "give a kubeconfig, or `server` and `token_file`".into(),
                ));
            }
            _ => {
                return Err((
                    "kubeconfig",
                    "give either a kubeconfig or `server` and `token_file`, not both".into(),
                ));
            }
        }
        if self.context.is_some() && self.kubeconfig.is_none() {
            return Err(("context", "needs `kubeconfig`".into()));
        }
        if self.ca_file.is_some() && self.kubeconfig.is_some() {
            return Err((
                "ca_file",
                "goes with `server`; a kubeconfig carries its own certificate-authority".into(),
            ));
        }
        if !(1..=600).contains(&self.request_timeout_secs) {
            return Err(("request_timeout_secs", "must be between 1 and 600".into()));
        }
        Ok(())
    }

    /// For descriptions: the kubeconfig's path or the server's URL (never a secret).
    pub fn describe(&self) -> String {
        match (self.kubeconfig, self.server) {
            (Some(k), _) => format!("kubeconfig {}", k.display()),
            (None, Some(s)) => s.to_string(),
            _ => String::new(),
        }
    }
}

/// A failed request: the HTTP status if the server answered, and its message (from the
/// `Status` body when there was one).
#[derive(Debug, Clone)]
pub struct RequestError {
    pub status: Option<u16>,
    pub reason: String,
    pub message: String,
}

impl std::fmt::Display for RequestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.status {
            Some(code) if self.reason.is_empty() => write!(f, "{code}: {}", self.message),
            Some(code) => write!(f, "{code} {}: {}", self.reason, self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl RequestError {
    /// The server is not there or does not accept us: nothing else will work either.
    pub fn is_fatal(&self) -> bool {
        matches!(self.status, None | Some(401))
    }
}

pub struct Kube {
    client: kube::Client,
    /// For exec: the same, without a read timeout. kube's read timeout sits on the TCP
    /// stream and survives the WebSocket upgrade, so an exec quiet for that long (a
    /// listing sorting 100,000 names, a writer that prints nothing) would be cut.
    exec_client: kube::Client,
    timeout: Duration,
    rt: tokio::runtime::Runtime,
    /// The server's address, for messages.
    pub server: String,
}

impl Kube {
    /// Builds the client (reads the kubeconfig or token). Makes no request.
    pub fn connect(job: &Connection<'_>) -> Result<Kube, KubeError> {
        // One worker thread: an exec's WebSocket is driven in the background while the
        // caller reads its output synchronously from another thread.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("backuphub-kube")
            .enable_all()
            .build()
            .map_err(|err| KubeError::Io {
                context: "starting the client's runtime".into(),
                err,
            })?;
        let timeout = Duration::from_secs(job.request_timeout_secs);
        let mut config = match (job.kubeconfig, job.server) {
            (Some(path), _) => {
                let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| {
                    KubeError::Settings(format!("kubeconfig {}: {e}", path.display()))
                })?;
                let opts = kube::config::KubeConfigOptions {
                    context: job.context.map(str::to_string),
                    ..Default::default()
                };
                rt.block_on(kube::Config::from_custom_kubeconfig(kc, &opts))
                    .map_err(|e| {
                        KubeError::Settings(format!("kubeconfig {}: {e}", path.display()))
                    })?
            }
            (None, Some(server)) => {
                let uri: http::Uri = server
                    .parse()
                    .map_err(|e| KubeError::Settings(format!("server {server:?}: {e}")))?;
                let mut c = kube::Config::new(uri);
                if let Some(t) = job.token_file {
                    let token = std::fs::read_to_string(t).map_err(|err| KubeError::Io {
                        context: format!("token file {}", t.display()),
                        err,
                    })?;
                    c.auth_info.token = Some(secrecy::SecretString::from(token.trim().to_string()));
                }
                if let Some(ca) = job.ca_file {
                    use rustls::pki_types::pem::PemObject;
                    let certs = rustls::pki_types::CertificateDer::pem_file_iter(ca)
                        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                        .map_err(|e| {
                            KubeError::Settings(format!("ca_file {}: {e}", ca.display()))
                        })?;
                    c.root_cert = Some(certs.into_iter().map(|c| c.to_vec()).collect());
                }
                c
            }
            (None, None) => {
                return Err(KubeError::Settings(
                    "give a kubeconfig, or server and token_file".into(),
                ));
            }
        };
        config.default_retry = false;
        config.connect_timeout = Some(timeout);
        config.read_timeout = Some(timeout);
        config.write_timeout = Some(timeout);
        let server = config.cluster_url.to_string();
        let mut exec_config = config.clone();
        exec_config.read_timeout = None;
        let (client, exec_client) = {
            let _guard = rt.enter();
            let build = |c: kube::Config| {
                kube::Client::try_from(c)
                    .map_err(|e| KubeError::Settings(format!("building the client: {e}")))
            };
            (build(config)?, build(exec_config)?)
        };
        Ok(Kube {
            client,
            exec_client,
            timeout,
            rt,
            server,
        })
    }

    /// GETs `path_and_query` as JSON.
    pub fn get<T: serde::de::DeserializeOwned>(
        &self,
        path_and_query: &str,
    ) -> Result<T, RequestError> {
        self.call(http::Method::GET, path_and_query, None)
    }

    /// POSTs `body` (a new object) to a collection; returns the object as stored.
    pub fn create(
        &self,
        collection: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, RequestError> {
        self.call(http::Method::POST, collection, Some(body))
    }

    /// DELETEs one object; `Ok(false)` when it was not there (already gone is fine).
    pub fn delete(&self, path: &str) -> Result<bool, RequestError> {
        match self.call::<serde_json::Value>(http::Method::DELETE, path, None) {
            Ok(_) => Ok(true),
            Err(e) if e.status == Some(404) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: http::Method,
        path_and_query: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<T, RequestError> {
        let bad = |e: &dyn std::fmt::Display| RequestError {
            status: None,
            reason: String::new(),
            message: format!("bad request {path_and_query}: {e}"),
        };
        let mut req = http::Request::builder()
            .method(method)
            .uri(path_and_query)
            .header(http::header::ACCEPT, "application/json");
        let bytes = match body {
            Some(b) => {
                req = req.header(http::header::CONTENT_TYPE, "application/json");
                serde_json::to_vec(b).map_err(|e| bad(&e))?
            }
            None => Vec::new(),
        };
        let req = req.body(bytes).map_err(|e| bad(&e))?;
        let call = self.client.request::<T>(req);
        let result = self
            .rt
            .block_on(async { tokio::time::timeout(self.timeout, call).await });
        match result {
            Err(_) => Err(self.timed_out()),
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(classify(e, &self.server)),
        }
    }

    fn timed_out(&self) -> RequestError {
        RequestError {
            status: Some(504),
            reason: "Timeout".into(),
            message: format!(
                "no answer within {} s (request_timeout_secs)",
                self.timeout.as_secs()
            ),
        }
    }

    /// Runs `argv` in a pod's container over the exec WebSocket (`v5.channel.k8s.io`,
    /// falling back to v4), with stdin, stdout and stderr attached.
    pub fn exec(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        argv: Vec<String>,
    ) -> Result<kube::api::AttachedProcess, RequestError> {
        let api: kube::Api<k8s_openapi::api::core::v1::Pod> =
            kube::Api::namespaced(self.exec_client.clone(), namespace);
        // kube's default pipes are 1 KiB: a hand-off between tasks per KiB.
        let params = kube::api::AttachParams::default()
            .container(container)
            .stdin(true)
            .stdout(true)
            .stderr(true)
            .max_stdin_buf_size(256 * 1024)
            .max_stdout_buf_size(256 * 1024)
            .max_stderr_buf_size(64 * 1024);
        let call = api.exec(pod, argv, &params);
        match self
            .rt
            .block_on(async { tokio::time::timeout(self.timeout, call).await })
        {
            Err(_) => Err(self.timed_out()),
            Ok(Ok(p)) => Ok(p),
            Ok(Err(kube::Error::UpgradeConnection(
                kube::client::UpgradeConnectionError::ProtocolSwitch(code),
            ))) => Err(RequestError {
                status: Some(code.as_u16()),
                reason: String::new(),
                message: "the API server refused the exec".into(),
            }),
            Ok(Err(e)) => Err(classify(e, &self.server)),
        }
    }

    /// The runtime's handle, for bridging an exec's streams into synchronous readers.
    pub fn handle(&self) -> tokio::runtime::Handle {
        self.rt.handle().clone()
    }
}

fn classify(e: kube::Error, server: &str) -> RequestError {
    match e {
        kube::Error::Api(s) => RequestError {
            status: Some(s.code),
            reason: s.reason.clone(),
            message: s.message.clone(),
        },
        other => {
            // Connection refused, DNS, TLS: nothing answered.
            let mut msg = other.to_string();
            let mut source = std::error::Error::source(&other);
            while let Some(inner) = source {
                let t = inner.to_string();
                if !msg.contains(&t) {
                    msg.push_str(&format!(": {t}"));
                }
                source = inner.source();
            }
            RequestError {
                status: None,
                reason: String::new(),
                message: format!("cannot reach the API server at {server}: {msg}"),
            }
        }
    }
}
