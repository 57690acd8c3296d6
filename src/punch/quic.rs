//! QUIC (quinn) over the punched socket, authenticated by certificate
//! fingerprints exchanged through the room (like WebRTC's a=fingerprint,
//! RFC 8122): each peer makes a throwaway self-signed certificate, sends the
//! SHA-256 of it in its offer or answer, and each side accepts exactly the
//! other's certificate — no CA, and a relay or signaling server in the middle
//! cannot impersonate either end.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use sha2::{Digest, Sha256};

/// The TLS server name both sides use; the fingerprint, not the name, is checked.
pub const SERVER_NAME: &str = "natkit-punch";
const ALPN: &[u8] = b"natkit-punch/1";

/// A throwaway identity: certificate, key, and the fingerprint to announce.
pub struct Identity {
    pub cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
    pub fingerprint: String,
}

impl Identity {
    pub fn generate() -> anyhow::Result<Self> {
        let key = RingKey::generate()?;
        let params = rcgen::CertificateParams::new(vec![SERVER_NAME.to_string()])?;
        let cert = CertificateDer::from(params.self_signed(&key)?.der().to_vec());
        let key = PrivatePkcs8KeyDer::from(key.pkcs8);
        let fingerprint = fingerprint(&cert);
        Ok(Identity { cert, key, fingerprint })
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }
}

/// The throwaway ECDSA P-256 key, made and used with ring (rustls's provider here). rcgen's own
/// `KeyPair` would use aws-lc (the build enables it for str0m's DTLS), whose random generator
/// first seeds itself from CPU jitter: 20 ms or so of CPU in every punch process, a tenth of a
/// 64 MiB transfer's (bench-punch profile, docs/BENCHMARKS.md).
struct RingKey {
    pair: ring::signature::EcdsaKeyPair,
    pkcs8: Vec<u8>,
    rng: ring::rand::SystemRandom,
}

impl RingKey {
    fn generate() -> anyhow::Result<Self> {
        let alg = &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING;
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(alg, &rng)
            .map_err(|_| anyhow::anyhow!("generating an ECDSA P-256 key failed (no system randomness?)"))?;
        let pair = ring::signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng)
            .map_err(|e| anyhow::anyhow!("the ECDSA P-256 key just made was rejected: {e}"))?;
        Ok(RingKey { pair, pkcs8: pkcs8.as_ref().to_vec(), rng })
    }
}

impl rcgen::PublicKeyData for RingKey {
    fn der_bytes(&self) -> &[u8] {
        use ring::signature::KeyPair;
        self.pair.public_key().as_ref()
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

impl rcgen::SigningKey for RingKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        // X.509 carries ECDSA signatures ASN.1-encoded, as ECDSA_P256_SHA256_ASN1_SIGNING makes them.
        self.pair.sign(&self.rng, msg).map(|s| s.as_ref().to_vec()).map_err(|_| rcgen::Error::RingUnspecified)
    }
}

/// `sha-256 AB:CD:…` of a DER certificate, as in SDP's a=fingerprint.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    let d = Sha256::digest(cert.as_ref());
    let hex: Vec<String> = d.iter().map(|b| format!("{b:02X}")).collect();
    format!("sha-256 {}", hex.join(":"))
}

#[derive(Debug)]
struct PinnedVerifier {
    expected: String,
    provider: Arc<CryptoProvider>,
}

impl PinnedVerifier {
    fn check(&self, cert: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        if fingerprint(cert).eq_ignore_ascii_case(&self.expected) {
            Ok(())
        } else {
            Err(rustls::Error::General(format!(
                "the peer's certificate fingerprint is not the one announced in the room ({})",
                self.expected
            )))
        }
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }

    fn tls13(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(m, c, d, &self.provider.signature_verification_algorithms)
    }
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity).map(|_| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("QUIC requires TLS 1.3".into()))
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(m, c, d)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes()
    }
}

impl ClientCertVerifier for PinnedVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity).map(|_| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("QUIC requires TLS 1.3".into()))
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(m, c, d)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The largest QUIC datagram on a direct path (see `transport`): what a 1500-byte link carries
/// over IPv6 (1500 - 40 - 8); over IPv4 it could be 1472, but one transport config serves both
/// families and the last 20 bytes are worth 1.4 %.
pub const DIRECT_MAX_UDP_PAYLOAD: u16 = 1452;

/// The largest QUIC datagram the mux lets through a TURN relay: 1404 + a Send or Data indication
/// (48 bytes with an IPv6 peer) + IPv6 + UDP (48) = 1500. Larger ones are dropped there
/// (`MuxSocket`), which quinn's black-hole detection sees as the loss of big packets.
pub const RELAYED_MAX_UDP_PAYLOAD: u16 = 1404;

