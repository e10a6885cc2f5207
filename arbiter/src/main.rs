//! `arbiter --listen ADDR --state FILE`: the server.
//! `arbiter query|claim|release --connect ADDRESS ...`: a client for
//! operators and scripts, of this server or of an etcd-backed record.

use anyhow::{Context, Result};
use arbiter::{
    AnyArbiter, Arbiter, ArbiterAddress, ClaimOutcome, Claimant, ClientTlsArgs, Server,
    ServerConfig, DEFAULT_ARBITER_NAME, DEFAULT_TIMEOUT,
};
use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info};

/// Exit status of `claim` when the claim was denied (errors exit with 1).
const EXIT_DENIED: u8 = 3;

#[derive(Parser)]
#[command(
    version,
    about = "Test-and-set arbiter on a growing generation number",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Address to listen on, e.g. 198.18.0.4:7700 (port 0 picks one; the
    /// log says which).
    #[arg(long, required = true)]
    listen: Option<SocketAddr>,
    /// State file (a `.tmp` and a `.lock` file are kept beside it).
    #[arg(long, required = true)]
    state: Option<PathBuf>,
    /// Create the state file at generation 0 if it does not exist.
    #[arg(long)]
    init: bool,
    /// How long a connection may wait between requests.
    #[arg(long, default_value_t = millis(ServerConfig::new("").idle_timeout))]
    idle_timeout_ms: u64,
    /// How long a started request may take to arrive (and an answer to leave).
    #[arg(long, default_value_t = millis(ServerConfig::new("").io_timeout))]
    io_timeout_ms: u64,
    /// Connections beyond this are refused.
    #[arg(long, default_value_t = ServerConfig::new("").max_connections)]
    max_connections: usize,
    /// Connections from one address beyond this are closed at once.
    #[arg(long, default_value_t = ServerConfig::new("").max_connections_per_address)]
    max_connections_per_address: usize,
    /// The longest lease granted to a node serving alone; after a restart,
    /// claims against the recorded owner wait this long.
    #[arg(long, default_value_t = millis(ServerConfig::new("").max_lease))]
    max_lease_ms: u64,
    /// Serve `/metrics` (Prometheus) and `/status` (JSON) over HTTP here.
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// Mutual TLS: the directory `ftctl certs` made for this arbiter.
    #[arg(long)]
    tls_dir: Option<PathBuf>,
    /// The name this arbiter's certificate carries (the nodes expect it).
    #[arg(long, default_value = DEFAULT_ARBITER_NAME)]
    name: String,
    /// Plain TCP: anyone who reaches the port may claim. For tests and
    /// demos on a closed network only.
    #[arg(long)]
    insecure: bool,
}

/// The arbiter's record, as its admin address shows it.
struct Record(Server);

impl service::admin::Observed for Record {
    fn status_json(&self) -> String {
        let state = self.0.state();
        serde_json::json!({
            "generation": state.generation,
            "owner": state.owner,
            "incarnation": format!("{:016x}", state.incarnation),
        })
        .to_string()
    }

    fn metrics(&self, registry: &mut service::admin::Registry) {
        let state = self.0.state();
        let generation = i64::try_from(state.generation).unwrap_or(i64::MAX);
        service::admin::gauge(
            registry,
            "arbiter_generation",
            "The current generation.",
            generation,
        );
        let owner = state.owner.as_deref().unwrap_or("");
        service::admin::label(
            registry,
            "arbiter_owner",
            "The generation's owner (empty: released).",
            "owner",
            owner,
        );
    }
}

#[derive(Subcommand)]
enum Command {
    /// Print the current generation and owner.
    Query(ClientArgs),
    /// Claim generation EXPECTED+1 for NODE; exit 0 if granted, 3 if denied.
    Claim {
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        node: String,
        /// The generation the claimant last saw.
        #[arg(long)]
        expected: u64,
    },
    /// Clear the owner of GENERATION, so that the next claim at it wins
    /// (after the owner's lease, if any, runs out). For an operator who
    /// knows that the recorded owner no longer serves.
    Release {
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        generation: u64,
    },
}

#[derive(Args)]
struct ClientArgs {
    /// The arbiter: `HOST:PORT` of this server, or
    /// `etcd://HOST:PORT[,HOST:PORT…]/PREFIX` of an etcd-backed record.
    #[arg(long)]
    connect: ArbiterAddress,
    #[arg(long, default_value_t = millis(DEFAULT_TIMEOUT))]
    timeout_ms: u64,
    #[command(flatten)]
    tls: ClientTlsArgs,
}

