//! Where the arbiter is: the embedded server over TCP, or an etcd cluster,
//! chosen by the address the operator gives (`--arbiter`).

use crate::client::{Arbiter, ArbiterClient, ArbiterError, DEFAULT_ARBITER_NAME};
use crate::etcd::EtcdArbiter;
use crate::state::{ArbiterState, ClaimOutcome, Claimant, RenewOutcome};
use fttls::Security;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

const ETCD_SCHEME: &str = "etcd://";

/// An arbiter's address as an operator writes it.
///
/// - `HOST:PORT`: the embedded arbiter (`arbiter --listen`).
/// - `etcd://HOST:PORT[,HOST:PORT…]/PREFIX`: an etcd cluster; the record
///   lives under the key prefix `/PREFIX/`, so one etcd serves many pairs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArbiterAddress {
    Embedded(String),
    Etcd(EtcdTarget),
}

/// An etcd cluster's members and the key prefix of one pair's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTarget {
    /// `HOST:PORT` of each member, in the order given.
    pub members: Vec<String>,
    /// Starts with `/`, never ends with one.
    pub prefix: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AddressError {
    #[error("{0:?} is not HOST:PORT (with a port from 1 to 65535)")]
    NotHostPort(String),
    #[error("{0:?} names no etcd member: etcd://HOST:PORT[,HOST:PORT…]/PREFIX")]
    NoMembers(String),
    #[error("{0:?} has no key prefix after the members: etcd://HOST:PORT/PREFIX")]
    NoPrefix(String),
    #[error("the key prefix {0:?} has an empty part or a character outside [A-Za-z0-9._/-]")]
    BadPrefix(String),
}

fn host_port(text: &str) -> Result<String, AddressError> {
    let bad = || AddressError::NotHostPort(text.to_string());
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 || host.contains(['/', ',', ' ']) {
        return Err(bad());
    }
    Ok(text.to_string())
}

impl FromStr for ArbiterAddress {
    type Err = AddressError;

    fn from_str(text: &str) -> Result<Self, AddressError> {
        let Some(rest) = text.strip_prefix(ETCD_SCHEME) else {
            return host_port(text).map(ArbiterAddress::Embedded);
        };
        let (members, prefix) = rest
            .split_once('/')
            .ok_or_else(|| AddressError::NoPrefix(text.to_string()))?;
        if members.is_empty() {
            return Err(AddressError::NoMembers(text.to_string()));
        }
        let members = members
            .split(',')
            .map(host_port)
            .collect::<Result<Vec<_>, _>>()?;
        if prefix.is_empty() {
            return Err(AddressError::NoPrefix(text.to_string()));
        }
        let well_formed = prefix.split('/').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        });
        if !well_formed {
            return Err(AddressError::BadPrefix(prefix.to_string()));
        }
        Ok(ArbiterAddress::Etcd(EtcdTarget {
            members,
            prefix: format!("/{prefix}"),
        }))
    }
}

impl fmt::Display for ArbiterAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArbiterAddress::Embedded(addr) => f.write_str(addr),
            ArbiterAddress::Etcd(target) => write!(
                f,
                "{ETCD_SCHEME}{}{}",
                target.members.join(","),
                target.prefix
            ),
        }
    }
}

/// How an operator's tool (`arbiter query|claim|release`, `ftctl`) reaches
/// the arbiter: with certificates of its own, or in plain TCP.
#[derive(clap::Args, Clone, Debug)]
pub struct ClientTlsArgs {
    /// Mutual TLS: a directory `ftctl certs` made, for `--name`.
    #[arg(long)]
    pub tls_dir: Option<PathBuf>,
    /// The name this client's certificate carries. A claim must be made
    /// with the claiming node's own certificate.
    #[arg(long, default_value = "operator")]
    pub name: String,
    /// The name the arbiter's certificate must carry.
    #[arg(long, default_value = DEFAULT_ARBITER_NAME)]
    pub arbiter_name: String,
    /// Plain TCP, to an arbiter started with `--insecure`.
    #[arg(long)]
    pub insecure: bool,
}

impl ClientTlsArgs {
    /// Loads the certificates, if any were given.
    pub fn security(&self) -> Result<Security, fttls::TlsError> {
        let identity = fttls::choose(self.tls_dir.as_deref(), self.insecure, &self.name)?;
        Ok(Security::new(identity, &self.arbiter_name))
    }
}