/// Receive window per stream (the file's one stream); the connection gets twice that.
const STREAM_WINDOW: u32 = 8 * 1024 * 1024;

/// The largest send buffer (unacknowledged plus queued); a file transfer sizes it down to the
/// path (`transfer::SendWindow`).
pub const SEND_WINDOW: u64 = 2 * STREAM_WINDOW as u64;

/// How often an idle QUIC connection sends a PING.
pub const KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(2);

fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    // NAT bindings for UDP often last only 30 s: keep them open while idle. Every 2 s, so that a
    // path no ICE pair watches (the birthday method's) hears from the peer well within
    // `--path-lost-after` while idle: QUIC's own datagrams are its liveness (`punch::session`).
    t.keep_alive_interval(Some(KEEP_ALIVE));
    // Consent freshness (RFC 7675, 30 s), not QUIC's idle timer, decides when a silent path
    // is given up, so the error says why; the idle timer stays as a backstop.
    t.max_idle_timeout(Some(quinn::VarInt::from_u32(40_000).into()));
    // Windows for a fast path with a long round trip: quinn's defaults (1.25 MB per stream) cap a
    // 100 ms path at 100 Mbit/s; 8 MiB per stream carries 670 Mbit/s there. The lab's sub-ms round
    // trip gained 10–25 % from it too (bench-punch A/B, docs/BENCHMARKS.md).
    t.stream_receive_window(quinn::VarInt::from_u32(STREAM_WINDOW));
    t.receive_window(quinn::VarInt::from_u32(2 * STREAM_WINDOW));
    t.send_window(SEND_WINDOW);
    // Start at QUIC's guaranteed 1200 bytes and let path MTU discovery (RFC 8899; on now that the
    // mux sets Don't Fragment through quinn-udp) climb to what a 1500-byte link carries, as the
    // direct path is. When the path moves onto a TURN relay mid-transfer (which quinn does not
    // see: the mux hides it), the wrapping (up to 48 bytes) no longer fits above 1404: the mux
    // drops such packets (`RELAYED_MAX_UDP_PAYLOAD`) and quinn-proto's black-hole detection
    // (RFC 8899 §4.3: four bursts of lost packets all larger than the smallest MTU, with loss
    // probes clamped to 1200 so that the bursts are declared) falls back to 1200, then searches
    // again after `black_hole_cooldown` and settles at or below 1404.
    let mut mtud = quinn::MtuDiscoveryConfig::default();
    mtud.upper_bound(DIRECT_MAX_UDP_PAYLOAD);
    t.mtu_discovery_config(Some(mtud));
    // Congestion control stays Cubic (quinn's default): its BBR, tried in bench-punch, moved half
    // to a third as much at twice the CPU per byte (docs/BENCHMARKS.md).
    Arc::new(t)
}

/// Client side: presents `me`, accepts only a server whose fingerprint is `peer_fingerprint`.
pub fn client_config(me: &Identity, peer_fingerprint: &str) -> anyhow::Result<quinn::ClientConfig> {
    let provider = provider();
    let verifier = Arc::new(PinnedVerifier { expected: peer_fingerprint.to_string(), provider: provider.clone() });
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(vec![me.cert.clone()], me.key())?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let mut cfg = quinn::ClientConfig::new(Arc::new(quinn::crypto::rustls::QuicClientConfig::try_from(tls)?));
    cfg.transport_config(transport());
    Ok(cfg)
}

/// Server side: presents `me`, requires a client certificate whose fingerprint is `peer_fingerprint`.
pub fn server_config(me: &Identity, peer_fingerprint: &str) -> anyhow::Result<quinn::ServerConfig> {
    let provider = provider();
    let verifier = Arc::new(PinnedVerifier { expected: peer_fingerprint.to_string(), provider: provider.clone() });
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![me.cert.clone()], me.key())?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(quinn::crypto::rustls::QuicServerConfig::try_from(tls)?));
    cfg.transport_config(transport());
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_sdp_style_sha256() {
        let id = Identity::generate().expect("identity");
        assert!(id.fingerprint.starts_with("sha-256 "));
        assert_eq!(id.fingerprint.len(), "sha-256 ".len() + 32 * 3 - 1);
        assert_eq!(fingerprint(&id.cert), id.fingerprint);
    }

    #[test]
    fn pinned_verifier_refuses_another_certificate() {
        let a = Identity::generate().expect("a");
        let b = Identity::generate().expect("b");
        let v = PinnedVerifier { expected: a.fingerprint.clone(), provider: provider() };
        assert!(v.check(&a.cert).is_ok());
        assert!(v.check(&b.cert).is_err());
    }
}
