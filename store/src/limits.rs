//! Per-org request limits in fixed one-minute windows, kept in Postgres so every API process
//! counts against the same budget.

use uuid::Uuid;

use crate::StoreError;

handle! {
    /// Per-org request limits.
    Limits
}

impl Limits<'_> {
    /// Counts one `action` request of `org_id` in the current minute. `Ok(None)` when it is
    /// within `per_minute`; `Ok(Some(secs))` when over it, with the seconds until the next
    /// window. A `per_minute` of 0 means no limit (nothing is counted).
    pub async fn take_rate(
        &self,
        org_id: Uuid,
        action: &str,
        per_minute: u32,
    ) -> Result<Option<u32>, StoreError> {
        if per_minute == 0 {
            return Ok(None);
        }
        let r = sqlx::query!(
            r#"INSERT INTO rate_windows AS w (org_id, action, window_start, count)
               VALUES ($1, $2, date_trunc('minute', now()), 1)
               ON CONFLICT (org_id, action, window_start) DO UPDATE SET count = w.count + 1
               RETURNING w.count,
                         ceil(extract(epoch FROM w.window_start + interval '1 minute' - now()))::int4
                           AS "retry_after!""#,
            org_id,
            action
        )
        .fetch_one(&self.pool)
        .await?;
        if r.count == 1 {
            // A new window: drop this org's old ones (a handful of rows).
            sqlx::query!(
                "DELETE FROM rate_windows
                  WHERE org_id = $1 AND action = $2 AND window_start < date_trunc('minute', now())",
                org_id,
                action
            )
            .execute(&self.pool)
            .await?;
        }
        Ok((r.count > per_minute as i32).then(|| r.retry_after.max(1) as u32))
    }
}
