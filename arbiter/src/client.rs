//! The agents' side: the `Arbiter` backend trait and its TCP client.

use crate::protocol::{
    read_frame, validate_node, write_frame, ErrorCode, ProtocolError, Request, Response,
};
use crate::state::{ArbiterState, ClaimOutcome, Claimant, RenewOutcome};
use fttls::Security;
use std::future::Future;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{lookup_host, TcpStream, ToSocketAddrs};
use tokio::time::timeout;
use tracing::debug;

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// A place that decides which node may serve. Implemented by
/// [`ArbiterClient`] (the embedded arbiter, over TCP) and
/// [`crate::EtcdArbiter`], with the same semantics: `claim` is a test-and-set from
/// `expected_generation` to `expected_generation + 1` (held off with
/// `Busy` while another incarnation's lease runs), a repeated winning claim
/// of the same incarnation is granted again, `renew` extends the owner's
/// lease or says who owns the record now, and `release` clears the owner.
pub trait Arbiter {
    fn claim(
        &mut self,
        who: &Claimant<'_>,
        expected_generation: u64,
    ) -> impl Future<Output = Result<ClaimOutcome, ArbiterError>> + Send;

    fn renew(
        &mut self,
        who: &Claimant<'_>,
        generation: u64,
        lease: Duration,
    ) -> impl Future<Output = Result<RenewOutcome, ArbiterError>> + Send;

    fn release(
        &mut self,
        generation: u64,
    ) -> impl Future<Output = Result<ArbiterState, ArbiterError>> + Send;

    fn query(&mut self) -> impl Future<Output = Result<ArbiterState, ArbiterError>> + Send;
}

#[derive(Debug, thiserror::Error)]
pub enum ArbiterError {
    #[error("cannot resolve arbiter address: {0}")]
    Resolve(std::io::Error),
    #[error("cannot connect to the arbiter at {addrs:?}: {source}")]
    Connect {
        addrs: Vec<SocketAddr>,
        source: std::io::Error,
    },
    #[error("the arbiter did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the arbiter refused the request ({code}): {message}")]
    Refused { code: ErrorCode, message: String },
    #[error("unexpected answer from the arbiter: {0:?}")]
    UnexpectedResponse(Response),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("the etcd key {key} does not hold an arbiter record: {reason}")]
    BadRecord { key: String, reason: String },
    /// The TLS handshake failed: the arbiter's certificate (or ours, as
    /// it judged it) is not the cluster's, or names another.
    #[error("not authenticated with the arbiter: {0}")]
    Unauthenticated(String),
}

impl ArbiterError {
    /// Whether asking again may get another answer: an unreachable, slow
    /// or busy arbiter may answer later; a refused request, an answer that
    /// is not the protocol or a record that is not ours will be the same
    /// next time.
    pub fn may_pass_if_retried(&self) -> bool {
        match self {
            ArbiterError::Refused { code, .. } => {
                matches!(code, ErrorCode::Busy | ErrorCode::StoreFailed)
            }
            ArbiterError::UnexpectedResponse(_) | ArbiterError::BadRecord { .. } => false,
            // A refused certificate is refused next time too.
            ArbiterError::Unauthenticated(_) => false,
            ArbiterError::Protocol(e) => matches!(
                e,
                ProtocolError::Io(_) | ProtocolError::Truncated { .. } | ProtocolError::Timeout
            ),
            ArbiterError::Resolve(_) | ArbiterError::Connect { .. } | ArbiterError::Timeout(_) => {
                true
            }
            ArbiterError::Etcd(e) => match e {
                // Anything but a request etcd judged wrong: no leader, a
                // leader change, a member going away, a request timed out.
                etcd_client::Error::GRpcStatus(status) => !matches!(
                    status.code(),
                    tonic::Code::InvalidArgument
                        | tonic::Code::NotFound
                        | tonic::Code::AlreadyExists
                        | tonic::Code::PermissionDenied
                        | tonic::Code::FailedPrecondition
                        | tonic::Code::OutOfRange
                        | tonic::Code::Unimplemented
                        | tonic::Code::Unauthenticated
                ),
                etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
                _ => false,
            },
        }
    }

