//! A typed client over the API's own response types: a test reads a [`Balance`], not
//! `body["balance_credits"]`, so a field renamed in the API breaks the build of the tests, not
//! their run, and every answer read this way is checked to parse as the API's type.

use serde::de::DeserializeOwned;

use api::{
    ledger::{Balance, Transfer, TransferPage},
    orgs::{CreatedOrg, Org},
    purchases::Purchase,
    refunds::RefundList,
    settings::{Settings, TopupList},
    summaries::MonthlySummary,
};

use crate::{Answer, TestApp, TestOrg};

impl Answer {
    /// The body as the API's type `T`; panics (with the body) when the answer is not a
    /// success or does not parse as `T`.
    #[track_caller]
    pub fn typed<T: DeserializeOwned>(&self) -> T {
        assert!(self.status.is_success(), "{} {}", self.status, self.text);
        serde_json::from_value(self.body.clone())
            .unwrap_or_else(|e| panic!("not a {}: {e}: {}", std::any::type_name::<T>(), self.text))
    }
}

impl TestApp {
    /// `GET path` with `key`, as the API's type `T`.
    pub async fn get_as<T: DeserializeOwned>(&self, path: &str, key: &str) -> T {
        self.get(path, key).await.typed()
    }

    pub async fn org_of(&self, org: &TestOrg) -> Org {
        self.get_as(&format!("/v1/orgs/{}", org.id), &org.key).await
    }

    pub async fn balance_of(&self, org: &TestOrg) -> Balance {
        self.get_as(&format!("/v1/orgs/{}/balance", org.id), &org.key)
            .await
    }

    /// The newest page of the org's transfers.
    pub async fn transfers_of(&self, org: &TestOrg) -> Vec<Transfer> {
        self.get_as::<TransferPage>(&format!("/v1/orgs/{}/transactions", org.id), &org.key)
            .await
            .data
    }

    pub async fn settings_of(&self, org: &TestOrg) -> Settings {
        self.get_as(&format!("/v1/orgs/{}/billing-settings", org.id), &org.key)
            .await
    }

    pub async fn topups_of(&self, org: &TestOrg) -> TopupList {
        self.get_as(&format!("/v1/orgs/{}/topups", org.id), &org.key)
            .await
    }

    pub async fn purchase_of(&self, org: &TestOrg, id: &str) -> Purchase {
        self.get_as(&format!("/v1/purchases/{id}"), &org.key).await
    }

    pub async fn refunds_of_purchase(&self, org: &TestOrg, id: &str) -> RefundList {
        self.get_as(&format!("/v1/purchases/{id}/refunds"), &org.key)
            .await
    }

    /// The org's summary of `month` (`YYYY-MM`).
    pub async fn summary_of(&self, org: &TestOrg, month: &str) -> MonthlySummary {
        self.get_as(&format!("/v1/orgs/{}/summaries/{month}", org.id), &org.key)
            .await
    }

    /// A created org as the API answered it (`POST /v1/orgs`).
    pub(crate) fn created(answer: &Answer) -> TestOrg {
        let created: CreatedOrg = answer.typed();
        TestOrg {
            id: created.org.id,
            key: created.api_key.secret,
            key_id: created.api_key.key.id,
        }
    }
}
