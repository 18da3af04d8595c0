//! The server's certificate: given (`--tls-cert`/`--tls-key`, a real one for the server's name,
//! say), or self-signed at first start and kept in the state directory so that it stays the same
//! across restarts (a certificate that changes at every start would stand out).
//!
//! Clients accept any certificate (the gaptun handshake inside authenticates the server), so the
//! self-signed one only needs to look ordinary: an ECDSA P-256 key, the server name as its only
//! subject, ten years of validity from the day it was made, a random serial. Nothing in it names
//! gaptun or the library that made it.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SerialNumber};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::CarrierError;

/// File names of a self-signed certificate and its key in the state directory.
const CERT_FILE: &str = "tls-cert.pem";
const KEY_FILE: &str = "tls-key.pem";

/// Validity of a self-signed certificate, as `openssl req -days 3650` gives.
const VALID_DAYS: i64 = 3650;

/// Where the server's certificate comes from.
#[derive(Debug, Clone)]
pub enum CertSource {
    /// PEM files given by the user.
    Files {
        /// Certificate chain.
        cert: PathBuf,
        /// Private key.
        key: PathBuf,
    },
    /// Self-signed, made for `name` at first start and kept in `dir`.
    SelfSigned {
        /// The state directory.
        dir: PathBuf,
        /// The name it is made for.
        name: String,
    },
}

/// A certificate chain and its key.
#[derive(Debug)]
pub struct CertKey {
    /// The chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The key.
    pub key: PrivateKeyDer<'static>,
}

impl Clone for CertKey {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

/// Loads the certificate, making and storing a self-signed one first when there is none yet.
pub fn load_or_generate(source: &CertSource) -> Result<CertKey, CarrierError> {
    match source {
        CertSource::Files { cert, key } => load(cert, key),
        CertSource::SelfSigned { dir, name } => {
            let cert = dir.join(CERT_FILE);
            let key = dir.join(KEY_FILE);
            if !cert.exists() || !key.exists() {
                generate(dir, &cert, &key, name)?;
                tracing::info!(path = %cert.display(), "made a self-signed TLS certificate");
            }
            load(&cert, &key)
        }
    }
}

fn file_error(path: &Path, reason: impl ToString) -> CarrierError {
    CarrierError::CertFile {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn load(cert: &Path, key: &Path) -> Result<CertKey, CarrierError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_error(cert, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(cert, e))?;
    if chain.is_empty() {
        return Err(file_error(cert, "no certificate in it"));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| file_error(key, e))?;
    Ok(CertKey {
        chain,
        key: key_der,
    })
}

fn generate(dir: &Path, cert_path: &Path, key_path: &Path, name: &str) -> Result<(), CarrierError> {
    let tls = |e: rcgen::Error| CarrierError::Tls(e.to_string());
    let key = KeyPair::generate().map_err(tls)?;
    let mut params = CertificateParams::new(vec![name.to_string()]).map_err(tls)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(VALID_DAYS);
    let mut serial: [u8; 16] = rand::random();
    serial[0] &= 0x7f; // a positive integer, as DER wants
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    let cert = params.self_signed(&key).map_err(tls)?;
    fs::create_dir_all(dir).map_err(|e| file_error(dir, e))?;
    write_private(key_path, key.serialize_pem().as_bytes())?;
    fs::write(cert_path, cert.pem()).map_err(|e| file_error(cert_path, e))?;
    Ok(())
}

/// Writes a file only its owner may read (the key).
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), CarrierError> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(path).map_err(|e| file_error(path, e))?;
    f.write_all(bytes).map_err(|e| file_error(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_is_made_once_and_kept() {
        let dir = std::env::temp_dir().join(format!("gaptun-cert-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let source = CertSource::SelfSigned {
            dir: dir.clone(),
            name: "localhost".into(),
        };
        let first = load_or_generate(&source).expect("made");
        let again = load_or_generate(&source).expect("loaded");
        assert_eq!(first.chain, again.chain, "kept across starts");
        let pem = fs::read_to_string(dir.join(CERT_FILE)).expect("cert file");
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.join(KEY_FILE))
                .expect("key")
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "key readable by its owner only");
        }
        let bad = CertSource::Files {
            cert: dir.join("missing.pem"),
            key: dir.join(KEY_FILE),
        };
        assert!(matches!(
            load_or_generate(&bad),
            Err(CarrierError::CertFile { .. })
        ));
        let _ = fs::remove_dir_all(&dir);
    }
}