    /// The connection died under us: likely an idle connection the arbiter
    /// closed, or an arbiter restart. Worth one retry on a new connection.
    fn is_connection_lost(&self) -> bool {
        match self {
            ArbiterError::Protocol(ProtocolError::Truncated { .. }) => true,
            ArbiterError::Protocol(ProtocolError::Io(e)) => matches!(
                e.kind(),
                ErrorKind::ConnectionReset
                    | ErrorKind::ConnectionAborted
                    | ErrorKind::BrokenPipe
                    | ErrorKind::UnexpectedEof
            ),
            _ => false,
        }
    }
}

/// The name the arbiter's certificate carries unless configured.
pub const DEFAULT_ARBITER_NAME: &str = "arbiter";

/// A connection's byte stream: plain or inside TLS.
trait Conn: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Conn for T {}

/// A connection to an arbiter server, kept open between calls.
///
/// Each call is bounded by the client's timeout as a whole. If a kept
/// connection turns out to be dead, the call is sent once more on a new
/// connection; that is safe for `claim` because a repeated winning claim is
/// answered `Granted` again (and a repeat that lost is denied as before).
/// After a timeout the connection is dropped, since a late answer could
/// otherwise be taken for the next call's.
pub struct ArbiterClient {
    addrs: Vec<SocketAddr>,
    timeout: Duration,
    /// With TLS, the peer is the arbiter's certificate name.
    security: Security,
    conn: Option<Box<dyn Conn>>,
}

impl ArbiterClient {
    /// Plain TCP, with the default timeout (for tests and tools).
    pub async fn connect(addr: impl ToSocketAddrs) -> Result<ArbiterClient, ArbiterError> {
        ArbiterClient::connect_with(addr, DEFAULT_TIMEOUT, Security::Insecure).await
    }

    /// Resolves and connects; `call_timeout` bounds this and every later call.
    pub async fn connect_with(
        addr: impl ToSocketAddrs,
        call_timeout: Duration,
        security: Security,
    ) -> Result<ArbiterClient, ArbiterError> {
        timeout(call_timeout, async {
            let addrs = lookup_host(addr)
                .await
                .map_err(ArbiterError::Resolve)?
                .collect();
            let mut client = ArbiterClient {
                addrs,
                timeout: call_timeout,
                security,
                conn: None,
            };
            client.conn = Some(client.open().await?);
            Ok(client)
        })
        .await
        .map_err(|_| ArbiterError::Timeout(call_timeout))?
    }

    async fn call(&mut self, request: &Request) -> Result<Response, ArbiterError> {
        let call_timeout = self.timeout;
        timeout(call_timeout, self.call_with_retry(request))
            .await
            .map_err(|_| ArbiterError::Timeout(call_timeout))?
    }

    async fn call_with_retry(&mut self, request: &Request) -> Result<Response, ArbiterError> {
        let frame = request.encode();
        // Taken out so that a cancelled call leaves no half-used connection.
        if let Some(mut conn) = self.conn.take() {
            match self.exchange(&mut conn, &frame).await {
                Ok(response) => {
                    self.conn = Some(conn);
                    return Ok(response);
                }
                Err(e) if e.is_connection_lost() => {
                    debug!("arbiter connection lost ({e}); reconnecting")
                }
                Err(e) => return Err(e),
            }
        }
        let mut conn = self.open().await?;
        let response = self.exchange(&mut conn, &frame).await?;
        self.conn = Some(conn);
        Ok(response)
    }

