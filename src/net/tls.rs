//! TLS client configuration (rustls) with a verifier that records what it saw.
//!
//! natkit both uses TLS and audits it: the verifier always runs the real
//! WebPKI check and keeps the verdict, then either enforces it or, with
//! `--insecure`, accepts the certificate anyway so the report can say
//! "self-signed certificate accepted because of --insecure".

use std::path::Path;
use std::sync::{Arc, Mutex};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::error::UsageError;

/// What the certificate check concluded, whether or not it was enforced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertVerdict {
    Valid,
    /// Why the certificate would be refused ("self-signed", "expired", ...).
    Invalid(String),
}

#[derive(Debug)]
struct RecordingVerifier {
    inner: Arc<WebPkiServerVerifier>,
    enforce: bool,
    verdict: Mutex<Option<CertVerdict>>,
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let r = self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp, now);
        let verdict = match &r {
            Ok(_) => CertVerdict::Valid,
            Err(e) => CertVerdict::Invalid(describe_cert_error(e)),
        };
        if let Ok(mut v) = self.verdict.lock() {
            *v = Some(verdict);
        }
        match r {
            Err(e) if self.enforce => Err(e),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A sentence for a certificate problem, in an operator's words.
pub fn describe_cert_error(e: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            C::UnknownIssuer => "self-signed or issued by an unknown CA".into(),
            C::Expired | C::ExpiredContext { .. } => "expired".into(),
            C::NotValidYet | C::NotValidYetContext { .. } => "not valid yet".into(),
            C::NotValidForName | C::NotValidForNameContext { .. } => "issued for another name".into(),
            C::Revoked => "revoked".into(),
            C::BadSignature => "bad signature".into(),
            // A certificate that is its own CA: what `openssl req -x509` makes.
            C::Other(o) if format!("{o:?}").contains("CaUsedAsEndEntity") => "self-signed".into(),
            other => format!("invalid ({other:?})"),
        },
        other => other.to_string(),
    }
}

/// TLS settings from the command line.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    pub insecure: bool,
    pub ca: Option<std::path::PathBuf>,
}

/// A client config plus the handle to read the certificate verdict after the handshake.
pub struct TlsClient {
    pub config: Arc<ClientConfig>,
    verifier: Arc<RecordingVerifier>,
}

impl TlsClient {
    pub fn new(opts: &TlsOptions) -> Result<Self, UsageError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(ca) = &opts.ca {
            load_ca(&mut roots, ca)?;
        }
        let inner = WebPkiServerVerifier::builder(Arc::new(roots))
            .build()
            .map_err(|e| UsageError::new(format!("building the TLS verifier: {e}")))?;
        let verifier = Arc::new(RecordingVerifier { inner, enforce: !opts.insecure, verdict: Mutex::new(None) });
        let config = ClientConfig::builder()
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_no_client_auth();
        Ok(TlsClient { config: Arc::new(config), verifier })
    }

    /// The verdict of the most recent handshake made with this config.
    pub fn verdict(&self) -> Option<CertVerdict> {
        self.verifier.verdict.lock().ok().and_then(|v| v.clone())
    }
}

fn load_ca(roots: &mut RootCertStore, path: &Path) -> Result<(), UsageError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| UsageError::new(format!("cannot read CA file {}: {e}", path.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| UsageError::new(format!("bad PEM in CA file {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(UsageError::new(format!("no certificate in CA file {} (expected PEM)", path.display())));
    }
    for c in certs {
        roots.add(c).map_err(|e| UsageError::new(format!("unusable CA certificate in {}: {e}", path.display())))?;
    }
    Ok(())
}

/// The TLS server name for a host: a DNS name or an IP address.
pub fn server_name(host: &crate::net::server_spec::Host) -> Result<ServerName<'static>, UsageError> {
    match host {
        crate::net::server_spec::Host::Ip(ip) => Ok(ServerName::IpAddress((*ip).into())),
        crate::net::server_spec::Host::Name(n) => ServerName::try_from(n.clone())
            .map_err(|_| UsageError::new(format!("'{n}' is not a valid TLS server name"))),
    }
}
