//! Schemas of the ledger's words for the API's OpenAPI document (feature `openapi`): the
//! document describes these types as they serialize, so it cannot drift from them.

use std::borrow::Cow;

use utoipa::openapi::{
    ObjectBuilder, OneOfBuilder, RefOr,
    schema::{Schema, Type},
};

use crate::Credits;

/// How credits are written: a decimal string of at most six decimals.
pub const CREDITS_PATTERN: &str = r"^-?[0-9]{1,13}(\.[0-9]{1,6})?$";

const CREDITS_DESCRIPTION: &str = "An exact decimal amount of credits, at most six decimals \
(more is refused, never rounded). Computed amounts (a usage event's cost, a refund's share) are \
computed exactly and rounded once to six decimals, half away from zero; usage is rounded per \
event, so the smallest billable cost is 0.000001.";

impl utoipa::PartialSchema for Credits {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(CREDITS_PATTERN))
            .description(Some(CREDITS_DESCRIPTION))
            .examples(["12.500000"])
            .into()
    }
}

impl utoipa::ToSchema for Credits {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Credits")
    }
}

/// A credits amount as a request may send it: a decimal string (preferred) or a JSON number,
/// read as its shortest decimal text. Either way more than six decimals is refused.
pub struct CreditsInput;

impl utoipa::PartialSchema for CreditsInput {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some(CREDITS_PATTERN)),
            )
            .item(ObjectBuilder::new().schema_type(Type::Number))
            .description(Some(
                "Credits as a decimal string such as \"12.5\" (preferred) or a JSON number; \
                 at most six decimals, never rounded.",
            ))
            .into()
    }
}

impl utoipa::ToSchema for CreditsInput {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("CreditsInput")
    }
}

/// The schema of a text enum: a string, one of `values`.
pub fn text_enum_schema(values: &[&'static str]) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(values.iter().copied()))
        .into()
}
