//! E-mail over SMTP (lettre). Settings come from config; tests point it at a real SMTP server
//! on loopback.

use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor, message::Mailbox};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum MailError {
    #[error("bad address or message: {0}")]
    Invalid(String),
    #[error("SMTP delivery failed: {0}")]
    Smtp(String),
}

#[derive(Clone)]
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl Mailer {
    /// A mailer for an SMTP server without TLS (a local relay or catcher); `from` is the
    /// sender address.
    pub fn new(host: &str, port: u16, from: &str) -> Result<Mailer, MailError> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
            .port(port)
            .timeout(Some(std::time::Duration::from_secs(10)))
            .build();
        Ok(Mailer {
            transport,
            from: from
                .parse()
                .map_err(|e| MailError::Invalid(format!("from: {e}")))?,
        })
    }

    /// Sends one message. `message_id` (without angle brackets) names it: the same id for
    /// every try of one send, so a copy delivered again after a crash between the SMTP answer
    /// and our send record is recognisable as the same message by mail systems.
    pub async fn send(
        &self,
        message_id: &str,
        to: &[String],
        subject: &str,
        body: &str,
    ) -> Result<(), MailError> {
        let sent = self.deliver(message_id, to, subject, body).await;
        let outcome = match &sent {
            Ok(()) => "sent",
            Err(MailError::Invalid(_)) => "invalid",
            Err(MailError::Smtp(_)) => "failed",
        };
        crate::metrics::SMTP_SENDS
            .with_label_values(&[outcome])
            .inc();
        sent
    }

    async fn deliver(
        &self,
        message_id: &str,
        to: &[String],
        subject: &str,
        body: &str,
    ) -> Result<(), MailError> {
        let mut builder = Message::builder()
            .from(self.from.clone())
            .subject(subject)
            .message_id(Some(format!("<{message_id}>")));
        for t in to {
            builder = builder.to(t
                .parse()
                .map_err(|e| MailError::Invalid(format!("{t}: {e}")))?);
        }
        let message = builder
            .body(body.to_string())
            .map_err(|e| MailError::Invalid(e.to_string()))?;
        self.transport
            .send(message)
            .await
            .map_err(|e| MailError::Smtp(e.to_string()))?;
        Ok(())
    }
}
