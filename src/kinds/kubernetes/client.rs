//! The API client: `kube` with every request bounded.
//!
//! kube (since 4.0) retries 429/503/504 by itself, which against an aggregated API that
//! keeps answering 503 measured about five minutes per request. Here its retry layer is
//! off and each request has one deadline (`request_timeout_secs`): a failing group costs
//! one request, and the source decides what to retry (a 410 on a continue token).

use std::time::Duration;

use super::{KubeError, KubernetesJob};

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
    timeout: Duration,
    rt: tokio::runtime::Runtime,
    /// The server's address, for messages.
    pub server: String,
}

impl Kube {
    /// Builds the client (reads the kubeconfig or token). Makes no request.
    pub fn connect(job: &KubernetesJob) -> Result<Kube, KubeError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|err| KubeError::Io {
                context: "starting the client's runtime".into(),
                err,
            })?;
        let timeout = Duration::from_secs(job.request_timeout_secs);
        let mut config = match (&job.kubeconfig, &job.server) {
            (Some(path), _) => {
                let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| {
                    KubeError::Settings(format!("kubeconfig {}: {e}", path.display()))
                })?;
                let opts = kube::config::KubeConfigOptions {
                    context: job.context.clone(),
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
                if let Some(t) = &job.token_file {
                    let token = std::fs::read_to_string(t).map_err(|err| KubeError::Io {
                        context: format!("token file {}", t.display()),
                        err,
                    })?;
                    c.auth_info.token = Some(secrecy::SecretString::from(token.trim().to_string()));
                }
                if let Some(ca) = &job.ca_file {
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
        let client = {
            let _guard = rt.enter();
            kube::Client::try_from(config)
                .map_err(|e| KubeError::Settings(format!("building the client: {e}")))?
        };
        Ok(Kube {
            client,
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
        let req = http::Request::get(path_and_query)
            .header(http::header::ACCEPT, "application/json")
            .body(Vec::new())
            .map_err(|e| RequestError {
                status: None,
                reason: String::new(),
                message: format!("bad request {path_and_query}: {e}"),
            })?;
        let call = self.client.request::<T>(req);
        let result = self
            .rt
            .block_on(async { tokio::time::timeout(self.timeout, call).await });
        match result {
            Err(_) => Err(RequestError {
                status: Some(504),
                reason: "Timeout".into(),
                message: format!(
                    "no answer within {} s (request_timeout_secs)",
                    self.timeout.as_secs()
                ),
            }),
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(classify(e, &self.server)),
        }
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
