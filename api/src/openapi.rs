//! The OpenAPI document, generated from the routes ([`crate::routes`]), the handlers'
//! `#[utoipa::path]` attributes and the request and response types, then completed with the
//! answers every route shares (auth, malformed bodies, the database being down), so the
//! document cannot drift from the code. `api/openapi.json` is the committed copy; a test fails
//! when it differs from what the code generates (`UPDATE_OPENAPI=1` rewrites it).

use std::sync::OnceLock;

use utoipa::{
    OpenApi,
    openapi::{
        self, ContentBuilder, Ref, RefOr, ResponseBuilder,
        header::HeaderBuilder,
        path::Operation,
        schema::{ObjectBuilder, Type},
        security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    },
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "creditflow",
        version = "1.0.0",
        description = "Credits-based billing: balances, an immutable ledger, usage and purchases. \
Credits are decimal strings with at most 6 decimals. Errors are `application/problem+json` with a \
stable `code` (the catalog is `ErrorCode`). Money writes take an `Idempotency-Key` header."
    ),
    servers((url = "http://127.0.0.1:8080")),
    security(("bearer" = [])),
    components(schemas(crate::error::Problem)),
    tags(
        (name = "health", description = "Liveness, readiness and this document"),
        (name = "orgs", description = "Organizations and their API keys"),
        (name = "ledger", description = "Balances, transaction history and adjustments"),
        (name = "grants", description = "Credit grants: what a balance is made of, promotional credits"),
        (name = "prices", description = "Price versions of AI models and infrastructure"),
        (name = "usage", description = "Metered usage"),
        (name = "packages", description = "Credit packages for sale"),
        (name = "purchases", description = "Checkout purchases, Stripe webhooks and the return pages"),
        (name = "refunds", description = "Refunds of purchases and auto-topups"),
        (name = "billing", description = "Auto-topup, alerts and the saved payment method"),
        (name = "summaries", description = "Monthly summaries"),
    )
)]
pub struct ApiDoc;

/// The document, generated once per process.
pub fn document() -> &'static openapi::OpenApi {
    static DOC: OnceLock<openapi::OpenApi> = OnceLock::new();
    DOC.get_or_init(|| {
        let (_, mut doc) = crate::routes().split_for_parts();
        complete(&mut doc);
        doc
    })
}

/// The document as served and committed: pretty JSON with a final newline.
pub fn document_json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        let mut s = serde_json::to_string_pretty(document()).unwrap_or_default();
        s.push('\n');
        s
    })
}

/// Routes that take no API key.
const PUBLIC: &[&str] = &[
    "/healthz",
    "/readyz",
    "/v1/openapi.json",
    "/checkout/success",
    "/checkout/cancel",
    "/v1/webhooks/stripe",
];

/// Adds what every route shares and gives every error answer its problem+json body.
fn complete(doc: &mut openapi::OpenApi) {
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some("An org API key (`cf_…`) or an operator key"))
                .build(),
        ),
    );
    for (path, item) in doc.paths.paths.iter_mut() {
        let public = PUBLIC.contains(&path.as_str());
        for op in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
        ]
        .into_iter()
        .flatten()
        {
            if public {
                op.security = Some(vec![]);
            } else {
                add(
                    op,
                    401,
                    "`missing_api_key` or `invalid_api_key`: no valid API key",
                );
            }
            if op.request_body.is_some() {
                add(op, 400, "`malformed_json`: the body is not JSON");
                add(
                    op,
                    413,
                    "`body_too_large`: the body is larger than this route accepts",
                );
                add(
                    op,
                    415,
                    "`unsupported_media_type`: send `Content-Type: application/json`",
                );
                add(
                    op,
                    422,
                    "`invalid_body`, `invalid_characters`: the body is not of the expected shape",
                );
            }
            let takes = |place: openapi::path::ParameterIn| {
                op.parameters
                    .iter()
                    .flatten()
                    .any(|p| p.parameter_in == place)
            };
            let (in_path, in_query) = (
                takes(openapi::path::ParameterIn::Path),
                takes(openapi::path::ParameterIn::Query),
            );
            if in_path {
                add(op, 404, "`not_found`: a path parameter of the wrong form");
            }
            if in_query {
                add(
                    op,
                    400,
                    "`invalid_query`: an unknown or mistyped query parameter",
                );
            }
            if path != "/healthz" && path != "/v1/openapi.json" {
                add(
                    op,
                    500,
                    "`internal`: an internal error (it has been logged)",
                );
                add(
                    op,
                    503,
                    "`database_unavailable`: the database is not answering; nothing was recorded",
                );
            }
            for (status, response) in op.responses.responses.iter_mut() {
                let RefOr::T(response) = response else {
                    continue;
                };
                if status.as_str() >= "400" && response.content.is_empty() {
                    response.content.insert(
                        "application/problem+json".into(),
                        ContentBuilder::new()
                            .schema(Some(Ref::from_schema_name("Problem")))
                            .build(),
                    );
                }
                if status == "429" || status == "503" {
                    response.headers.insert(
                        "Retry-After".into(),
                        HeaderBuilder::new()
                            .schema(ObjectBuilder::new().schema_type(Type::Integer))
                            .description(Some("Seconds after which a retry may succeed"))
                            .build(),
                    );
                }
            }
        }
    }
}

/// Documents `status` on `op`, or adds `description` to the one documented.
fn add(op: &mut Operation, status: u16, description: &str) {
    let responses = &mut op.responses.responses;
    match responses.get_mut(&status.to_string()) {
        Some(RefOr::T(r)) => {
            if !r.description.contains(description) {
                r.description = format!("{}; {description}", r.description);
            }
        }
        Some(RefOr::Ref(_)) => {}
        None => {
            responses.insert(
                status.to_string(),
                RefOr::T(ResponseBuilder::new().description(description).build()),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    /// The committed document is what the code generates (`UPDATE_OPENAPI=1` rewrites it).
    #[test]
    fn the_committed_document_is_the_generated_one() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");
        let generated = super::document_json();
        if std::env::var_os("UPDATE_OPENAPI").is_some() {
            std::fs::write(path, generated).unwrap();
        }
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == generated,
            "api/openapi.json differs from the generated document; run \
             `UPDATE_OPENAPI=1 cargo test -p api openapi` and commit it"
        );
    }
}
