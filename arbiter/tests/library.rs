//! Tests of the library API in-process: `serve`/`Server` and `ArbiterClient`
//! behind the `Arbiter` trait, over real TCP on 127.0.0.1.

mod common;

use arbiter::{
    serve, Arbiter, ArbiterClient, ArbiterError, ArbiterState, ClaimOutcome, ErrorCode, ServeError,
    Server, ServerConfig, StoreError,
};
use common::{as_node, TempDir, WAIT};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A server task that stops when `stop` is sent (or dropped).
struct Running {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServeError>>,
}

impl Running {
    async fn start(listener: TcpListener, config: ServerConfig) -> Running {
        let server = Server::open(config).expect("open state");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(listener, async {
            let _ = stopped.await;
        }));
        Running {
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) {
        drop(self.stop.take());
        let result = tokio::time::timeout(WAIT, &mut self.task)
            .await
            .expect("server stops")
            .expect("server task");
        result.expect("server ran cleanly");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What an agent does: generic over the backend, and spawnable (Send).
async fn take_over<A: Arbiter + Send + 'static>(
    mut arbiter: A,
    node: &'static str,
) -> Result<ClaimOutcome, ArbiterError> {
    let seen = arbiter.query().await?.generation;
    tokio::spawn(async move { arbiter.claim(&as_node(node), seen).await })
        .await
        .expect("claim task")
}

#[tokio::test]
async fn agents_use_the_client_through_the_trait() {
    let dir = TempDir::new("trait");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = ServerConfig {
        create_if_missing: true,
        ..ServerConfig::new(dir.path("state"))
    };
    let server = Running::start(listener, config).await;
    let a = ArbiterClient::connect(addr).await.unwrap();
    let b = ArbiterClient::connect(addr).await.unwrap();
    assert_eq!(
        take_over(a, "host-a").await.unwrap(),
        ClaimOutcome::Granted { generation: 1 }
    );
    assert_eq!(
        take_over(b, "host-b").await.unwrap(),
        ClaimOutcome::Granted { generation: 2 }
    );
    server.stop().await;
}

#[tokio::test]
async fn serve_refuses_a_missing_state_file() {
    let dir = TempDir::new("missing");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let result = serve(listener, dir.path("nope")).await;
    assert!(
        matches!(result, Err(ServeError::Store(StoreError::Missing(_)))),
        "{result:?}"
    );
}

/// An arbiter restart closes the client's kept connection; the next call
/// reconnects by itself, and a repeated claim is answered consistently.
#[tokio::test]
async fn client_survives_an_arbiter_restart() {
    let dir = TempDir::new("restart");
    let state = dir.path("state");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = ServerConfig {
        create_if_missing: true,
        ..ServerConfig::new(&state)
    };
    let server = Running::start(listener, config).await;
    let mut c = ArbiterClient::connect_with(addr, WAIT, fttls::Security::Insecure)
        .await
        .unwrap();
    assert_eq!(
        c.claim(&as_node("a"), 0).await.unwrap(),
        ClaimOutcome::Granted { generation: 1 }
    );
    server.stop().await;

    let listener = TcpListener::bind(addr).await.expect("rebind the same port");
    let server = Running::start(listener, ServerConfig::new(&state)).await;
    // As if the first answer had been lost: the retry is granted again.
    assert_eq!(
        c.claim(&as_node("a"), 0).await.unwrap(),
        ClaimOutcome::Granted { generation: 1 }
    );
    assert_eq!(
        c.query().await.unwrap(),
        ArbiterState {
            generation: 1,
            owner: Some("a".into()),
            incarnation: as_node("a").incarnation,
        }
    );
    server.stop().await;
}

#[tokio::test]
async fn connections_beyond_the_limit_are_refused_without_harm() {
    let dir = TempDir::new("busy");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = ServerConfig {
        create_if_missing: true,
        max_connections: 1,
        ..ServerConfig::new(dir.path("state"))
    };
    let server = Running::start(listener, config).await;
    let mut first = ArbiterClient::connect_with(addr, WAIT, fttls::Security::Insecure)
        .await
        .unwrap();
    first.query().await.unwrap();
    let mut second = ArbiterClient::connect_with(addr, WAIT, fttls::Security::Insecure)
        .await
        .unwrap();
    match second.claim(&as_node("b"), 0).await {
        Err(ArbiterError::Refused {
            code: ErrorCode::Busy,
            ..
        }) => {}
        // The refusal may be reset away before it is read.
        Err(ArbiterError::Protocol(_)) => {}
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(
        first.claim(&as_node("a"), 0).await.unwrap(),
        ClaimOutcome::Granted { generation: 1 }
    );
    server.stop().await;
}

#[tokio::test]
async fn client_calls_are_bounded_by_its_timeout() {
    // Accepts, then never answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let silent = tokio::spawn(async move {
        let (conn, _) = listener.accept().await.unwrap();
        std::future::pending::<()>().await;
        drop(conn);
    });
    let timeout = Duration::from_millis(200);
    let mut c = ArbiterClient::connect_with(addr, timeout, fttls::Security::Insecure)
        .await
        .unwrap();
    assert!(matches!(
        c.query().await,
        Err(ArbiterError::Timeout(t)) if t == timeout
    ));
    silent.abort();
}
