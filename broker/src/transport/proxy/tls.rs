//! TLS for the proxy (rustls, ring): a leaf certificate for the very name
//! a client asks for (SNI), signed by the local CA on first use, kept in
//! memory and made again a day before it ends. A client that names no
//! server, or a name outside `*.localhost`, gets no certificate.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls;
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;

use crate::hostnames;
use crate::localca::{LocalCa, LEAF_RENEW};

/// Most leaves kept; beyond it the cache starts again.
const MAX_LEAVES: usize = 1024;

struct Leaves {
    ca: LocalCa,
    cache: Mutex<HashMap<String, (Arc<CertifiedKey>, SystemTime)>>,
}

impl std::fmt::Debug for Leaves {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Leaves(..)")
    }
}

impl ResolvesServerCert for Leaves {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let host = hostnames::request_host(hello.server_name()?)?;
        if !hostnames::is_ours(&host) {
            return None;
        }
        let now = SystemTime::now();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((key, ends)) = cache.get(&host) {
            if ends.duration_since(now).is_ok_and(|left| left > LEAF_RENEW) {
                return Some(key.clone());
            }
        }
        let leaf = match self.ca.leaf(&host) {
            Ok(l) => l,
            Err(e) => {
                tracing::info!("proxy: no certificate for {host}: {e}");
                return None;
            }
        };
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf.key_der));
        let signing = rustls::crypto::ring::sign::any_ecdsa_type(&key).ok()?;
        let chain = leaf.chain.into_iter().map(CertificateDer::from).collect();
        let certified = Arc::new(CertifiedKey::new(chain, signing));
        if cache.len() >= MAX_LEAVES {
            cache.clear();
        }
        cache.insert(host, (certified.clone(), leaf.not_after));
        Some(certified)
    }
}

/// The proxy's TLS acceptor: HTTP/2 and HTTP/1.1 by ALPN.
pub fn acceptor(ca: LocalCa) -> Result<tokio_rustls::TlsAcceptor, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Leaves {
            ca,
            cache: Mutex::new(HashMap::new()),
        }));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}
