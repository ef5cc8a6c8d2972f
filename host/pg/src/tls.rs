//! TLS by rustls for every libpq sslmode, shared by the replication connection and ordinary SQL
//! connections (tokio-postgres, through [`MakeRustls`]).
//!
//! - `prefer` / `require`: encrypt, verify nothing (libpq's meaning; only handshake signatures
//!   are checked so the session keys belong to whoever presented the certificate).
//! - `verify-ca`: the chain must lead to a trusted root; the host name is not checked.
//! - `verify-full`: chain and host name.
//!
//! Roots come from `sslrootcert` when set, otherwise from the platform store. The server's
//! certificate is also what SCRAM channel binding (`tls-server-end-point`) hashes.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::Digest;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::error::ConnectError;
use super::options::ConnectOptions;
use walflow_config::SslMode;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the rustls client configuration for `opts.sslmode` (`None` for `disable`).
pub fn client_config(opts: &ConnectOptions) -> Result<Option<Arc<ClientConfig>>, ConnectError> {
    let tls_err = |message: String| ConnectError::Tls {
        addr: opts.addr(),
        message,
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(format!("cannot set up TLS: {e}")))?;
    let config = match opts.sslmode {
        SslMode::Disable => return Ok(None),
        SslMode::Prefer | SslMode::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider())))
            .with_no_client_auth(),
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let roots = Arc::new(load_roots(opts)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider())
                .build()
                .map_err(|e| tls_err(format!("cannot use the root certificates: {e}")))?;
            let verifier: Arc<dyn ServerCertVerifier> = if opts.sslmode == SslMode::VerifyCa {
                Arc::new(ChainOnly(webpki))
            } else {
                webpki
            };
            builder
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_no_client_auth()
        }
    };
    Ok(Some(Arc::new(config)))
}

fn load_roots(opts: &ConnectOptions) -> Result<RootCertStore, ConnectError> {
    let tls_err = |message: String| ConnectError::Tls {
        addr: opts.addr(),
        message,
    };
    let mut roots = RootCertStore::empty();
    let given = match (&opts.sslrootcert_pem, &opts.sslrootcert) {
        (Some(pem), _) => Some(("sslrootcert_pem".to_string(), pem.as_bytes().to_vec())),
        (None, Some(path)) => {
            let pem = std::fs::read(path).map_err(|e| {
                tls_err(format!(
                    "cannot read sslrootcert {} ({e}); point sslrootcert at the PEM file of the CA that signed the server's certificate",
                    path.display()
                ))
            })?;
            Some((format!("sslrootcert {}", path.display()), pem))
        }
        (None, None) => None,
    };
    match given {
        Some((what, pem)) => {
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert = cert.map_err(|e| tls_err(format!("{what} is not valid PEM ({e})")))?;
                roots
                    .add(cert)
                    .map_err(|e| tls_err(format!("{what} holds a bad certificate ({e})")))?;
            }
            if roots.is_empty() {
                return Err(tls_err(format!(
                    "{what} holds no certificate; give the PEM of the CA that signed the server's certificate"
                )));
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
            if roots.is_empty() {
                return Err(tls_err(
                    "sslmode verify-ca/verify-full needs root certificates, and the platform store is empty; set sslrootcert to the CA's PEM file".into(),
                ));
            }
        }
    }
    Ok(roots)
}

/// The name the server's certificate must carry (also used for SNI when it is a DNS name).
pub fn server_name(host: &str) -> Result<ServerName<'static>, ConnectError> {
    ServerName::try_from(host.to_string()).map_err(|_| {
        ConnectError::Options(format!(
            "`{host}` is neither a valid DNS name nor an IP address"
        ))
    })
}

/// Turns a rustls handshake failure into a message that says what to do.
pub fn handshake_error(opts: &ConnectOptions, e: io::Error) -> ConnectError {
    let addr = opts.addr();
    let inner = e
        .get_ref()
        .and_then(|i| i.downcast_ref::<rustls::Error>())
        .cloned();
    let message = match inner {
        Some(rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        )) => format!(
            "the server's certificate is not valid for the host name \"{}\" (sslmode=verify-full); connect using a name the certificate lists, or use sslmode=verify-ca",
            opts.host
        ),
        Some(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)) => {
            "the server's certificate is not signed by a trusted root; set sslrootcert to the CA's PEM file".to_string()
        }
        Some(rustls::Error::InvalidCertificate(c)) => format!(
            "the server's certificate was rejected ({c:?}); check the server certificate and sslrootcert"
        ),
        Some(other) => format!("{other}; check the server's TLS settings and sslmode"),
        None => return ConnectError::Broken { addr, source: e },
    };
    ConnectError::Tls { addr, message }
}

