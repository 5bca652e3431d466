//! E-mail over SMTP (lettre). Settings come from config; tests point it at a real SMTP server
//! on loopback.

use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor, message::Mailbox};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum MailError {
    /// An address or message the library refuses: sending again will not help.
    #[error("bad address or message: {0}")]
    Invalid(String),
    /// The SMTP server refused for good (a 5xx answer, such as an unknown mailbox).
    #[error("SMTP refused the message: {0}")]
    Refused(String),
    /// The server was not reached, or answered "try later" (4xx): the message was not taken.
    #[error("SMTP delivery failed: {0}")]
    Smtp(String),
    /// No answer in time: the server may have taken the message.
    #[error("SMTP did not answer in time: {0}")]
    Timeout(String),
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
            Err(MailError::Refused(_)) => "refused",
            Err(MailError::Smtp(_)) => "failed",
            Err(MailError::Timeout(_)) => "timeout",
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
            let address = billing::email::parse_address(t).map_err(MailError::Invalid)?;
            builder = builder.to(Mailbox::new(None, address));
        }
        // MIME multipart/alternative in UTF-8 (org names and amounts may not be ASCII): the
        // plain text, and the same text as HTML for clients that show only that; lettre picks
        // transfer encodings that keep the bytes intact.
        let message = builder
            .header(lettre::message::header::MIME_VERSION_1_0)
            .multipart(lettre::message::MultiPart::alternative_plain_html(
                body.to_string(),
                html_of(subject, body),
            ))
            .map_err(|e| MailError::Invalid(e.to_string()))?;
        self.transport.send(message).await.map_err(|e| {
            if e.is_permanent() {
                MailError::Refused(e.to_string())
            } else if e.is_timeout() {
                MailError::Timeout(e.to_string())
            } else {
                MailError::Smtp(e.to_string())
            }
        })?;
        Ok(())
    }
}

/// The HTML part of a mail: its plain text escaped, a paragraph per blank-line-separated block,
/// line breaks kept. Nothing in it comes from anywhere but the text, so it says the same.
pub fn html_of(subject: &str, text: &str) -> String {
    fn escape(s: &str) -> String {
        let mut out = String::with_capacity(s.len());
        for c in s.chars() {
            match c {
                '&' => out.push_str("&amp;"),
                '<' => out.push_str("&lt;"),
                '>' => out.push_str("&gt;"),
                '"' => out.push_str("&quot;"),
                '\'' => out.push_str("&#39;"),
                c => out.push(c),
            }
        }
        out
    }
    let paragraphs: Vec<String> = text
        .split("\n\n")
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            let lines: Vec<String> = p.lines().map(|l| escape(l.trim())).collect();
            format!("<p>{}</p>", lines.join("<br>\n"))
        })
        .collect();
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{}</title></head>\n<body style=\"font-family: sans-serif; line-height: 1.4\">\n{}\n</body></html>\n",
        escape(subject),
        paragraphs.join("\n")
    )
}

#[cfg(test)]
mod tests {
    use super::html_of;

    #[test]
    fn the_html_part_is_the_text_escaped_in_paragraphs() {
        let html = html_of(
            "Low <balance>",
            "Org A&B is low.\nSee below.\n\n<script>x</script>\n",
        );
        assert!(
            html.contains("<title>Low &lt;balance&gt;</title>"),
            "{html}"
        );
        assert!(
            html.contains("<p>Org A&amp;B is low.<br>\nSee below.</p>"),
            "{html}"
        );
        assert!(
            html.contains("<p>&lt;script&gt;x&lt;/script&gt;</p>"),
            "{html}"
        );
        assert!(!html.contains("<script>"), "{html}");
    }
}
