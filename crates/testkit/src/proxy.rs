//! A TCP proxy that a test can pause: while paused it stops reading from either side,
//! so requests through it hang (a slow or partitioned dependency) until resumed, or
//! are refused outright after [`TcpProxy::refuse`] (a dependency that is down).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward both ways.
    Forward,
    /// Hold everything: read nothing, write nothing.
    Pause,
    /// Close every connection and refuse new ones.
    Refuse,
    /// Hold the connections accepted before the n-th (counting from 0), as `Pause`
    /// does; forward the others (a long-lived stream held while new calls pass).
    HoldOlderThan(u64),
    /// Forward the connections accepted before the n-th; close the others and refuse
    /// every new one (a long-lived stream kept while new calls fail). Meant with n
    /// at least [`TcpProxy::accepted`] when set: new connections are refused
    /// whatever n is.
    RefuseNewerThan(u64),
}

/// A running proxy; stops when dropped.
pub struct TcpProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    mode: Arc<watch::Sender<Mode>>,
    target: Arc<watch::Sender<SocketAddr>>,
    accepted: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to` (connection number `index`) while the mode allows; ends on
/// `Refuse` or EOF.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
    index: u64,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let current = *mode.borrow_and_update();
        let held = match current {
            Mode::Refuse => return,
            Mode::Pause => true,
            Mode::HoldOlderThan(n) => index < n,
            Mode::RefuseNewerThan(n) if index >= n => return,
            Mode::RefuseNewerThan(_) | Mode::Forward => false,
        };
        if held {
            if mode.changed().await.is_err() {
                return;
            }
        } else {
            tokio::select! {
                read = from.read(&mut buffer) => match read {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        let Some(chunk) = buffer.get(..n) else { return };
                        if to.write_all(chunk).await.is_err() {
                            return;
                        }
                    }
                },
                changed = mode.changed() => if changed.is_err() { return },
            }
        }
    }
}

impl TcpProxy {
    /// Listens on a free loopback port and forwards to `target`.
    pub async fn start(target: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (mode, _) = watch::channel(Mode::Forward);
        let mode = Arc::new(mode);
        let modes = mode.clone();
        let (target, _) = watch::channel(target);
        let target = Arc::new(target);
        let targets = target.clone();
        let accepted = Arc::new(AtomicU64::new(0));
        let counted = accepted.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                // A new connection's index is at least the count any
                // `RefuseNewerThan` was given.
                if matches!(*modes.borrow(), Mode::Refuse | Mode::RefuseNewerThan(_)) {
                    drop(client);
                    continue;
                }
                let index = counted.fetch_add(1, Ordering::AcqRel);
                let to = *targets.borrow();
                let Ok(server) = TcpStream::connect(to).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(pump(client_read, server_write, modes.subscribe(), index));
                tokio::spawn(pump(server_read, client_write, modes.subscribe(), index));
            }
        });
        Ok(Self {
            addr,
            mode,
            target,
            accepted,
            task,
        })
    }

    /// Sends new connections to `target` from now on (a dependency that came back
    /// elsewhere: tests never rebind a port another test may have taken meanwhile).
    pub fn retarget(&self, target: SocketAddr) {
        self.target.send_replace(target);
    }

    /// Switches the mode.
    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// How many connections the proxy has accepted (and not refused).
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Acquire)
    }

    /// Holds the first `n` connections accepted; forwards the rest, new ones included.
    pub fn hold_first(&self, n: u64) {
        self.set(Mode::HoldOlderThan(n));
    }

    /// Holds all traffic.
    pub fn pause(&self) {
        self.set(Mode::Pause);
    }

    /// Closes connections and refuses new ones.
    pub fn refuse(&self) {
        self.set(Mode::Refuse);
    }

    /// Forwards again.
    pub fn resume(&self) {
        self.set(Mode::Forward);
    }
}
