//! An org's billing settings (auto-topup, the saved payment method, alert recipients) and its
//! balance thresholds.
use billing::{Credits, ThresholdPurpose};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::StoreError;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BillingSettings {
    pub topup_enabled: bool,
    pub topup_threshold: Option<Credits>,
    pub topup_package_id: Option<Uuid>,
    pub topup_monthly_cap_minor: Option<i64>,
    pub topup_paused_reason: Option<String>,
    pub stripe_customer_id: Option<String>,
    pub payment_method_id: Option<String>,
    pub payment_method_consent_at: Option<DateTime<Utc>>,
    pub payment_method_consent_by: Option<String>,
    pub recipients: Vec<String>,
    pub alert_thresholds: Vec<Credits>,
}

/// Makes an org's thresholds of one purpose exactly `thresholds`, keeping the rows (and ids)
/// of those that stay, so workflows keyed by a threshold id keep their meaning.
pub(crate) async fn replace_thresholds(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    org_id: Uuid,
    purpose: ThresholdPurpose,
    thresholds: &[Credits],
) -> Result<(), StoreError> {
    let purpose = purpose.as_str();
    let values: Vec<Decimal> = thresholds.iter().map(|t| t.as_decimal()).collect();
    sqlx::query!(
        "DELETE FROM org_thresholds WHERE org_id = $1 AND purpose = $2 AND NOT threshold = ANY($3)",
        org_id,
        purpose,
        &values
    )
    .execute(&mut **tx)
    .await?;
    sqlx::query!(
        "INSERT INTO org_thresholds (org_id, purpose, threshold)
         SELECT $1, $2, t FROM UNNEST($3::numeric[]) AS t ON CONFLICT DO NOTHING",
        org_id,
        purpose,
        &values
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

handle! {
    /// An org's billing settings and thresholds.
    Settings
}

impl Settings<'_> {
    pub async fn billing_settings(&self, org_id: Uuid) -> Result<BillingSettings, StoreError> {
        self.orgs().get_org(org_id).await?;
        let row = sqlx::query!(
            "SELECT topup_enabled, topup_threshold, topup_package_id, topup_monthly_cap_minor,
                    topup_paused_reason, stripe_customer_id, payment_method_id,
                    payment_method_consent_at, payment_method_consent_by, recipients
               FROM org_billing_settings WHERE org_id = $1",
            org_id
        )
        .fetch_optional(&self.pool)
        .await?;
        let alert_thresholds = sqlx::query_scalar!(
            "SELECT threshold FROM org_thresholds WHERE org_id = $1 AND purpose = 'alert'
              ORDER BY threshold DESC",
            org_id
        )
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(Credits::from_stored)
        .collect();
        Ok(match row {
            None => BillingSettings {
                alert_thresholds,
                ..BillingSettings::default()
            },
            Some(r) => BillingSettings {
                topup_enabled: r.topup_enabled,
                topup_threshold: r.topup_threshold.map(Credits::from_stored),
                topup_package_id: r.topup_package_id,
                topup_monthly_cap_minor: r.topup_monthly_cap_minor,
                topup_paused_reason: r.topup_paused_reason,
                stripe_customer_id: r.stripe_customer_id,
                payment_method_id: r.payment_method_id,
                payment_method_consent_at: r.payment_method_consent_at,
                payment_method_consent_by: r.payment_method_consent_by,
                recipients: r.recipients,
                alert_thresholds,
            },
        })
    }

    /// Saves the settings people control, and the thresholds the ledger watches, atomically.
    pub async fn put_billing_settings(
        &self,
        org_id: Uuid,
        s: &BillingSettings,
    ) -> Result<(), StoreError> {
        let before = self.billing_settings(org_id).await?;
        let mut tx = self.pool.begin().await?;
        sqlx::query!(
            "INSERT INTO org_billing_settings (org_id, topup_enabled, topup_threshold,
                 topup_package_id, topup_monthly_cap_minor, recipients)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (org_id) DO UPDATE SET topup_enabled = $2, topup_threshold = $3,
                 topup_package_id = $4, topup_monthly_cap_minor = $5, recipients = $6,
                 updated_at = now()",
            org_id,
            s.topup_enabled,
            s.topup_threshold.map(|c| c.as_decimal()),
            s.topup_package_id,
            s.topup_monthly_cap_minor,
            &s.recipients
        )
        .execute(&mut *tx)
        .await?;
        let topup: Vec<Credits> = s
            .topup_threshold
            .filter(|_| s.topup_enabled)
            .into_iter()
            .collect();
        replace_thresholds(&mut tx, org_id, ThresholdPurpose::AutoTopup, &topup).await?;
        replace_thresholds(
            &mut tx,
            org_id,
            ThresholdPurpose::Alert,
            &s.alert_thresholds,
        )
        .await?;
        // Re-decided only when the auto-topup terms change, not on every save of the alerts.
        let topup_terms = |b: &BillingSettings| {
            (
                b.topup_enabled,
                b.topup_threshold,
                b.topup_package_id,
                b.topup_monthly_cap_minor,
            )
        };
        if topup_terms(&before) != topup_terms(s) {
            self.topups()
                .enqueue_topup_if_below(&mut tx, org_id, "settings_changed")
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Records the payment method saved for off-session charges, with who consented and when;
    /// a new payment method resumes a paused auto-topup, and tops up at once if the balance
    /// is already below the threshold (see [`crate::Topups::enqueue_topup_if_below`]).
    pub async fn save_payment_method(
        &self,
        org_id: Uuid,
        customer: Option<&str>,
        payment_method: &str,
        consented_by: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query!(
            "INSERT INTO org_billing_settings (org_id, stripe_customer_id, payment_method_id,
                 payment_method_consent_at, payment_method_consent_by)
             VALUES ($1, $2, $3, now(), $4)
             ON CONFLICT (org_id) DO UPDATE SET stripe_customer_id = COALESCE($2, org_billing_settings.stripe_customer_id),
                 payment_method_id = $3, payment_method_consent_at = now(),
                 payment_method_consent_by = $4, topup_paused_reason = NULL, updated_at = now()",
            org_id,
            customer,
            payment_method,
            consented_by
        )
        .execute(&mut *tx)
        .await?;
        self.topups()
            .enqueue_topup_if_below(&mut tx, org_id, "payment_method_saved")
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Replaces an org's thresholds of one purpose.
    pub async fn set_thresholds(
        &self,
        org_id: Uuid,
        purpose: ThresholdPurpose,
        thresholds: &[Credits],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        replace_thresholds(&mut tx, org_id, purpose, thresholds).await?;
        tx.commit().await?;
        Ok(())
    }
}
