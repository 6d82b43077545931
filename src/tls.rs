//! TLS material from the policy file: the server certificate clients see (STARTTLS, implicit
//! TLS) and the roots the upstream's certificate is checked against. Errors name the file.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::path::Path;
use std::sync::Arc;
use tokio_rustls::rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

fn provider() -> Arc<tokio_rustls::rustls::crypto::CryptoProvider> {
    Arc::new(tokio_rustls::rustls::crypto::ring::default_provider())
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

/// Loads `cert` (PEM, the chain leaf first) and `key` (PEM, PKCS#8, PKCS#1 or SEC1) into an
/// acceptor.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, String> {
    let chain = certificates(cert)?;
    let key_der =
        PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(chain, key_der))
        .map_err(|e| {
            format!(
                "{} and {} do not make a usable certificate: {e}",
                cert.display(),
                key.display()
            )
        })?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A connector that trusts the certificates in `ca` (PEM), or the system's roots
/// (/etc/ssl/certs) when `ca` is None.
pub fn connector(ca: Option<&Path>) -> Result<TlsConnector, String> {
    client_config(ca).map(TlsConnector::from)
}

/// The client side of `connector`, for clients that take a rustls configuration (LDAP).
pub fn client_config(ca: Option<&Path>) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(path) => {
            for cert in certificates(path)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err("no system CA certificates found; set a CA file".into());
            }
        }
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The name the upstream's certificate must carry: `name` when given, else the host part of
/// `address` (an IP address then needs an IP subjectAltName).
pub fn server_name(name: Option<&str>, address: &str) -> Result<ServerName<'static>, String> {
    let host = match name {
        Some(n) => n.to_string(),
        None => match address.parse::<std::net::SocketAddr>() {
            Ok(a) => a.ip().to_string(),
            Err(_) => address
                .rsplit_once(':')
                .map_or(address, |(h, _)| h)
                .to_string(),
        },
    };
    ServerName::try_from(host.clone()).map_err(|e| format!("{host:?} is not a host name: {e}"))
}
