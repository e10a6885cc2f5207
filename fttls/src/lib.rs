//! The cluster's mutual TLS. Every process of a cluster (the two nodes,
//! the arbiter, an operator's tools) holds a certificate from the
//! cluster's own CA that names it, in a directory of its own:
//!
//! ```text
//! DIR/ca.pem     the cluster's CA certificate (the only one trusted)
//! DIR/cert.pem   this process's certificate; its DNS name is the node name
//! DIR/key.pem    its private key
//! ```
//!
//! `ftctl certs` makes them ([`make_cluster`]). Both ends of every
//! connection present a certificate and check the other's: it must chain
//! to the CA, and name the peer this end expects. A client checks the
//! name during the handshake; a server learns the name it expects from
//! the protocol (the log channel's configured peer, the node an arbiter
//! claim is made for) and checks it with [`PeerCertificate::check_name`].

mod admission;

pub use admission::{Admission, Admitted};

use rustls::client::verify_server_name;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};

pub const CA_FILE: &str = "ca.pem";
pub const CERT_FILE: &str = "cert.pem";
pub const KEY_FILE: &str = "key.pem";
/// The CA's private key, written beside the per-process directories by
/// [`make_cluster`]: keep it off the cluster's hosts.
pub const CA_KEY_FILE: &str = "ca.key";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{}: {reason}", path.display())]
    Bad { path: PathBuf, reason: String },
    #[error("{name:?} cannot be a certificate name: {reason}")]
    BadName { name: String, reason: String },
    #[error("the certificate in {} is not for {expected:?}: {reason}", dir.display())]
    NotOurs {
        dir: PathBuf,
        expected: String,
        reason: String,
    },
    /// The connection failed during the handshake (reset, closed): it
    /// may work next time.
    #[error("TLS handshake failed: {0}")]
    Handshake(io::Error),
    /// A certificate was refused, by this end or by the peer (an alert):
    /// it will be refused next time too.
    #[error("TLS handshake refused: {0}")]
    Refused(String),
    #[error("the peer's certificate is not for {expected:?}: {reason}")]
    WrongPeer { expected: String, reason: String },
    #[error("{} already exists: choose a new directory for a new CA", .0.display())]
    Exists(PathBuf),
    #[error("cannot make a certificate: {0}")]
    Make(#[from] rcgen::Error),
    #[error("cannot write {}", path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error(
        "no security chosen: give tls_dir (the directory `ftctl certs` made for {0:?}) or, \
         to let anyone on the network speak to this process, insecure = true"
    )]
    Unchosen(String),
    #[error("both tls_dir and insecure are given: choose one")]
    BothChosen,
}

/// What an operator chose for process `name`: its certificates from
/// `tls_dir`, or plain TCP with `insecure`, and nothing by default.
pub fn choose(
    tls_dir: Option<&Path>,
    insecure: bool,
    name: &str,
) -> Result<Option<Arc<Identity>>, TlsError> {
    match (tls_dir, insecure) {
        (Some(dir), false) => Identity::load(dir, name).map(Some),
        (None, true) => Ok(None),
        (Some(_), true) => Err(TlsError::BothChosen),
        (None, false) => Err(TlsError::Unchosen(name.to_string())),
    }
}

/// How one end secures its connections with one peer.
#[derive(Clone, Debug, Default)]
pub enum Security {
    /// Plain TCP: any host that reaches the port may speak. Only when the
    /// operator says so (`insecure = true`).
    #[default]
    Insecure,
    /// Mutual TLS: the peer's certificate must chain to the cluster's CA
    /// and name `peer`.
    Tls {
        identity: Arc<Identity>,
        peer: String,
    },
}

impl Security {
    /// TLS with `peer` if this process has certificates (see [`choose`]),
    /// plain TCP otherwise.
    pub fn new(identity: Option<Arc<Identity>>, peer: &str) -> Security {
        match identity {
            Some(identity) => Security::Tls {
                identity,
                peer: peer.to_string(),
            },
            None => Security::Insecure,
        }
    }
}

fn server_name(name: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(name.to_string()).map_err(|e| TlsError::BadName {
        name: name.to_string(),
        reason: e.to_string(),
    })
}

/// Whether `cert` names `name` (its DNS subject alternative name).
fn names(cert: &CertificateDer<'_>, name: &str) -> Result<(), String> {
    let parsed = ParsedCertificate::try_from(cert).map_err(|e| e.to_string())?;
    let name = server_name(name).map_err(|e| e.to_string())?;
    verify_server_name(&parsed, &name).map_err(|e| e.to_string())
}

/// This process's place in the cluster: the CA it trusts and the
/// certificate it presents, both ways.
pub struct Identity {
    name: String,
    connector: TlsConnector,
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("name", &self.name)
            .finish()
    }
}