/// The `tls-server-end-point` channel binding data (RFC 5929): the hash of the server's
/// certificate with its signature's hash, SHA-256 for MD5/SHA-1/SHA-256 and unknown ones.
pub fn end_point_hash(cert: &[u8]) -> Vec<u8> {
    match signature_hash(cert) {
        SigHash::Sha384 => sha2::Sha384::digest(cert).to_vec(),
        SigHash::Sha512 => sha2::Sha512::digest(cert).to_vec(),
        SigHash::Sha256 => sha2::Sha256::digest(cert).to_vec(),
    }
}

enum SigHash {
    Sha256,
    Sha384,
    Sha512,
}

/// Reads the `signatureAlgorithm` OID of an X.509 certificate (the second element of the
/// outer SEQUENCE) and maps it to its hash.
fn signature_hash(cert: &[u8]) -> SigHash {
    const SHA384: [&[u8]; 2] = [
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c], // sha384WithRSAEncryption
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03],       // ecdsa-with-SHA384
    ];
    const SHA512: [&[u8]; 2] = [
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d], // sha512WithRSAEncryption
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04],       // ecdsa-with-SHA512
    ];
    let oid = (|| {
        let (outer, _) = der_element(cert)?;
        let (_tbs, rest) = der_element(outer)?;
        let (alg, _) = der_element(rest)?;
        let (oid, _) = der_element(alg)?;
        Some(oid)
    })();
    match oid {
        Some(o) if SHA384.contains(&o) => SigHash::Sha384,
        Some(o) if SHA512.contains(&o) => SigHash::Sha512,
        _ => SigHash::Sha256,
    }
}

/// Splits one DER element off `input`: (its contents, what follows it).
fn der_element(input: &[u8]) -> Option<(&[u8], &[u8])> {
    let first_len = *input.get(1)?;
    let (len, header) = if first_len < 0x80 {
        (first_len as usize, 2)
    } else {
        let n = (first_len & 0x7f) as usize;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for b in input.get(2..2 + n)? {
            len = (len << 8) | *b as usize;
        }
        (len, 2 + n)
    };
    let end = header.checked_add(len)?;
    Some((input.get(header..end)?, input.get(end..)?))
}

/// `prefer`/`require`: any certificate, but the handshake signatures must verify.
#[derive(Debug)]
struct AcceptAnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the web PKI verifier with the host-name mismatch forgiven.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// tokio-postgres's TLS hook, backed by rustls with the configuration of [`client_config`].
#[derive(Clone)]
pub struct MakeRustls {
    config: Arc<ClientConfig>,
}

impl MakeRustls {
    /// Wraps a client configuration.
    pub fn new(config: Arc<ClientConfig>) -> MakeRustls {
        MakeRustls { config }
    }
}

impl<S> tokio_postgres::tls::MakeTlsConnect<S> for MakeRustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnect, io::Error> {
        let name = ServerName::try_from(domain.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(RustlsConnect {
            config: self.config.clone(),
            name,
        })
    }
}

/// One pending TLS handshake for tokio-postgres.
pub struct RustlsConnect {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl<S> tokio_postgres::tls::TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let connector = tokio_rustls::TlsConnector::from(self.config);
            let tls = connector.connect(self.name, stream).await?;
            Ok(RustlsStream(Box::new(tls)))
        })
    }
}

/// A TLS stream handed to tokio-postgres.
pub struct RustlsStream<S>(Box<tokio_rustls::client::TlsStream<S>>);

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> tokio_postgres::tls::ChannelBinding {
        let (_, conn) = self.0.get_ref();
        match conn.peer_certificates().and_then(|c| c.first()) {
            Some(cert) => {
                tokio_postgres::tls::ChannelBinding::tls_server_end_point(end_point_hash(cert))
            }
            None => tokio_postgres::tls::ChannelBinding::none(),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_walk_survives_garbage() {
        assert!(matches!(signature_hash(&[]), SigHash::Sha256));
        assert!(matches!(
            signature_hash(&[0x30, 0x85, 1, 2]),
            SigHash::Sha256
        ));
        assert_eq!(end_point_hash(b"x").len(), 32);
    }
}
