//! A small SMTP listener for tests: accepts every message and keeps it, so a test
//! can read the token out of what the service sent. Speaks just enough SMTP for
//! lettre (EHLO, MAIL, RCPT, DATA, RSET, NOOP, QUIT), plaintext on port 0.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// A received message.
#[derive(Debug, Clone)]
pub struct Mail {
    /// The envelope recipients.
    pub to: Vec<String>,
    /// The raw message (headers and body).
    pub data: String,
}

/// The listener and what it received.
#[derive(Clone)]
pub struct SmtpSink {
    /// `smtp://127.0.0.1:<port>`, for `SMTP_URL`.
    pub url: String,
    received: Arc<Mutex<Vec<Mail>>>,
}

impl SmtpSink {
    /// Listens on a free port until the runtime ends.
    pub async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("smtp://{}", listener.local_addr()?);
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = received.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let sink = sink.clone();
                tokio::spawn(async move {
                    let _ = serve(stream, sink).await;
                });
            }
        });
        Ok(Self { url, received })
    }

    /// Waits for a message to `to` (the newest if several) for up to 10 s.
    pub async fn wait_for(&self, to: &str) -> anyhow::Result<Mail> {
        crate::eventually(Duration::from_secs(10), || async {
            let received = self
                .received
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?;
            Ok(received
                .iter()
                .rev()
                .find(|m| m.to.iter().any(|t| t.eq_ignore_ascii_case(to)))
                .cloned())
        })
        .await
    }

    /// Waits (up to 10 s) for the `n`-th message to `to`, counting from 1.
    pub async fn nth(&self, to: &str, n: usize) -> anyhow::Result<Mail> {
        self.nth_with(to, "", n).await
    }

    /// Waits (up to 10 s) for the `n`-th message to `to` that contains `text` (its
    /// subject, say), counting from 1: mails of different kinds (a verification and
    /// a reset, sent after their answers) may arrive in either order.
    pub async fn nth_with(&self, to: &str, text: &str, n: usize) -> anyhow::Result<Mail> {
        crate::eventually(Duration::from_secs(10), || async {
            let received = self
                .received
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?;
            let mut to_them = received
                .iter()
                .filter(|m| m.to.iter().any(|t| t.eq_ignore_ascii_case(to)))
                .filter(|m| m.data.contains(text));
            Ok(to_them.nth(n.saturating_sub(1)).cloned())
        })
        .await
    }

    /// How many messages went to `to`.
    pub fn count_for(&self, to: &str) -> usize {
        self.received
            .lock()
            .map(|r| {
                r.iter()
                    .filter(|m| m.to.iter().any(|t| t.eq_ignore_ascii_case(to)))
                    .count()
            })
            .unwrap_or(0)
    }
}

async fn serve(stream: tokio::net::TcpStream, sink: Arc<Mutex<Vec<Mail>>>) -> anyhow::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    write.write_all(b"220 test ESMTP\r\n").await?;
    let mut to = Vec::new();
    while let Some(line) = lines.next_line().await? {
        let upper = line.to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") || upper.starts_with("HELO") {
            b"250-test\r\n250 8BITMIME\r\n"
        } else if upper.starts_with("MAIL FROM")
            || upper.starts_with("RSET")
            || upper.starts_with("NOOP")
        {
            b"250 OK\r\n"
        } else if upper.starts_with("RCPT TO") {
            let address = line.split(['<', '>']).nth(1).unwrap_or("").to_owned();
            to.push(address);
            b"250 OK\r\n"
        } else if upper.starts_with("DATA") {
            write.write_all(b"354 go on\r\n").await?;
            let mut data = String::new();
            while let Some(line) = lines.next_line().await? {
                if line == "." {
                    break;
                }
                data.push_str(line.strip_prefix('.').unwrap_or(&line));
                data.push('\n');
            }
            if let Ok(mut received) = sink.lock() {
                received.push(Mail {
                    to: std::mem::take(&mut to),
                    data,
                });
            }
            b"250 OK queued\r\n"
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