impl Identity {
    /// Loads `dir` (see the module's layout); its certificate must name
    /// `name`, the name this process goes by in the cluster.
    pub fn load(dir: &Path, name: &str) -> Result<Arc<Identity>, TlsError> {
        let read = |file: &str| {
            let path = dir.join(file);
            std::fs::read(&path)
                .map(|bytes| (path.clone(), bytes))
                .map_err(|source| TlsError::Read { path, source })
        };
        let bad = |path: &Path, reason: String| TlsError::Bad {
            path: path.to_owned(),
            reason,
        };
        let certs = |path: &Path, bytes: &[u8]| {
            let certs = CertificateDer::pem_slice_iter(bytes)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(path, e.to_string()))?;
            if certs.is_empty() {
                return Err(bad(path, "no certificate in it".into()));
            }
            Ok(certs)
        };
        let (ca_path, ca_pem) = read(CA_FILE)?;
        let mut roots = RootCertStore::empty();
        for ca in certs(&ca_path, &ca_pem)? {
            roots.add(ca).map_err(|e| bad(&ca_path, e.to_string()))?;
        }
        let roots = Arc::new(roots);
        let (cert_path, cert_pem) = read(CERT_FILE)?;
        let chain = certs(&cert_path, &cert_pem)?;
        names(&chain[0], name).map_err(|reason| TlsError::NotOurs {
            dir: dir.to_owned(),
            expected: name.to_string(),
            reason,
        })?;
        let (key_path, key_pem) = read(KEY_FILE)?;
        let key =
            PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| bad(&key_path, e.to_string()))?;

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| bad(&ca_path, e.to_string()))?;
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .and_then(|b| {
                b.with_client_cert_verifier(verifier)
                    .with_single_cert(chain.clone(), key.clone_key())
            })
            .map_err(|e| bad(&key_path, e.to_string()))?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|b| {
                b.with_root_certificates(roots)
                    .with_client_auth_cert(chain, key)
            })
            .map_err(|e| bad(&key_path, e.to_string()))?;
        Ok(Arc::new(Identity {
            name: name.to_string(),
            connector: TlsConnector::from(Arc::new(client)),
            acceptor: TlsAcceptor::from(Arc::new(server)),
        }))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The client's side: `peer` must present a certificate from the CA
    /// that names `peer`, and gets ours.
    pub async fn connect(
        &self,
        stream: TcpStream,
        peer: &str,
    ) -> Result<client::TlsStream<TcpStream>, TlsError> {
        let name = server_name(peer)?;
        self.connector
            .connect(name, stream)
            .await
            .map_err(handshake_failed)
    }

    /// The server's side: the client must present a certificate from the
    /// CA; which name it must carry is for the caller to check.
    pub async fn accept(
        &self,
        stream: TcpStream,
    ) -> Result<(server::TlsStream<TcpStream>, PeerCertificate), TlsError> {
        let stream = self
            .acceptor
            .accept(stream)
            .await
            .map_err(handshake_failed)?;
        let cert = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|cert| cert.clone().into_owned())
            .ok_or_else(|| TlsError::Refused("the client presented no certificate".into()))?;
        Ok((stream, PeerCertificate(cert)))
    }
}

/// rustls reports what TLS itself refused as `InvalidData`; anything else
/// is the connection failing under the handshake.
fn handshake_failed(error: io::Error) -> TlsError {
    if error.kind() == io::ErrorKind::InvalidData {
        TlsError::Refused(error.to_string())
    } else {
        TlsError::Handshake(error)
    }
}

