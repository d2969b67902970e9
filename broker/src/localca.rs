//! The local certificate authority behind the proxy's HTTPS: a CA made
//! with rcgen the first time the proxy starts, kept in the state directory
//! (the key 0600, like every file the broker writes), and the short-lived
//! leaf certificate it signs for each `*.localhost` name a client asks for.
//!
//! The CA may sign only names under `localhost`: its certificate carries a
//! critical name constraint (RFC 5280 §4.2.1.10) permitting that subtree
//! alone and excluding every IP address, so trusting it (`pb trust`) lets nobody who steals the key
//! impersonate any other site to clients that check constraints (rustls,
//! NSS, OpenSSL, Chromium's verifier all do).
//!
//! The CA's subject is derived from its key, so the issuer is rebuilt from
//! the key file alone: no certificate parser is needed to sign with it.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
    GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose, NameConstraints,
};

/// The CA certificate's file in the state directory (PEM).
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA key's file (PKCS#8 PEM, 0600).
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// How long the CA is valid: ten years, as mkcert's.
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long a leaf is valid. Leaves live in memory only and are made again
/// well before they end (see [`LEAF_RENEW`]).
pub const LEAF_LIFETIME: Duration = Duration::from_secs(2 * 24 * 3600);
/// A cached leaf with less than this left is made again.
pub const LEAF_RENEW: Duration = Duration::from_secs(24 * 3600);
/// Clocks differ a little between the moment of signing and a client.
const BACKDATE: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{0}: {1}")]
    File(PathBuf, std::io::Error),
    #[error("{0} is readable by others or not ours; delete {0} and {1} to make a new CA")]
    Exposed(PathBuf, PathBuf),
    #[error("{0} does not hold the CA's key ({1}); delete it and {2} to make a new CA")]
    BadKey(PathBuf, String, PathBuf),
    #[error("cannot make a certificate: {0}")]
    Sign(#[from] rcgen::Error),
}

/// The CA, ready to sign.
pub struct LocalCa {
    issuer: Issuer<'static, KeyPair>,
    /// Its certificate (DER), sent after each leaf.
    cert_der: Vec<u8>,
    cert_path: PathBuf,
}

/// A leaf: its chain (leaf, CA) and key, both DER, and when it ends.
pub struct Leaf {
    pub chain: Vec<Vec<u8>>,
    pub key_der: Vec<u8>,
    pub not_after: SystemTime,
}

impl LocalCa {
    /// Loads the CA from `state_dir`, or makes one there when there is
    /// none. A key file that others can read is refused.
    pub fn load_or_create(state_dir: &Path) -> Result<LocalCa, CaError> {
        let key_path = state_dir.join(CA_KEY_FILE);
        let cert_path = state_dir.join(CA_CERT_FILE);
        let key = match fs::read_to_string(&key_path) {
            Ok(pem) => {
                let meta =
                    fs::metadata(&key_path).map_err(|e| CaError::File(key_path.clone(), e))?;
                if meta.permissions().mode() & 0o077 != 0
                    || meta.uid() != pb_platform::os::effective_uid()
                {
                    return Err(CaError::Exposed(key_path, cert_path));
                }
                KeyPair::from_pem(&pem).map_err(|e| {
                    CaError::BadKey(key_path.clone(), e.to_string(), cert_path.clone())
                })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = KeyPair::generate()?;
                // The key first: a key without its certificate is made
                // whole below (and on the next start); a certificate without
                // its key could never be used again.
                let _ = fs::remove_file(&cert_path);
                write_private(&key_path, key.serialize_pem().as_bytes())?;
                key
            }
            Err(e) => return Err(CaError::File(key_path, e)),
        };
        let params = ca_params(&key);
        // The certificate on disk is the one clients trust; it is made again
        // (same key, same subject) only when it is missing.
        let cert_der = match fs::read_to_string(&cert_path) {
            Ok(pem) => pem_der(&pem).unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        let cert_der = if cert_der.is_empty() {
            let cert = params.self_signed(&key)?;
            let _ = fs::remove_file(&cert_path);
            write_private(&cert_path, cert.pem().as_bytes())?;
            cert.der().to_vec()
        } else {
            cert_der
        };
        Ok(LocalCa {
            issuer: Issuer::new(params, key),
            cert_der,
            cert_path,
        })
    }

    /// Where the CA's certificate is (for `--cacert` and `pb trust`).
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// A new leaf for `host` (a `*.localhost` name), valid for
    /// [`LEAF_LIFETIME`].
    pub fn leaf(&self, host: &str) -> Result<Leaf, CaError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![host.to_string()])?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, host);
        params.distinguished_name = dn;
        let now = SystemTime::now();
        params.not_before = at(now - BACKDATE);
        let not_after = now + LEAF_LIFETIME;
        params.not_after = at(not_after);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Leaf {
            chain: vec![cert.der().to_vec(), self.cert_der.clone()],
            key_der: key.serialize_der(),
            not_after,
        })
    }
}

/// The CA's parameters, its subject derived from its key: the same key
/// always gives the same issuer.
fn ca_params(key: &KeyPair) -> CertificateParams {
    use sha2::Digest;
    let id = hex::encode(&sha2::Sha256::digest(key.public_key_raw())[..6]);
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "pb");
    dn.push(DnType::CommonName, format!("pb local CA {id}"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    // DNS names under localhost only; and no IP address at all (a DNS
    // constraint alone says nothing of IP names).
    params.name_constraints = Some(NameConstraints {
        permitted_subtrees: vec![GeneralSubtree::DnsName("localhost".into())],
        excluded_subtrees: vec![
            GeneralSubtree::IpAddress(rcgen::CidrSubnet::from_v4_prefix([0; 4], 0)),
            GeneralSubtree::IpAddress(rcgen::CidrSubnet::from_v6_prefix([0; 16], 0)),
        ],
    });
    // Dates are the certificate's, not the issuer's: they matter only when
    // the certificate is made.
    let now = SystemTime::now();
    params.not_before = at(now - BACKDATE);
    params.not_after = at(now + CA_LIFETIME);
    params
}

fn at(t: SystemTime) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(unix_secs(t))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// The DER of the first certificate in `pem`.
fn pem_der(pem: &str) -> Option<Vec<u8>> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .ok()
        .map(|c| c.to_vec())
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), CaError> {
    let err = |e| CaError::File(path.to_path_buf(), e);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)
}

/// Seconds since the epoch, for certificates.
pub fn unix_secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
