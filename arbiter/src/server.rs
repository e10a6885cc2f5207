//! The TCP server: one task per connection, every request answered by the
//! ledger, every bad or slow peer cut off without disturbing the others.

use crate::ledger::{ClaimEffect, Ledger, LedgerError};
use crate::protocol::{read_frame, write_frame, ErrorCode, Request, Response};
use crate::state::{ArbiterState, ClaimOutcome, Claimant, RenewOutcome};
use crate::store::StoreError;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tokio::time::{timeout, timeout_at, Instant};
use tracing::{debug, error, info, warn};

/// How long to wait before accepting again after `accept` failed (e.g. out
/// of file descriptors), so that the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// After an error answer, input still arriving is discarded for at most this
/// long / this much, so that closing sends FIN rather than a reset that
/// could destroy the answer before the peer reads it.
const LINGER_TIME: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 64 * 1024;

/// The longest lease granted to a node serving alone, unless configured.
pub const DEFAULT_MAX_LEASE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub state_path: PathBuf,
    /// Create the state file at generation 0 if it does not exist.
    pub create_if_missing: bool,
    /// How long a connection may wait between requests.
    pub idle_timeout: Duration,
    /// How long a started request may take to arrive, and an answer to leave.
    pub io_timeout: Duration,
    /// Total lifetime of one connection; clients reconnect after it.
    pub max_connection_time: Duration,
    /// Connections beyond this are answered `Busy` and closed.
    pub max_connections: usize,
    /// Connections from one address beyond this are closed at once, so
    /// that one host's flood leaves room for the nodes.
    pub max_connections_per_address: usize,
    /// Mutual TLS with the cluster's certificates, or plain TCP (`None`,
    /// only when the operator asks for it).
    pub tls: Option<Arc<fttls::Identity>>,
    /// How long a client may take to finish the TLS handshake.
    pub handshake_timeout: Duration,
    /// The longest lease granted; also how long a restarted arbiter holds
    /// off claims against the recorded owner, whose lease it forgot.
    pub max_lease: Duration,
}

