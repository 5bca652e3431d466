//! The Idempotency-Key generation of each processor operation (see the migration
//! `processor_keys`): a key that got a 5xx answer is replayed as that 5xx by the processor, so
//! the operation moves to a fresh key once it has made sure the call made nothing.

use crate::StoreError;

/// An operation's key in use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessorKey {
    /// The key to send: the base for generation 0, then `{base}-g{n}`.
    pub key: String,
    pub generation: i32,
    /// The processor answered this key with a 5xx: sending it again only replays that.
    pub server_error: bool,
    /// First sent more than 23 hours ago: the processor may have pruned it, and the same key
    /// would then run anew.
    pub stale: bool,
}

fn key_of(base: &str, generation: i32) -> String {
    if generation == 0 {
        base.to_string()
    } else {
        format!("{base}-g{generation}")
    }
}

handle! {
    /// The payment processor's API keys and their rotation.
    ProcessorKeys
}

impl ProcessorKeys<'_> {
    /// The operation's key in use, recorded as used from now if it is new.
    pub async fn processor_key(&self, base: &str) -> Result<ProcessorKey, StoreError> {
        let r = sqlx::query!(
            r#"WITH new AS (
                   INSERT INTO processor_keys (base) VALUES ($1)
                   ON CONFLICT (base) DO NOTHING
                   RETURNING generation, server_error, first_used_at)
               SELECT generation AS "generation!", server_error AS "server_error!",
                      first_used_at < now() - interval '23 hours' AS "stale!"
                 FROM new
               UNION ALL
               SELECT generation, server_error, first_used_at < now() - interval '23 hours'
                 FROM processor_keys WHERE base = $1"#,
            base
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(ProcessorKey {
            key: key_of(base, r.generation),
            generation: r.generation,
            server_error: r.server_error,
            stale: r.stale,
        })
    }

    /// Records that the key of `generation` got a 5xx answer.
    pub async fn processor_server_error(
        &self,
        base: &str,
        generation: i32,
        detail: &str,
    ) -> Result<(), StoreError> {
        sqlx::query!(
            "INSERT INTO processor_keys (base, generation, server_error, detail)
             VALUES ($1, $2, true, $3)
             ON CONFLICT (base) DO UPDATE SET server_error = true, detail = $3, updated_at = now()
              WHERE processor_keys.generation = $2",
            base,
            generation,
            detail
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Moves past a key that got a 5xx answer (once the caller made sure the call made
    /// nothing): the next generation's key, or the current one when another try moved first.
    pub async fn next_processor_key(
        &self,
        base: &str,
        generation: i32,
    ) -> Result<ProcessorKey, StoreError> {
        sqlx::query!(
            "UPDATE processor_keys SET generation = generation + 1, server_error = false,
                    first_used_at = now(), updated_at = now()
              WHERE base = $1 AND generation = $2 AND server_error",
            base,
            generation
        )
        .execute(&self.pool)
        .await?;
        self.processor_key(base).await
    }
}