/// A connection to whichever arbiter the address names.
pub enum AnyArbiter {
    Embedded(ArbiterClient),
    /// Boxed: an etcd client is large (its gRPC stubs), and this is made
    /// once per node thread.
    Etcd(Box<EtcdArbiter>),
}

impl AnyArbiter {
    /// Connects; `call_timeout` bounds this and every later call.
    /// `security` is for the embedded arbiter: an etcd cluster's own
    /// security is etcd's (this client speaks plain gRPC to it).
    pub async fn connect(
        address: &ArbiterAddress,
        security: &Security,
        call_timeout: Duration,
    ) -> Result<AnyArbiter, ArbiterError> {
        Ok(match address {
            ArbiterAddress::Embedded(addr) => AnyArbiter::Embedded(
                ArbiterClient::connect_with(addr.as_str(), call_timeout, security.clone()).await?,
            ),
            ArbiterAddress::Etcd(target) => {
                AnyArbiter::Etcd(Box::new(EtcdArbiter::new(target, call_timeout)))
            }
        })
    }
}

impl Arbiter for AnyArbiter {
    async fn claim(
        &mut self,
        who: &Claimant<'_>,
        expected_generation: u64,
    ) -> Result<ClaimOutcome, ArbiterError> {
        match self {
            AnyArbiter::Embedded(a) => a.claim(who, expected_generation).await,
            AnyArbiter::Etcd(a) => a.claim(who, expected_generation).await,
        }
    }

    async fn renew(
        &mut self,
        who: &Claimant<'_>,
        generation: u64,
        lease: Duration,
    ) -> Result<RenewOutcome, ArbiterError> {
        match self {
            AnyArbiter::Embedded(a) => a.renew(who, generation, lease).await,
            AnyArbiter::Etcd(a) => a.renew(who, generation, lease).await,
        }
    }

    async fn release(&mut self, generation: u64) -> Result<ArbiterState, ArbiterError> {
        match self {
            AnyArbiter::Embedded(a) => a.release(generation).await,
            AnyArbiter::Etcd(a) => a.release(generation).await,
        }
    }

    async fn query(&mut self) -> Result<ArbiterState, ArbiterError> {
        match self {
            AnyArbiter::Embedded(a) => a.query().await,
            AnyArbiter::Etcd(a) => a.query().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_and_print_back() {
        for text in [
            "198.18.0.20:7700",
            "arbiter.example:7700",
            "etcd://198.18.0.21:2379/ftvm",
            "etcd://e1:2379,e2:2379,e3:2379/ftvm/pair-1",
        ] {
            let address: ArbiterAddress = text.parse().unwrap();
            assert_eq!(address.to_string(), text);
        }
        assert_eq!(
            "etcd://e1:2379,e2:2380/a/b".parse(),
            Ok(ArbiterAddress::Etcd(EtcdTarget {
                members: vec!["e1:2379".into(), "e2:2380".into()],
                prefix: "/a/b".into(),
            }))
        );
    }

    #[test]
    fn bad_addresses_say_what_is_wrong() {
        let error = |text: &str| text.parse::<ArbiterAddress>().unwrap_err();
        assert_eq!(
            error("198.18.0.20"),
            AddressError::NotHostPort("198.18.0.20".into())
        );
        assert_eq!(error("h:0"), AddressError::NotHostPort("h:0".into()));
        assert_eq!(
            error("h:99999"),
            AddressError::NotHostPort("h:99999".into())
        );
        assert!(matches!(error("etcd://e1:2379"), AddressError::NoPrefix(_)));
        assert!(matches!(
            error("etcd://e1:2379/"),
            AddressError::NoPrefix(_)
        ));
        assert!(matches!(error("etcd:///ftvm"), AddressError::NoMembers(_)));
        assert_eq!(
            error("etcd://e1:2379,/ftvm"),
            AddressError::NotHostPort(String::new())
        );
        assert_eq!(
            error("etcd://e1/ftvm"),
            AddressError::NotHostPort("e1".into())
        );
        for prefix in ["a//b", "a/", "a b", "a\u{e9}"] {
            assert_eq!(
                error(&format!("etcd://e1:2379/{prefix}")),
                AddressError::BadPrefix(prefix.into())
            );
        }
    }
}