impl ServerConfig {
    pub fn new(state_path: impl Into<PathBuf>) -> ServerConfig {
        ServerConfig {
            state_path: state_path.into(),
            create_if_missing: false,
            idle_timeout: Duration::from_secs(30),
            io_timeout: Duration::from_secs(5),
            max_connection_time: Duration::from_secs(600),
            max_connections: 128,
            max_connections_per_address: 16,
            tls: None,
            handshake_timeout: Duration::from_secs(2),
            max_lease: DEFAULT_MAX_LEASE,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stopped because the state file could not be written; restart to reload it")]
    StoreFailed,
}

struct Shared {
    /// A std mutex, held only inside blocking tasks: see `Shared::answer`.
    ledger: Mutex<Ledger>,
    config: ServerConfig,
    /// Signalled when the ledger can no longer be trusted.
    fatal: Notify,
    /// Open connections, in all and per client address.
    admission: Arc<fttls::Admission>,
}

/// Cloned handles share one ledger (a status thread reads its state).
#[derive(Clone)]
pub struct Server {
    shared: Arc<Shared>,
}

/// Serves on `listener` with default limits until the state file fails;
/// the file must exist (see [`ServerConfig::create_if_missing`]).
pub async fn serve(listener: TcpListener, state_path: impl AsRef<Path>) -> Result<(), ServeError> {
    Server::open(ServerConfig::new(state_path.as_ref()))?
        .run(listener, std::future::pending())
        .await
}

impl Server {
    /// Locks and loads the state file (blocking, once at startup), so that a
    /// corrupt file fails before anything listens.
    pub fn open(config: ServerConfig) -> Result<Server, StoreError> {
        let ledger = Ledger::open(
            &config.state_path,
            config.create_if_missing,
            config.max_lease,
        )?;
        Ok(Server {
            shared: Arc::new(Shared {
                ledger: Mutex::new(ledger),
                admission: fttls::Admission::new(
                    config.max_connections,
                    config.max_connections_per_address,
                ),
                config,
                fatal: Notify::new(),
            }),
        })
    }

    /// The state as loaded (or as last granted).
    pub fn state(&self) -> ArbiterState {
        match self.shared.ledger.lock() {
            Ok(ledger) => ledger.state().clone(),
            Err(poisoned) => poisoned.into_inner().state().clone(),
        }
    }

    /// Accepts connections until `shutdown` completes (then returns `Ok`) or
    /// the state file cannot be written (then returns `StoreFailed`).
    /// Requests being answered are finished; idle connections are closed.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServeError> {
        let (stop_tx, stop_rx) = watch::channel(());
        let mut connections = JoinSet::new();
        tokio::pin!(shutdown);
        // The accept loop is the arbiter's work: its turns feed the
        // service manager's watchdog.
        let mut beat = tokio::time::interval(Duration::from_millis(100));
        let result = loop {
            tokio::select! {
                () = &mut shutdown => break Ok(()),
                _ = beat.tick() => service::beat(),
                () = self.shared.fatal.notified() => break Err(ServeError::StoreFailed),
                Some(joined) = connections.join_next() => {
                    if let Err(e) = joined {
                        error!("connection task failed: {e}");
                    }
                }
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => self.admit(&mut connections, stream, peer, &stop_rx),
                    Err(e) => {
                        warn!("accept failed: {e}");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                },
            }
        };
        drop(listener);
        // Wakes the connections that wait for a request; the others finish
        // their answer, which io_timeout bounds.
        let _ = stop_tx.send(());
        let grace = self.shared.config.io_timeout + LINGER_TIME;
        let drained = timeout(grace, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            warn!(
                count = connections.len(),
                "closing connections that did not finish in time"
            );
            connections.shutdown().await;
        }
        result
    }

    fn admit(
        &self,
        connections: &mut JoinSet<()>,
        stream: TcpStream,
        peer: SocketAddr,
        stop: &watch::Receiver<()>,
    ) {
        let config = &self.shared.config;
        let admitted = match self.shared.admission.admit(peer.ip()) {
            Ok(admitted) => admitted,
            Err(why) => {
                warn!(%peer, "{why}; refusing this one");
                // Best effort and non-blocking: the peer may not be reading
                // (nor speaking TLS, if it is a flood).
                if config.tls.is_none() {
                    let busy = Response::Error {
                        code: ErrorCode::Busy,
                        message: why,
                    };
                    let _ = stream.try_write(&busy.encode());
                }
                return;
            }
        };
        let shared = Arc::clone(&self.shared);
        let stop = stop.clone();
        connections.spawn(async move {
            let _admitted = admitted;
            // Answers are single small writes; do not let Nagle delay a failover.
            let _ = stream.set_nodelay(true);
            let Some(tls) = shared.config.tls.clone() else {
                return handle_connection(shared, stream, None, peer, stop).await;
            };
            match timeout(shared.config.handshake_timeout, tls.accept(stream)).await {
                Ok(Ok((stream, cert))) => {
                    handle_connection(shared, stream, Some(cert), peer, stop).await
                }
                Ok(Err(e)) => warn!(%peer, "refused a connection: {e}"),
                Err(_) => warn!(
                    %peer,
                    "refused a connection: no TLS handshake within {:?}",
                    shared.config.handshake_timeout
                ),
            }
        });
    }
}

/// Serves one connection's requests in turn. `cert` is the client's
/// certificate (with TLS): claims and renewals must be for the node it
/// names.
async fn handle_connection<S: AsyncRead + AsyncWrite + Unpin>(
    shared: Arc<Shared>,
    mut stream: S,
    cert: Option<fttls::PeerCertificate>,
    peer: SocketAddr,
    mut stop: watch::Receiver<()>,
) {
    let config = &shared.config;
    let deadline = Instant::now() + config.max_connection_time;
    debug!(%peer, "connection opened");
    loop {
        let read = tokio::select! {
            _ = stop.changed() => break,
            read = timeout_at(
                deadline,
                read_frame(&mut stream, config.idle_timeout, config.io_timeout),
            ) => read,
        };
        let request = match read {
            Err(_) => {
                debug!(%peer, "connection reached its time limit; closing");
                break;
            }
            Ok(Ok(None)) => break,
            Ok(Ok(Some(frame))) => Request::decode(&frame),
            Ok(Err(e)) => Err(e),
        };
        let response = match request {
            Ok(request) => match unauthorized(&request, cert.as_ref()) {
                Some(refusal) => {
                    warn!(%peer, "refused a request: {refusal}");
                    Response::Error {
                        code: ErrorCode::Unauthorized,
                        message: refusal,
                    }
                }
                None => shared.answer(request, peer).await,
            },
            // A bad request is answered with an error where the peer can
            // still listen; the connection is closed below either way, since
            // the framing may be lost.
            Err(e) => match e.error_code() {
                Some(code) => {
                    warn!(%peer, "bad request: {e}; closing the connection");
                    Response::Error {
                        code,
                        message: e.to_string(),
                    }
                }
                None => {
                    debug!(%peer, "connection ended: {e}");
                    return;
                }
            },
        };
        if let Err(e) = write_frame(&mut stream, &response.encode(), config.io_timeout).await {
            warn!(%peer, "could not send the answer: {e}");
            break;
        }
        if matches!(response, Response::Error { .. }) {
            return linger_close(stream).await;
        }
    }
    debug!(%peer, "connection closed");
}

/// Why `request` may not be made on a connection with `cert`: a claim or
/// renewal acts for a node, which the certificate must name.
fn unauthorized(request: &Request, cert: Option<&fttls::PeerCertificate>) -> Option<String> {
    let node = match request {
        Request::Claim { node, .. } | Request::Renew { node, .. } => node,
        Request::Query | Request::Release { .. } => return None,
    };
    let error = cert?.check_name(node).err()?;
    Some(format!("may not act for node {node:?}: {error}"))
}

async fn linger_close<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) {
    let _ = stream.shutdown().await;
    let _ = timeout(LINGER_TIME, async {
        let mut buf = [0u8; 1024];
        let mut discarded = 0;
        while discarded < LINGER_BYTES {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => discarded += n,
            }
        }
    })
    .await;
}

