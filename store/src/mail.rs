//! The once-only record of every e-mail: an e-mail's key is claimed before it is handed to SMTP,
//! so a retried step never sends it twice, and a crash mid-send is recorded as `unknown`.
use crate::StoreError;

/// What a call to [`Mail::claim_email`] allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmailClaim {
    /// Hand the message to SMTP now (the row says `sending`).
    Send,
    /// Nothing to send: it was sent, failed for good, or its fate is unknown.
    Done {
        state: String,
        detail: Option<String>,
    },
}

handle! {
    /// The once-only record of every e-mail.
    Mail
}

impl Mail<'_> {
    /// Records the intent to send the e-mail `key` and claims its one send.
    ///
    /// A row still `sending` was claimed by an earlier try that never recorded the outcome: a
    /// crash between handing the message to SMTP and the answer. The message may have gone,
    /// so it is marked `unknown` and not sent again.
    pub async fn claim_email(
        &self,
        key: &str,
        recipients: &str,
        subject: &str,
    ) -> Result<EmailClaim, StoreError> {
        sqlx::query!(
            "INSERT INTO email_sends (key, recipients, subject) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
            key,
            recipients,
            subject
        )
        .execute(&self.pool)
        .await?;
        let row = sqlx::query!(
            "UPDATE email_sends
                SET state = CASE state WHEN 'pending' THEN 'sending'
                                       WHEN 'sending' THEN 'unknown' ELSE state END,
                    attempted_at = CASE WHEN state = 'pending' THEN now() ELSE attempted_at END,
                    detail = CASE WHEN state = 'sending'
                                  THEN 'the sender stopped after handing the message to SMTP; it may or may not have been delivered'
                                  ELSE detail END
              WHERE key = $1
          RETURNING state, detail, (attempted_at = now()) AS claimed",
            key
        )
        .fetch_one(&self.pool)
        .await?;
        if row.state == "sending" && row.claimed == Some(true) {
            return Ok(EmailClaim::Send);
        }
        Ok(EmailClaim::Done {
            state: row.state,
            detail: row.detail,
        })
    }

    /// The message was accepted by the SMTP server.
    pub async fn email_sent(&self, key: &str) -> Result<(), StoreError> {
        sqlx::query!(
            "UPDATE email_sends SET state = 'sent', sent_at = COALESCE(sent_at, now())
              WHERE key = $1",
            key
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The SMTP server was not reached or refused for now: the message was not handed over,
    /// and a later try may send it.
    pub async fn email_not_sent(&self, key: &str, detail: &str) -> Result<(), StoreError> {
        sqlx::query!(
            "UPDATE email_sends SET state = 'pending', detail = $2
              WHERE key = $1 AND state = 'sending'",
            key,
            detail
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The message cannot be sent (`failed`) or may have been (`unknown`), for good.
    pub async fn email_ended(
        &self,
        key: &str,
        state: &str,
        detail: &str,
    ) -> Result<(), StoreError> {
        sqlx::query!(
            "UPDATE email_sends SET state = $2, detail = $3
              WHERE key = $1 AND state IN ('pending', 'sending')",
            key,
            state,
            detail
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