/// The certificate a client presented, checked to chain to the CA.
#[derive(Clone, Debug)]
pub struct PeerCertificate(CertificateDer<'static>);

impl PeerCertificate {
    /// Whether it names `expected`.
    pub fn check_name(&self, expected: &str) -> Result<(), TlsError> {
        names(&self.0, expected).map_err(|reason| TlsError::WrongPeer {
            expected: expected.to_string(),
            reason,
        })
    }
}

/// Makes a new CA in `out` (which must not exist yet) and, for each name,
/// a directory `out/NAME/` holding the CA's certificate and a certificate
/// and key naming NAME, usable both as client and as server. The CA's key
/// is left in `out/ca.key`.
pub fn make_cluster(out: &Path, names: &[&str]) -> Result<(), TlsError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    if out.exists() {
        return Err(TlsError::Exists(out.to_owned()));
    }
    for name in names {
        server_name(name)?;
    }
    let ca_key = KeyPair::generate()?;
    // A name of its own: another cluster's CA is then an unknown issuer,
    // not a namesake whose signature fails.
    let id: String = ca_key.public_key_raw()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut ca = CertificateParams::new(Vec::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, format!("ftvm cluster CA {id}"));
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key)?;
    let write = |path: PathBuf, text: &str, secret: bool| {
        use std::os::unix::fs::OpenOptionsExt;
        let mut options = std::fs::OpenOptions::new();
        options
            .write(true)
            .create_new(true)
            .mode(if secret { 0o600 } else { 0o644 });
        std::io::Write::write_all(
            &mut options.open(&path).map_err(|source| TlsError::Write {
                path: path.clone(),
                source,
            })?,
            text.as_bytes(),
        )
        .map_err(|source| TlsError::Write { path, source })
    };
    let mkdir = |dir: &Path| {
        std::fs::create_dir_all(dir).map_err(|source| TlsError::Write {
            path: dir.to_owned(),
            source,
        })
    };
    mkdir(out)?;
    write(out.join(CA_FILE), &ca_cert.pem(), false)?;
    write(out.join(CA_KEY_FILE), &ca_key.serialize_pem(), true)?;
    let issuer = Issuer::new(ca, ca_key);
    for name in names {
        let mut params = CertificateParams::new(vec![name.to_string()])?;
        params.distinguished_name.push(DnType::CommonName, *name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        let dir = out.join(name);
        mkdir(&dir)?;
        write(dir.join(CA_FILE), &ca_cert.pem(), false)?;
        write(dir.join(CERT_FILE), &cert.pem(), false)?;
        write(dir.join(KEY_FILE), &key.serialize_pem(), true)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("fttls-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    /// Client `client` connects to server `server` expecting the name
    /// `expected`; returns the client's and the server's results (the
    /// server also checks the client against `client_expected`).
    async fn exchange(
        client: &Identity,
        expected: &str,
        server: &Identity,
        client_expected: &str,
    ) -> (Result<(), TlsError>, Result<(), TlsError>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let serve = async {
            let (stream, _) = listener.accept().await.unwrap();
            let (mut stream, cert) = server.accept(stream).await?;
            cert.check_name(client_expected)?;
            stream.write_all(b"ok").await.unwrap();
            stream.flush().await.unwrap();
            Ok(())
        };
        let talk = async {
            let stream = TcpStream::connect(addr).await.unwrap();
            let mut stream = client.connect(stream, expected).await?;
            let mut answer = [0u8; 2];
            stream
                .read_exact(&mut answer)
                .await
                .map_err(TlsError::Handshake)?;
            Ok(())
        };
        tokio::join!(talk, serve)
    }

    #[tokio::test]
    async fn members_of_one_cluster_talk_and_anyone_else_is_refused_saying_why() {
        let one = scratch("one");
        let other = scratch("other");
        make_cluster(&one, &["a", "b", "c"]).unwrap();
        make_cluster(&other, &["b"]).unwrap();
        let a = Identity::load(&one.join("a"), "a").unwrap();
        let b = Identity::load(&one.join("b"), "b").unwrap();
        let c = Identity::load(&one.join("c"), "c").unwrap();
        let stranger = Identity::load(&other.join("b"), "b").unwrap();

        let (client, server) = exchange(&a, "b", &b, "a").await;
        assert!(client.is_ok() && server.is_ok(), "{client:?} {server:?}");

        // The server is c, not the b the client expects.
        let (client, _) = exchange(&a, "b", &c, "a").await;
        let error = client.unwrap_err().to_string();
        assert!(error.contains("not valid for name \"b\""), "{error}");
        // The client is c, not the a the server expects.
        let (_, server) = exchange(&c, "b", &b, "a").await;
        let error = server.unwrap_err().to_string();
        assert!(error.contains("not for \"a\""), "{error}");
        // Another CA's b, as a server and as a client.
        let (client, _) = exchange(&a, "b", &stranger, "a").await;
        let error = client.unwrap_err().to_string();
        assert!(error.contains("UnknownIssuer"), "{error}");
        // A client knows the CA it talks to (it is no secret), so it can
        // trust our server: the server still refuses its certificate.
        let impostor_dir = scratch("impostor");
        std::fs::create_dir_all(&impostor_dir).unwrap();
        std::fs::copy(one.join(CA_FILE), impostor_dir.join(CA_FILE)).unwrap();
        for file in [CERT_FILE, KEY_FILE] {
            std::fs::copy(other.join("b").join(file), impostor_dir.join(file)).unwrap();
        }
        let impostor = Identity::load(&impostor_dir, "b").unwrap();
        let (_, server) = exchange(&impostor, "b", &b, "b").await;
        let error = server.unwrap_err().to_string();
        assert!(error.contains("UnknownIssuer"), "{error}");

        // A directory is only loaded under the name it was made for.
        let error = Identity::load(&one.join("a"), "b").unwrap_err();
        assert!(matches!(error, TlsError::NotOurs { .. }), "{error}");
        assert!(matches!(
            make_cluster(&one, &["d"]),
            Err(TlsError::Exists(_))
        ));
        assert!(matches!(
            make_cluster(&scratch("bad"), &["a b"]),
            Err(TlsError::BadName { .. })
        ));
        for dir in [one, other, impostor_dir] {
            std::fs::remove_dir_all(dir).unwrap();
        }
    }
}