    async fn open(&self) -> Result<Box<dyn Conn>, ArbiterError> {
        let conn = TcpStream::connect(&self.addrs[..])
            .await
            .map_err(|source| ArbiterError::Connect {
                addrs: self.addrs.clone(),
                source,
            })?;
        // Requests are single small writes; do not let Nagle delay a failover.
        let _ = conn.set_nodelay(true);
        match &self.security {
            Security::Insecure => Ok(Box::new(conn)),
            Security::Tls { identity, peer } => {
                let conn = identity.connect(conn, peer).await.map_err(|e| match e {
                    fttls::TlsError::Handshake(io) => ProtocolError::Io(io).into(),
                    refused => ArbiterError::Unauthenticated(refused.to_string()),
                })?;
                Ok(Box::new(conn))
            }
        }
    }

    /// One request and its answer. An error answer becomes `Err`, and the
    /// caller then drops the connection, which the server closes anyway.
    async fn exchange(
        &self,
        conn: &mut Box<dyn Conn>,
        frame: &[u8],
    ) -> Result<Response, ArbiterError> {
        let timed_out = |e| match e {
            ProtocolError::Idle | ProtocolError::Timeout => ArbiterError::Timeout(self.timeout),
            other => ArbiterError::Protocol(other),
        };
        write_frame(conn, frame, self.timeout)
            .await
            .map_err(timed_out)?;
        let reply = read_frame(conn, self.timeout, self.timeout)
            .await
            .map_err(timed_out)?
            .ok_or_else(|| ProtocolError::Io(ErrorKind::UnexpectedEof.into()))?;
        match Response::decode(&reply)? {
            Response::Error { code, message } => Err(ArbiterError::Refused { code, message }),
            response => Ok(response),
        }
    }
}

/// Callers use these through [`Arbiter`] (or [`crate::AnyArbiter`]).
impl Arbiter for ArbiterClient {
    /// Asks for generation `expected_generation + 1`.
    async fn claim(
        &mut self,
        who: &Claimant<'_>,
        expected_generation: u64,
    ) -> Result<ClaimOutcome, ArbiterError> {
        validate_node(who.node)?;
        let request = Request::Claim {
            node: who.node.to_owned(),
            incarnation: who.incarnation,
            expected_generation,
        };
        match self.call(&request).await? {
            Response::Granted { generation } => Ok(ClaimOutcome::Granted { generation }),
            Response::Denied { generation, owner } => {
                Ok(ClaimOutcome::Denied { generation, owner })
            }
            other => Err(ArbiterError::UnexpectedResponse(other)),
        }
    }

    /// Extends `who`'s lease on `generation` (the arbiter may shorten it).
    async fn renew(
        &mut self,
        who: &Claimant<'_>,
        generation: u64,
        lease: Duration,
    ) -> Result<RenewOutcome, ArbiterError> {
        validate_node(who.node)?;
        let request = Request::Renew {
            node: who.node.to_owned(),
            incarnation: who.incarnation,
            generation,
            lease_ms: u32::try_from(lease.as_millis()).unwrap_or(u32::MAX),
        };
        match self.call(&request).await? {
            Response::Leased {
                generation,
                lease_ms,
            } => Ok(RenewOutcome::Leased {
                generation,
                lease_ms,
            }),
            Response::Denied { generation, owner } => {
                Ok(RenewOutcome::Denied { generation, owner })
            }
            other => Err(ArbiterError::UnexpectedResponse(other)),
        }
    }

    /// Clears the owner of `generation`; answers the state after it.
    async fn release(&mut self, generation: u64) -> Result<ArbiterState, ArbiterError> {
        match self.call(&Request::Release { generation }).await? {
            Response::State(state) => Ok(state),
            other => Err(ArbiterError::UnexpectedResponse(other)),
        }
    }

    async fn query(&mut self) -> Result<ArbiterState, ArbiterError> {
        match self.call(&Request::Query).await? {
            Response::State(state) => Ok(state),
            other => Err(ArbiterError::UnexpectedResponse(other)),
        }
    }
}
