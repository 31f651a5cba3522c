//! A TCP proxy in front of Postgres that can cut every connection on demand: the database
//! "disappears" mid-session, exactly as a network partition or a crashed server looks to a client.
//! It can also break just the connection that sends a given marker, either before the server
//! sees the message or after it (the server runs it; its answer is lost): the two ways a
//! connection fails mid-statement.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct ChaosProxy {
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    cut_signal: watch::Sender<bool>,
    /// Connections being relayed; `cut` waits for it to reach zero.
    open: watch::Sender<usize>,
    trap: Arc<Mutex<Option<Trap>>>,
    /// Set once the trap has sprung.
    sprung: watch::Sender<bool>,
}

/// Breaks the first connection whose client sends `marker`, once.
#[derive(Clone)]
struct Trap {
    marker: Vec<u8>,
    /// Whether the server gets the bytes that carry the marker.
    deliver: bool,
}

/// Counts one relayed connection for as long as it lives.
struct Open(watch::Sender<usize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

impl ChaosProxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind chaos proxy");
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let (cut_signal, _) = watch::channel(false);
        let (open, _) = watch::channel(0usize);
        let trap: Arc<Mutex<Option<Trap>>> = Arc::default();
        let (sprung, _) = watch::channel(false);
        let (accept_cut, accept_signal, accept_open) =
            (cut.clone(), cut_signal.clone(), open.clone());
        let (accept_trap, accept_sprung) = (trap.clone(), sprung.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if accept_cut.load(Ordering::SeqCst) {
                    drop(client); // refuse: the database is gone
                    continue;
                }
                let mut cut_rx = accept_signal.subscribe();
                accept_open.send_modify(|n| *n += 1);
                let open = Open(accept_open.clone());
                let (trap, sprung) = (accept_trap.clone(), accept_sprung.clone());
                tokio::spawn(async move {
                    let _open = open;
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    // `biased`: once cut, not another byte is relayed, even if some are waiting.
                    tokio::select! {
                        biased;
                        _ = cut_rx.wait_for(|cut| *cut) => {}
                        _ = relay(client, server, &trap, &sprung) => {}
                    }
                });
            }
        });
        ChaosProxy { addr, cut, cut_signal, open, trap, sprung }
    }

    /// A chaos proxy in front of the server of `postgres_url` (`postgres://USER@HOST:PORT/DB`),
    /// and that URL with the proxy's address in place of the server's.
    pub async fn in_front_of(postgres_url: &str) -> (ChaosProxy, String) {
        let (scheme_user, rest) = postgres_url.split_once('@').expect("a user in the url");
        let (host_port, database) = rest.split_once('/').expect("a database in the url");
        let server = tokio::net::lookup_host(host_port).await.unwrap().next().unwrap();
        let chaos = ChaosProxy::start(server).await;
        let url = format!("{scheme_user}@{}/{database}", chaos.addr);
        (chaos, url)
    }

    /// Breaks the next connection that sends `marker`: the server never gets those bytes, and
    /// the client sees its connection close.
    pub fn drop_before(&self, marker: &str) {
        self.arm(Trap { marker: marker.as_bytes().to_vec(), deliver: false });
    }

    /// Breaks the next connection that sends `marker` after passing those bytes on: the server
    /// runs what they ask, and the client sees its connection close before any answer.
    pub fn lose_answer_to(&self, marker: &str) {
        self.arm(Trap { marker: marker.as_bytes().to_vec(), deliver: true });
    }

    fn arm(&self, trap: Trap) {
        self.sprung.send_replace(false);
        *self.trap.lock().unwrap() = Some(trap);
    }

    /// Whether an armed trap has sprung.
    pub fn has_sprung(&self) -> bool {
        *self.sprung.borrow()
    }

    /// Drops every open connection and refuses new ones; returns once every connection is
    /// closed, so that nothing sent afterwards can reach the database. (Returning as soon as the
    /// signal was sent let a statement sent right after slip through and commit, while its
    /// sender saw the connection fail.)
    pub async fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        let _ = self.cut_signal.send(true);
        let _ = self.open.subscribe().wait_for(|open| *open == 0).await;
    }
}

/// Relays both ways until either side closes, springing `trap` if the client sends its marker.
async fn relay(
    client: TcpStream,
    server: TcpStream,
    trap: &Mutex<Option<Trap>>,
    sprung: &watch::Sender<bool>,
) {
    let (mut client_in, mut client_out) = client.into_split();
    let (mut server_in, mut server_out) = server.into_split();
    // Set once the marker went to the server: its next answer is the one to lose.
    let swallow = AtomicBool::new(false);
    let to_client = async {
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match server_in.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) if swallow.load(Ordering::SeqCst) => return,
                Ok(n) => {
                    if client_out.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    let to_server = async {
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = match client_in.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let chunk = &buf[..n];
            let sprang = {
                let mut armed = trap.lock().unwrap();
                let hit = armed.as_ref().is_some_and(|t| {
                    chunk.windows(t.marker.len()).any(|w| w == t.marker.as_slice())
                });
                if hit { armed.take() } else { None }
            };
            if let Some(trap) = sprang {
                sprung.send_replace(true);
                if !trap.deliver {
                    return;
                }
                swallow.store(true, Ordering::SeqCst);
                if server_out.write_all(chunk).await.is_ok() {
                    // Wait for the server's answer, which `to_client` reads and drops.
                    std::future::pending::<()>().await;
                }
                return;
            }
            if server_out.write_all(chunk).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        _ = to_client => {}
        _ = to_server => {}
    }
    if swallow.load(Ordering::SeqCst) {
        // The server answered and the answer is gone; the client's side closes now (as its
        // halves drop) and the server's stays open, anything more it sends thrown away, until
        // the server closes it: its session is left as it was.
        drop((client_in, client_out));
        let _ = tokio::io::copy(&mut server_in, &mut tokio::io::sink()).await;
    }
}
