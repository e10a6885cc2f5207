//! The releaser of a node serving alone, with a fake arbiter (a TCP server
//! on 127.0.0.1 that answers the real protocol as each test says) and a
//! fake NIC that records what left: a lease releases, a refused renewal
//! or an arbiter error fences the node, stops its vCPU and releases
//! nothing.

use agent::arbitration::Arbitration;
use agent::audit::Audit;
use agent::nic::NicTx;
use agent::node::ReleaseNow;
use agent::role::Role;
use agent::serve::{OutputGate, Releaser, ReleaserEnd, RoleControl};
use agent::status::Status;
use arbiter::protocol::{read_frame, write_frame, ErrorCode, Request, Response};
use arbiter::ArbiterAddress;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vmm::{Input, OutputSink};

const WAIT: Duration = Duration::from_secs(10);

/// Frames "sent" to the network.
#[derive(Clone, Default)]
struct FakeNic(Arc<Mutex<Vec<Vec<u8>>>>);

impl NicTx for FakeNic {
    fn send(&mut self, frame: &[u8]) -> std::io::Result<()> {
        self.0.lock().unwrap().push(frame.to_vec());
        Ok(())
    }
}

/// An arbiter that answers every request with `answer(request)`.
fn fake_arbiter(answer: fn(&Request) -> Response) -> SocketAddr {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            addr_tx.send(listener.local_addr().unwrap()).unwrap();
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    while let Ok(Some(frame)) = read_frame(&mut stream, WAIT, WAIT).await {
                        let Ok(request) = Request::decode(&frame) else {
                            return;
                        };
                        let reply = answer(&request).encode();
                        if write_frame(&mut stream, &reply, WAIT).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
    });
    addr_rx.recv_timeout(WAIT).unwrap()
}

struct Run {
    end: ReleaserEnd,
    sent: usize,
    role: Role,
    vcpu_stopped: bool,
}

/// A node serving alone under generation 2 with three frames held,
/// against an arbiter answering `answer`.
fn serve_alone(answer: fn(&Request) -> Response) -> Run {
    let addr = fake_arbiter(answer);
    let status = Status::new("a", None);
    let stop = Arc::new(AtomicBool::new(false));
    let nic = FakeNic::default();
    let (vcpu, inputs) = sync_channel(16);
    let mut gate = OutputGate::new(64, stop.clone());
    for seq in 0..3 {
        gate.output(vec![seq as u8; 60], seq, 0).unwrap();
    }
    let releaser = Releaser {
        gate: gate.clone(),
        out: ReleaseNow {
            nic: Box::new(nic.clone()),
            pcap: None,
            send_errors: 0,
            status: status.clone(),
        },
        arbitration: Arbitration::new(
            &ArbiterAddress::Embedded(addr.to_string()),
            &fttls::Security::Insecure,
            "a",
            5,
            Duration::from_secs(2),
        )
        .unwrap(),
        generation: 2,
        silence: Duration::from_millis(500),
        renew_every: Duration::from_millis(20),
        control: RoleControl {
            xdp: None,
            status: status.clone(),
        },
        protection: Arc::default(),
        vcpu,
        stop,
        audit: Arc::new(Audit::default()),
    }
    .spawn();
    // A lease releases at once; give a refusal the same chance.
    std::thread::sleep(Duration::from_millis(300));
    gate.close();
    let released = releaser.join().expect("the releaser ends");
    let sent = nic.0.lock().unwrap().len();
    Run {
        end: released.end,
        sent,
        role: status.role(),
        vcpu_stopped: matches!(inputs.try_recv(), Ok(Input::Stop)),
    }
}

#[test]
fn a_lease_releases_what_is_held() {
    let run = serve_alone(|request| match request {
        Request::Renew {
            generation,
            lease_ms,
            ..
        } => Response::Leased {
            generation: *generation,
            lease_ms: *lease_ms,
        },
        _ => Response::Denied {
            generation: 0,
            owner: None,
        },
    });
    assert!(matches!(run.end, ReleaserEnd::Done), "{:?}", run.end);
    assert_eq!(run.sent, 3);
    assert!(!run.vcpu_stopped);
}

#[test]
fn a_refused_renewal_fences_and_releases_nothing() {
    let run = serve_alone(|_| Response::Denied {
        generation: 3,
        owner: Some("b".into()),
    });
    assert!(
        matches!(&run.end, ReleaserEnd::Deposed { generation: 3, owner: Some(o) } if o == "b"),
        "{:?}",
        run.end
    );
    assert_eq!(run.sent, 0);
    assert_eq!(run.role, Role::Deposed);
    assert!(run.vcpu_stopped);
}

#[test]
fn an_arbiter_error_fences_and_releases_nothing() {
    let run = serve_alone(|_| Response::Error {
        code: ErrorCode::BadVersion,
        message: "this arbiter speaks another protocol".into(),
    });
    assert!(matches!(run.end, ReleaserEnd::Halted(_)), "{:?}", run.end);
    assert_eq!(run.sent, 0);
    assert_eq!(run.role, Role::Halted);
    assert!(run.vcpu_stopped);
}
