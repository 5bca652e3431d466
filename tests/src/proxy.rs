//! A TCP proxy a test can cut: the way to take one test's view of Temporal down without stopping
//! the server every other test shares. Down, it drops every open connection and closes each new
//! one at once, as a stopped server's port would.

use std::sync::Arc;

use tokio::{net::TcpListener, sync::watch};

#[derive(Clone)]
pub struct TcpProxy {
    pub port: u16,
    up: Arc<watch::Sender<bool>>,
}

impl TcpProxy {
    /// Listens on a loopback port and forwards to `upstream` (`host:port`).
    pub async fn start(upstream: String) -> anyhow::Result<TcpProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let (up, _) = watch::channel(true);
        let up = Arc::new(up);
        let state = up.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut watching = state.subscribe();
                if !*watching.borrow() {
                    drop(inbound);
                    continue;
                }
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = watching.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Ok(TcpProxy { port, up })
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn set_up(&self, up: bool) {
        self.up.send_replace(up);
    }
}