impl Shared {
    async fn answer(self: &Arc<Self>, request: Request, peer: SocketAddr) -> Response {
        let shared = Arc::clone(self);
        // The ledger blocks on fsync, and running it as its own task means
        // a claim completes (file and memory agree) even if this connection
        // is dropped meanwhile.
        let answered = tokio::task::spawn_blocking(move || shared.answer_blocking(request, peer));
        match answered.await {
            Ok(response) => response,
            Err(e) => {
                error!("ledger task failed: {e}");
                self.fatal.notify_one();
                store_failed(&LedgerError::Poisoned)
            }
        }
    }

    fn answer_blocking(&self, request: Request, peer: SocketAddr) -> Response {
        // A panic while the lock was held may have left file and memory
        // apart: treat it like a failed write.
        let Ok(mut ledger) = self.ledger.lock() else {
            self.fatal.notify_one();
            return store_failed(&LedgerError::Poisoned);
        };
        match request {
            Request::Query => {
                debug!(%peer, "query");
                Response::State(ledger.state().clone())
            }
            Request::Claim {
                node,
                incarnation,
                expected_generation,
            } => {
                let who = Claimant {
                    node: &node,
                    incarnation,
                };
                self.claim(&mut ledger, &who, expected_generation, peer)
            }
            Request::Renew {
                node,
                incarnation,
                generation,
                lease_ms,
            } => {
                let who = Claimant {
                    node: &node,
                    incarnation,
                };
                let lease = Duration::from_millis(lease_ms.into());
                match ledger.renew(&who, generation, lease) {
                    RenewOutcome::Leased {
                        generation,
                        lease_ms,
                    } => {
                        debug!(%peer, node = %node, generation, lease_ms, "lease renewed");
                        Response::Leased {
                            generation,
                            lease_ms,
                        }
                    }
                    RenewOutcome::Denied {
                        generation: current,
                        owner,
                    } => {
                        warn!(
                            %peer, node = %node, generation, current,
                            owner = owner.as_deref().unwrap_or("-"),
                            "lease refused: not the owner of that generation"
                        );
                        Response::Denied {
                            generation: current,
                            owner,
                        }
                    }
                }
            }
            Request::Release { generation } => match ledger.release(generation) {
                Ok(state) => {
                    info!(%peer, generation, current = state.generation,
                        owner = state.owner.as_deref().unwrap_or("-"), "release asked");
                    Response::State(state)
                }
                Err(e) => self.failed(&e, peer),
            },
        }
    }

    fn claim(
        &self,
        ledger: &mut Ledger,
        who: &Claimant,
        expected_generation: u64,
        peer: SocketAddr,
    ) -> Response {
        let node = who.node;
        match ledger.claim(who, expected_generation) {
            Ok((ClaimOutcome::Granted { generation }, effect)) => {
                let how = if effect == ClaimEffect::Repeated {
                    "claim granted again (repeat of the winning claim)"
                } else {
                    "claim granted"
                };
                info!(%peer, node = %node, incarnation = format!("{:016x}", who.incarnation),
                    expected = expected_generation, generation, "{how}");
                Response::Granted { generation }
            }
            Ok((ClaimOutcome::Denied { generation, owner }, _)) => {
                info!(
                    %peer, node = %node, expected = expected_generation, generation,
                    owner = owner.as_deref().unwrap_or("-"),
                    "claim denied"
                );
                Response::Denied { generation, owner }
            }
            Err(e @ LedgerError::Leased { .. }) => {
                info!(%peer, node = %node, expected = expected_generation, "claim held off: {e}");
                Response::Error {
                    code: ErrorCode::Busy,
                    message: e.to_string(),
                }
            }
            Err(e) => self.failed(&e, peer),
        }
    }

    /// The state file could not be written: answer, then stop serving.
    fn failed(&self, e: &LedgerError, peer: SocketAddr) -> Response {
        error!(%peer, "state change failed: {e}");
        self.fatal.notify_one();
        store_failed(e)
    }
}

fn store_failed(err: &LedgerError) -> Response {
    Response::Error {
        code: ErrorCode::StoreFailed,
        message: err.to_string(),
    }
}
