//! A throwaway certificate authority for tests and benchmarks that run the
//! agent stream over mTLS, as it is deployed: a server certificate for
//! `localhost` and one client certificate per node (its name as the SAN).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use setpoint_agent::client::AgentTls;

/// A CA that issues server and node certificates.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("key");
        Ca {
            issuer: CertifiedIssuer::self_signed(params, key).expect("CA"),
        }
    }

    /// A leaf for `names` (SAN DNS names, or IP addresses), for `usage`;
    /// returns (certificate PEM, key PEM, certificate DER).
    pub fn issue(
        &self,
        names: &[&str],
        usage: ExtendedKeyUsagePurpose,
    ) -> (String, String, Vec<u8>) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("params");
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }

    pub fn write(&self, dir: &Path) -> PathBuf {
        let path = dir.join("ca.pem");
        std::fs::write(&path, self.issuer.pem()).expect("write CA");
        path
    }
}

/// Writes a certificate and key as `<name>.crt` / `<name>.key`.
pub fn write_pair(dir: &Path, name: &str, cert: &str, key: &str) -> (PathBuf, PathBuf) {
    let (c, k) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    // Write to a temporary name and rename, as kubelet swaps a Secret.
    for (path, text) in [(&c, cert), (&k, key)] {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, path).expect("rename");
    }
    (c, k)
}

/// A CA and the directory its files are written to.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: Ca,
    pub ca_file: PathBuf,
}

impl Default for Pki {
    fn default() -> Self {
        Pki::new()
    }
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::new("setpoint test CA");
        let ca_file = ca.write(dir.path());
        Pki { dir, ca, ca_file }
    }

    /// The control plane's certificate and key files (for `localhost`).
    pub fn server_files(&self) -> (PathBuf, PathBuf) {
        let (cert, key, _) = self
            .ca
            .issue(&["localhost"], ExtendedKeyUsagePurpose::ServerAuth);
        write_pair(self.dir.path(), "server", &cert, &key)
    }

    /// Files of a certificate naming `node`, under `file`.
    pub fn node(&self, file: &str, node: &str) -> AgentTls {
        let (cert, key, _) = self.ca.issue(&[node], ExtendedKeyUsagePurpose::ClientAuth);
        let (cert, key) = write_pair(self.dir.path(), file, &cert, &key);
        AgentTls {
            cert,
            key,
            ca: self.ca_file.clone(),
            server_name: None,
        }
    }
}