/// The library's defaults, so that `--help` shows them and they are stated once.
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli: Cli = service::config::parse(service::config::Daemon {
        name: "arbiter",
        subcommand: None,
    });
    service::init_logging();
    let result = match cli.command {
        Some(Command::Query(client)) => query(client).await,
        Some(Command::Claim {
            client,
            node,
            expected,
        }) => claim(client, &node, expected).await,
        Some(Command::Release { client, generation }) => release(client, generation).await,
        None => run_server(cli).await.map(|()| ExitCode::SUCCESS),
    };
    result.unwrap_or_else(|e| {
        error!("{e:#}");
        ExitCode::FAILURE
    })
}

async fn run_server(cli: Cli) -> Result<()> {
    // clap enforces both unless a subcommand was given.
    let listen = cli.listen.context("--listen is required")?;
    let state_path = cli.state.context("--state is required")?;
    let tls = fttls::choose(cli.tls_dir.as_deref(), cli.insecure, &cli.name)?;
    let config = ServerConfig {
        tls,
        create_if_missing: cli.init,
        idle_timeout: Duration::from_millis(cli.idle_timeout_ms),
        io_timeout: Duration::from_millis(cli.io_timeout_ms),
        max_connections: cli.max_connections,
        max_connections_per_address: cli.max_connections_per_address,
        max_lease: Duration::from_millis(cli.max_lease_ms),
        ..ServerConfig::new(&state_path)
    };
    // The state is checked before listening: a corrupt file never serves.
    let server = Server::open(config)?;
    let state = server.state();
    info!(
        path = %state_path.display(),
        generation = state.generation,
        owner = state.owner.as_deref().unwrap_or("-"),
        "state loaded"
    );
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    info!("listening on {}", listener.local_addr()?);
    if let Some(admin) = cli.admin {
        service::admin::serve(admin, std::sync::Arc::new(Record(server.clone())))
            .with_context(|| format!("serve the admin address {admin}"))?;
    }
    let watched = server.clone();
    service::spawn(move || {
        let state = watched.state();
        service::Report {
            ready: true,
            status: format!(
                "generation {} owner {}",
                state.generation,
                state.owner.as_deref().unwrap_or("-")
            ),
        }
    });
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let shutdown = async move {
        tokio::select! {
            _ = terminate.recv() => info!("SIGTERM received; shutting down"),
            _ = tokio::signal::ctrl_c() => info!("SIGINT received; shutting down"),
        }
    };
    server.run(listener, shutdown).await?;
    info!("stopped");
    Ok(())
}

async fn connect(args: &ClientArgs) -> Result<AnyArbiter> {
    let security = args.tls.security()?;
    AnyArbiter::connect(
        &args.connect,
        &security,
        Duration::from_millis(args.timeout_ms),
    )
    .await
    .with_context(|| format!("cannot reach the arbiter at {}", args.connect))
}

async fn query(args: ClientArgs) -> Result<ExitCode> {
    let state = connect(&args).await?.query().await?;
    println!(
        "generation={} owner={}",
        state.generation,
        state.owner.as_deref().unwrap_or("-")
    );
    Ok(ExitCode::SUCCESS)
}

async fn claim(args: ClientArgs, node: &str, expected: u64) -> Result<ExitCode> {
    // A claim from the command line is a process of its own.
    let who = Claimant {
        node,
        incarnation: arbiter::new_incarnation(),
    };
    match connect(&args).await?.claim(&who, expected).await? {
        ClaimOutcome::Granted { generation } => {
            println!("granted generation={generation} owner={node}");
            Ok(ExitCode::SUCCESS)
        }
        ClaimOutcome::Denied { generation, owner } => {
            println!(
                "denied generation={generation} owner={}",
                owner.as_deref().unwrap_or("-")
            );
            Ok(ExitCode::from(EXIT_DENIED))
        }
    }
}

async fn release(args: ClientArgs, generation: u64) -> Result<ExitCode> {
    let state = connect(&args).await?.release(generation).await?;
    println!(
        "generation={} owner={}",
        state.generation,
        state.owner.as_deref().unwrap_or("-")
    );
    if state.generation == generation && state.owner.is_none() {
        Ok(ExitCode::SUCCESS)
    } else {
        Ok(ExitCode::from(EXIT_DENIED))
    }
}
