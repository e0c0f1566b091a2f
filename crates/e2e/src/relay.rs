//! A TCP relay between two endpoints whose live connections a test can cut
//! at will, to simulate a pulled network cable on one leg.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub struct CutRelay {
    pub port: u16,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl CutRelay {
    /// Listens on an ephemeral loopback port and forwards to `target`.
    pub async fn start(target: SocketAddr) -> std::io::Result<CutRelay> {
        let l = TcpListener::bind("127.0.0.1:0").await?;
        let port = l.local_addr()?.port();
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let c2 = conns.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = l.accept().await {
                let h = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                c2.lock().unwrap_or_else(|e| e.into_inner()).push(h);
            }
        });
        Ok(CutRelay {
            port,
            conns,
            accept,
        })
    }

    /// Aborts every live connection (both directions die at once); returns
    /// how many were live.
    pub fn cut(&self) -> usize {
        let mut c = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        c.retain(|h| !h.is_finished());
        let n = c.len();
        for h in c.drain(..) {
            h.abort();
        }
        n
    }
}

impl Drop for CutRelay {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}
