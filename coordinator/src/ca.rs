//! The coordinator's certificate authority.
//!
//! On first start it creates a self-signed CA (ECDSA P-256, via rcgen on ring)
//! in the data dir; the key file is 0600 and a group- or world-readable key is
//! refused at load. The CA signs one server certificate per start (for the
//! configured names and IPs) and one client certificate per enrolled node. The
//! CA fingerprint (SHA-256 of the CA certificate DER) is what join tokens pin.

use std::fs;
use std::io::Write as _;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use rand_core::{OsRng, RngCore as _};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use segmesh_config::NodeName;
use sha2::{Digest as _, Sha256};
use time::OffsetDateTime;

use crate::store::{IssuedCert, UnixTime};

const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca.key";
const DAY: i64 = 86_400;
/// Node certificates live long: revocation is enforced by the coordinator
/// (serial and revoked flag checked on every mTLS request), not by expiry.
const NODE_CERT_DAYS: i64 = 5 * 365;
const CA_DAYS: i64 = 20 * 365;
const SERVER_DAYS: i64 = 365;

/// Why the CA could not be loaded, created or used.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}: private key is readable by group or others; chmod 600 it")]
    KeyMode(PathBuf),
    #[error("{path}: {message}")]
    Load { path: PathBuf, message: String },
    #[error("certificate signing request rejected: {0}")]
    Csr(String),
    #[error("certificate generation failed: {0}")]
    Generate(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CaError + '_ {
    move |source| CaError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn gen_err(e: rcgen::Error) -> CaError {
    CaError::Generate(e.to_string())
}

/// Lower-case hex (certificate serials, fingerprints, stored hashes).
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Hex SHA-256 of some bytes (the CA fingerprint form).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Writes a secret file that only the owner can read (created 0600, and
/// re-chmodded in case it already existed with wider permissions).
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), CaError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    f.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

/// Reads a secret file, refusing one that group or others can read.
pub fn read_private(path: &Path) -> Result<String, CaError> {
    let meta = fs::metadata(path).map_err(io(path))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(CaError::KeyMode(path.to_path_buf()));
    }
    fs::read_to_string(path).map_err(io(path))
}

fn validity(params: &mut CertificateParams, now: UnixTime, days: i64) -> Result<(), CaError> {
    let at = |t: i64| {
        OffsetDateTime::from_unix_timestamp(t).map_err(|e| CaError::Generate(e.to_string()))
    };
    // An hour of slack for clocks that are slightly behind ours.
    params.not_before = at(now - 3600)?;
    params.not_after = at(now + days * DAY)?;
    Ok(())
}

fn random_serial() -> (SerialNumber, String) {
    let mut b = [0u8; 16];
    OsRng.fill_bytes(&mut b);
    b[0] &= 0x7f; // positive INTEGER without a leading zero byte
    b[0] |= 0x01;
    (SerialNumber::from_slice(&b), hex(&b))
}

/// The loaded CA.
pub struct Ca {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// Loads the CA from `dir`, creating it on first start. Returns whether
    /// it was created.
    pub fn load_or_create(dir: &Path, now: UnixTime) -> Result<(Self, bool), CaError> {
        let cert_path = dir.join(CA_CERT);
        let key_path = dir.join(CA_KEY);
        if cert_path.exists() {
            let cert_pem = fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
            let key_pem = read_private(&key_path)?;
            let load = |path: &Path, e: rcgen::Error| CaError::Load {
                path: path.to_path_buf(),
                message: e.to_string(),
            };
            let key = KeyPair::from_pem(&key_pem).map_err(|e| load(&key_path, e))?;
            let ca = Self::from_parts(cert_pem, key).map_err(|e| match e {
                CaError::Generate(m) => CaError::Load {
                    path: cert_path.clone(),
                    message: m,
                },
                other => other,
            })?;
            return Ok((ca, false));
        }
        let key = KeyPair::generate().map_err(gen_err)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "segmesh coordinator CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(random_serial().0);
        validity(&mut params, now, CA_DAYS)?;
        let cert = params.self_signed(&key).map_err(gen_err)?;
        // Key first: a crash in between leaves no certificate without its key.
        write_private(&key_path, key.serialize_pem().as_bytes())?;
        fs::write(&cert_path, cert.pem()).map_err(io(&cert_path))?;
        Ok((Self::from_parts(cert.pem(), key)?, true))
    }

