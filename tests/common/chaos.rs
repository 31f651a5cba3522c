//! A TCP proxy in front of Postgres that can cut every connection on demand: the database
//! "disappears" mid-session, exactly as a network partition or a crashed server looks to a client.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct ChaosProxy {
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    cut_signal: watch::Sender<bool>,
    /// Connections being relayed; `cut` waits for it to reach zero.
    open: watch::Sender<usize>,
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
        let (accept_cut, accept_signal, accept_open) =
            (cut.clone(), cut_signal.clone(), open.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if accept_cut.load(Ordering::SeqCst) {
                    drop(client); // refuse: the database is gone
                    continue;
                }
                let mut cut_rx = accept_signal.subscribe();
                accept_open.send_modify(|n| *n += 1);
                let open = Open(accept_open.clone());
                tokio::spawn(async move {
                    let _open = open;
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (mut client, mut server) = (client, server);
                    // `biased`: once cut, not another byte is relayed, even if some are waiting.
                    tokio::select! {
                        biased;
                        _ = cut_rx.wait_for(|cut| *cut) => {}
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                    }
                });
            }
        });
        ChaosProxy { addr, cut, cut_signal, open }
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
