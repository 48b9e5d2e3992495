//! Outgoing email: SMTP through lettre when `SMTP_URL` is set, otherwise a folder of
//! `.eml` files (development). Messages are sent in the background, so that a request
//! takes the same time whether or not it sends one (forgot-password, resend).
//! Message bodies carry tokens, so neither the log nor errors ever include them.

use std::path::PathBuf;
use std::sync::Arc;

use aia_settings::MailSettings;
use anyhow::Context;
use lettre::message::header::ContentType;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::ExposeSecret;

#[derive(Clone)]
enum Sink {
    Smtp(Arc<AsyncSmtpTransport<Tokio1Executor>>),
    Folder(PathBuf),
}

/// The mailer.
#[derive(Clone)]
pub struct Mailer {
    sink: Sink,
    from: String,
    /// Sends run here, so that shutdown waits for them (see `Auth::answer_first`).
    sending: tokio_util::task::TaskTracker,
    /// Base of the links in messages: the operator's web app (`PUBLIC_BASE_URL`).
    public_url: String,
}

impl Mailer {
    /// From settings; sends run on `sending`, which shutdown waits for.
    pub fn new(
        settings: &MailSettings,
        sending: tokio_util::task::TaskTracker,
    ) -> anyhow::Result<Self> {
        let sink = match &settings.smtp_url {
            Some(url) => {
                let transport: AsyncSmtpTransport<Tokio1Executor> =
                    AsyncSmtpTransport::<Tokio1Executor>::from_url(url.expose_secret())
                        .context("SMTP_URL")?
                        .build();
                Sink::Smtp(Arc::new(transport))
            }
            None => {
                tracing::warn!(folder = %settings.folder.display(), "no SMTP_URL: emails are written to a folder");
                Sink::Folder(settings.folder.clone())
            }
        };
        Ok(Self {
            sink,
            from: settings.from.clone(),
            sending,
            public_url: settings.public_url.trim_end_matches('/').to_owned(),
        })
    }

    /// The link to the web app's `page` (`verify-email`, `reset-password`) for
    /// `token`: `{PUBLIC_BASE_URL}/{page}#token={token}`. The page reads the token and
    /// posts it to the API; in the fragment, the token never reaches a server's log
    /// or another site's `Referer`.
    pub fn link(&self, page: &str, token: &str) -> String {
        format!("{}/{page}#token={token}", self.public_url)
    }

    /// Queues a plain-text message to `to`.
    pub fn send(&self, to: &str, subject: &str, body: String) {
        let message = (|| -> anyhow::Result<Message> {
            let from = self
                .from
                .parse()
                .map_err(|_| anyhow::anyhow!("MAIL_FROM is not an address"))?;
            let to = to
                .parse()
                .map_err(|_| anyhow::anyhow!("recipient is not an address"))?;
            Ok(Message::builder()
                .from(from)
                .to(to)
                .subject(subject)
                .header(ContentType::TEXT_PLAIN)
                .body(body)?)
        })();
        let message = match message {
            Ok(message) => message,
            Err(error) => {
                tracing::error!(error = %error, "cannot build an email");
                return;
            }
        };
        let sink = self.sink.clone();
        self.sending.spawn(async move {
            let sent = match sink {
                Sink::Smtp(transport) => transport
                    .send(message)
                    .await
                    .map(|_| ())
                    .map_err(anyhow::Error::from),
                Sink::Folder(folder) => write(&folder, &message).await,
            };
            match sent {
                Ok(()) => metrics::counter!("auth_emails_sent_total").increment(1),
                Err(error) => {
                    metrics::counter!("auth_emails_failed_total").increment(1);
                    tracing::error!(error = format!("{error:#}"), "email not sent");
                }
            }
        });
    }
}

async fn write(folder: &std::path::Path, message: &Message) -> anyhow::Result<()> {
    tokio::fs::create_dir_all(folder)
        .await
        .context("creating MAIL_DIR")?;
    let path = folder.join(format!("{}.eml", uuid::Uuid::new_v4()));
    tokio::fs::write(&path, message.formatted())
        .await
        .context("writing an email")?;
    tracing::info!(path = %path.display(), "email written");
    Ok(())
}
