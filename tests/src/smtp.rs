//! A real (minimal) SMTP server on loopback that keeps what it receives, for tests. It speaks
//! enough of RFC 5321 for lettre: EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT. A recipient
//! whose local part starts with `reject` is refused for good (550), as an unknown mailbox is;
//! while held, a message is kept but the server does not answer its end of data.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, AtomicU32, Ordering},
};

use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::TcpListener,
};

#[derive(Debug, Clone, Default)]
pub struct Mail {
    pub from: String,
    pub to: Vec<String>,
    pub data: String,
}

impl Mail {
    /// The message as text, with quoted-printable soft line breaks and `=3D` undone.
    pub fn text(&self) -> String {
        self.data.replace("=\n", "").replace("=3D", "=")
    }

    pub fn subject(&self) -> String {
        self.data
            .lines()
            .find_map(|l| l.strip_prefix("Subject: "))
            .unwrap_or_default()
            .to_string()
    }
}

#[derive(Clone)]
pub struct SmtpServer {
    pub port: u16,
    inbox: Arc<Mutex<Vec<Mail>>>,
    /// While false the server answers every session "421 service not available" (down).
    accepting: Arc<AtomicBool>,
    refused: Arc<AtomicU32>,
    holding: Arc<AtomicBool>,
}

impl SmtpServer {
    pub async fn start() -> anyhow::Result<SmtpServer> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let inbox: Arc<Mutex<Vec<Mail>>> = Arc::default();
        let accepting = Arc::new(AtomicBool::new(true));
        let refused = Arc::new(AtomicU32::new(0));
        let holding = Arc::new(AtomicBool::new(false));
        let (boxed, open, count, held) = (
            inbox.clone(),
            accepting.clone(),
            refused.clone(),
            holding.clone(),
        );
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                if !open.load(Ordering::SeqCst) {
                    count.fetch_add(1, Ordering::SeqCst);
                    let _ = socket.write_all(b"421 service not available\r\n").await;
                    continue;
                }
                let (inbox, held) = (boxed.clone(), held.clone());
                tokio::spawn(async move {
                    let _ = session(socket, inbox, held).await;
                });
            }
        });
        Ok(SmtpServer {
            port,
            inbox,
            accepting,
            refused,
            holding,
        })
    }

    /// While on, a message's data is kept but its end is never answered (the sender waits):
    /// the window between the server taking a message and the sender learning it.
    pub fn set_holding(&self, on: bool) {
        self.holding.store(on, Ordering::SeqCst);
    }

    /// Down (every session refused with 421) or up.
    pub fn set_accepting(&self, up: bool) {
        self.accepting.store(up, Ordering::SeqCst);
    }

    /// Sessions refused while down.
    pub fn refused(&self) -> u32 {
        self.refused.load(Ordering::SeqCst)
    }

    pub fn received(&self) -> Vec<Mail> {
        self.inbox.lock().expect("inbox").clone()
    }
}

async fn session(
    socket: tokio::net::TcpStream,
    inbox: Arc<Mutex<Vec<Mail>>>,
    holding: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let (read, mut write) = socket.into_split();
    let mut lines = BufReader::new(read).lines();
    write.write_all(b"220 test-smtp ready\r\n").await?;
    let mut mail = Mail::default();
    while let Some(line) = lines.next_line().await? {
        let upper = line.to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") {
            b"250-test-smtp\r\n250 8BITMIME\r\n"
        } else if upper.starts_with("HELO") || upper.starts_with("NOOP") {
            b"250 ok\r\n"
        } else if upper.starts_with("MAIL FROM:") {
            mail = Mail {
                from: line[10..].trim().to_string(),
                ..Mail::default()
            };
            b"250 ok\r\n"
        } else if upper.starts_with("RCPT TO:") {
            let to = line[8..].trim().trim_matches(['<', '>']).to_string();
            if to.to_ascii_lowercase().starts_with("reject") {
                b"550 5.1.1 no such mailbox\r\n"
            } else {
                mail.to.push(to);
                b"250 ok\r\n"
            }
        } else if upper == "DATA" {
            write.write_all(b"354 end with .\r\n").await?;
            let mut data = String::new();
            while let Some(l) = lines.next_line().await? {
                if l == "." {
                    break;
                }
                data.push_str(l.strip_prefix('.').unwrap_or(&l));
                data.push('\n');
            }
            mail.data = data;
            inbox.lock().expect("inbox").push(std::mem::take(&mut mail));
            while holding.load(Ordering::SeqCst) {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            b"250 queued\r\n"
        } else if upper.starts_with("RSET") {
            mail = Mail::default();
            b"250 ok\r\n"
        } else if upper.starts_with("QUIT") {
            write.write_all(b"221 bye\r\n").await?;
            return Ok(());
        } else {
            b"502 not implemented\r\n"
        };
        write.write_all(reply).await?;
    }
    Ok(())
}
