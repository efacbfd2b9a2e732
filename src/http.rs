//! The one way rearguard builds an HTTP client: the process-wide rustls crypto provider
//! (ring) is installed here, once, and every client shares the same defaults (user agent,
//! no proxy taken from the environment, connect timeout, bounded redirects).
//!
//! This module sends no requests and sets no request timeout: each caller bounds its own
//! requests, because a probe, a webhook and a Prometheus query need different bounds.

use std::sync::Once;
use std::time::Duration;

/// The `User-Agent` of every request rearguard sends.
pub const USER_AGENT: &str = concat!("rearguard/", env!("CARGO_PKG_VERSION"));

/// How long establishing a connection (TCP and TLS) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How many redirects a request follows before it fails.
pub const MAX_REDIRECTS: usize = 5;

static CRYPTO_PROVIDER: Once = Once::new();

/// Installs ring as the process-wide rustls crypto provider, once. Another provider
/// installed first (by an embedding program) is left in place.
pub fn install_crypto_provider() {
    CRYPTO_PROVIDER.call_once(|| {
        // An error only means a provider is already installed, which is what we want.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A client with rearguard's defaults. Clients are cheap to clone and share one
/// connection pool; build one at startup and hand clones to sources and actions.
///
/// When the system's CA certificates cannot be loaded (a minimal container image), the
/// client is built without trusted roots: plain HTTP keeps working and HTTPS requests
/// fail with a certificate error, which a probe reports as a failed check.
pub fn client() -> reqwest::Client {
    install_crypto_provider();
    match builder().build() {
        Ok(client) => client,
        Err(error) => {
            tracing::warn!(
                error = %error,
                "cannot build an http client with the system's certificates; https requests will fail"
            );
            match builder().tls_certs_only(std::iter::empty()).build() {
                Ok(client) => client,
                Err(error) => {
                    tracing::error!(error = %error, "cannot build an http client without certificates");
                    // The library default has no further failure cases we can avoid.
                    reqwest::Client::default()
                }
            }
        }
    }
}

/// A client for one source with its own TLS settings: extra CA certificates from a PEM
/// file, or (tests and emergencies only) no certificate verification. Without settings it
/// is the shared [`client`].
pub fn client_with(tls: &crate::config::TlsSpec) -> Result<reqwest::Client, String> {
    if tls.ca_file.is_none() && !tls.insecure_skip_verify {
        return Ok(client());
    }
    install_crypto_provider();
    let mut b = builder();
    if let Some(path) = &tls.ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| format!("cannot read ca_file {}: {e}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            format!(
                "ca_file {} holds no usable PEM certificate: {e}",
                path.display()
            )
        })?;
        if certs.is_empty() {
            return Err(format!("ca_file {} holds no certificate", path.display()));
        }
        for cert in certs {
            b = b.add_root_certificate(cert);
        }
    }
    if tls.insecure_skip_verify {
        b = b.tls_danger_accept_invalid_certs(true);
    }
    b.build()
        .map_err(|e| format!("cannot build the http client: {}", describe_error(&e)))
}

fn builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .no_proxy()
        .connect_timeout(CONNECT_TIMEOUT)
        .redirect(reqwest::redirect::Policy::limited(MAX_REDIRECTS))
}

/// What went wrong with a request, for a reading's detail or an action's error: the
/// causes from reqwest, hyper and the OS, without the URL (which may hold credentials).
/// A connection that could not be made or was reset is `connection failed: ...`. A
/// timeout is described as `timed out`; callers that know the bound say more.
pub fn describe_error(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        return "timed out".to_owned();
    }
    let causes = causes(error);
    let what = if error.is_connect() || connection_broke(error) {
        "connection failed"
    } else if error.is_redirect() {
        "redirect failed"
    } else if error.is_body() || error.is_decode() {
        "reading the body failed"
    } else if error.is_builder() {
        "invalid request"
    } else {
        "request failed"
    };
    if causes.is_empty() {
        what.to_owned()
    } else {
        format!("{what}: {causes}")
    }
}

/// Whether the OS reports the connection refused, reset or closed under us.
fn connection_broke(error: &reqwest::Error) -> bool {
    let mut next = std::error::Error::source(error);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            )
        {
            return true;
        }
        next = e.source();
    }
    false
}

/// The messages of an error's sources, most general first, lowercased, skipping wrappers
/// that add nothing and the top-level message (it names the URL).
fn causes(error: &reqwest::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = std::error::Error::source(error);
    while let Some(e) = next {
        let text = e.to_string();
        next = e.source();
        // hyper's wrappers only name the phase, which the caller already reports.
        let wrapper =
            text.starts_with("client error (") || (text == "connection error" && next.is_some());
        if wrapper || text.is_empty() {
            continue;
        }
        let text = lowercase_first(&text);
        if parts.last().is_some_and(|p| p.contains(text.as_str())) {
            continue;
        }
        parts.push(text);
    }
    parts.join(": ")
}

fn lowercase_first(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        // Keep acronyms ("TLS handshake") as they are.
        Some(c) if c.is_uppercase() && !chars.next().is_some_and(char::is_uppercase) => c
            .to_lowercase()
            .chain(text[c.len_utf8()..].chars())
            .collect(),
        _ => text.to_owned(),
    }
}

/// A URL as it may be shown: without user name and password.
pub fn redacted(url: &reqwest::Url) -> String {
    if url.username().is_empty() && url.password().is_none() {
        return url.to_string();
    }
    let mut shown = url.clone();
    // Only URLs that cannot have credentials reject these, and those have none.
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.to_string()
}