    fn from_parts(cert_pem: String, key: KeyPair) -> Result<Self, CaError> {
        use rustls_pki_types::pem::PemObject as _;
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| CaError::Generate(e.to_string()))?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(gen_err)?;
        Ok(Self {
            cert_pem,
            cert_der,
            issuer,
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// SHA-256 of the CA certificate DER, hex: what join tokens pin.
    pub fn fingerprint(&self) -> String {
        sha256_hex(&self.cert_der)
    }

    /// A fresh server certificate for `names` (DNS names or IP addresses)
    /// and its key; the chain is [server, CA] so a node that only knows the
    /// CA's hash can find and pin the CA in the handshake.
    pub fn server_identity(
        &self,
        names: &[String],
        now: UnixTime,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), CaError> {
        let key = KeyPair::generate().map_err(gen_err)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "segmesh coordinator");
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => n.clone().try_into().map(SanType::DnsName).map_err(gen_err),
            })
            .collect::<Result<_, _>>()?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.serial_number = Some(random_serial().0);
        validity(&mut params, now, SERVER_DAYS)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(gen_err)?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((vec![cert.der().clone(), self.cert_der.clone()], key_der))
    }

    /// Signs a node's CSR: CN = node name, EKU ClientAuth, not a CA, a fresh
    /// random serial. Whatever else the CSR asks for is ignored; only its
    /// public key is used, after its self-signature is verified.
    pub fn sign_client(
        &self,
        csr_pem: &str,
        name: &NodeName,
        now: UnixTime,
    ) -> Result<IssuedCert, CaError> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| CaError::Csr(e.to_string()))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, name.as_str());
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let (serial, serial_hex) = random_serial();
        params.serial_number = Some(serial);
        validity(&mut params, now, NODE_CERT_DAYS)?;
        csr.params = params;
        let cert = csr.signed_by(&self.issuer).map_err(gen_err)?;
        Ok(IssuedCert {
            serial_hex,
            cert_pem: cert.pem(),
        })
    }
}

/// The node name (CN) and hex serial of a client certificate the TLS layer
/// already verified against the CA.
pub fn client_identity(der: &[u8]) -> Result<(NodeName, String), String> {
    use x509_parser::prelude::FromDer as _;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der)
        .map_err(|e| format!("unreadable client certificate: {e}"))?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or("client certificate has no common name")?;
    let name = NodeName::new(cn).map_err(|e| e.to_string())?;
    Ok((name, hex(cert.raw_serial())))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: UnixTime = 1_800_000_000;

    fn csr() -> String {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, "admin"); // ignored
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained); // ignored
        p.serialize_request(&key).unwrap().pem().unwrap()
    }

    #[test]
    fn create_reload_sign() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, created) = Ca::load_or_create(dir.path(), NOW).unwrap();
        assert!(created);
        let mode = fs::metadata(dir.path().join(CA_KEY))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (again, created) = Ca::load_or_create(dir.path(), NOW).unwrap();
        assert!(!created);
        assert_eq!(again.fingerprint(), ca.fingerprint());
        assert_eq!(ca.fingerprint().len(), 64);

        let name = NodeName::new("web-1").unwrap();
        let issued = again.sign_client(&csr(), &name, NOW).unwrap();
        use rustls_pki_types::pem::PemObject as _;
        let der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
        let (cn, serial) = client_identity(&der).unwrap();
        assert_eq!((cn, serial), (name, issued.serial_hex.clone()));
        use x509_parser::prelude::FromDer as _;
        let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&der).unwrap();
        assert!(!cert.is_ca());
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        let (_, ca_cert) =
            x509_parser::certificate::X509Certificate::from_der(ca.cert_der()).unwrap();
        assert!(cert.verify_signature(Some(ca_cert.public_key())).is_ok());

        assert!(matches!(
            ca.sign_client("not a csr", &NodeName::new("x").unwrap(), NOW),
            Err(CaError::Csr(_))
        ));
        let (chain, _) = ca
            .server_identity(&["127.0.0.1".into(), "coord.example".into()], NOW)
            .unwrap();
        assert_eq!(chain.len(), 2);
        assert_eq!(sha256_hex(&chain[1]), ca.fingerprint());
    }

    #[test]
    fn world_readable_key_refused() {
        let dir = tempfile::tempdir().unwrap();
        Ca::load_or_create(dir.path(), NOW).unwrap();
        fs::set_permissions(dir.path().join(CA_KEY), fs::Permissions::from_mode(0o644)).unwrap();
        let err = Ca::load_or_create(dir.path(), NOW).unwrap_err();
        assert!(matches!(err, CaError::KeyMode(_)), "{err}");
    }
}
