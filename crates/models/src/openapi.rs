//! Schema pieces that serde's shapes cannot say by themselves: the
//! documented `context`, the modules a task may name, and v6 chat's "either
//! `user_message` or `message`".

use utoipa::openapi::schema::{
    AdditionalProperties, AnyOfBuilder, ObjectBuilder, OneOfBuilder, Schema, SchemaType, Type,
};
use utoipa::openapi::{Ref, RefOr};
use utoipa::{PartialSchema, ToSchema};

use crate::{ChatV6Request, Mode, Module};

/// Not only Unicode `White_Space`: the "not blank" rule, as a JSON Schema pattern.
pub(crate) const NOT_BLANK: &str = "[^\\t\\n\\u000b\\f\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]";

/// The documented shape of a chat's `context`: any object whose `mode`,
/// when present, forces the session's mode.
#[derive(ToSchema)]
pub struct ChatContext {
    /// "MADRE" or "AUDIO_ENGINEER".
    pub mode: Option<Mode>,
}

/// The modules a v6 task may call: [`Module::REMOTE`] (every one but Madre).
pub struct RemoteModule;

impl PartialSchema for RemoteModule {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(Module::REMOTE.iter().map(|m| m.as_str())))
            .description(Some("A VX11 module Madre delegates to"))
            .into()
    }
}

impl ToSchema for RemoteModule {}

fn text(nullable: bool) -> ObjectBuilder {
    let ty = if nullable {
        SchemaType::from_iter([Type::String, Type::Null])
    } else {
        SchemaType::new(Type::String)
    };
    ObjectBuilder::new()
        .schema_type(ty)
        .min_length(Some(1))
        .max_length(Some(crate::MAX_MESSAGE_CHARS))
        .pattern(Some(NOT_BLANK))
}

fn variant(required: &str) -> ObjectBuilder {
    let session = ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
        .pattern(Some("^[A-Za-z0-9._:-]{1,128}$"));
    let context = OneOfBuilder::new()
        .item(Ref::from_schema_name("ChatContext"))
        .item(ObjectBuilder::new().schema_type(Type::Null));
    ObjectBuilder::new()
        .property("user_message", text(required != "user_message"))
        .property("message", text(required != "message"))
        .property("session_id", session)
        .property("context", context)
        .required(required)
        .additional_properties(Some(AdditionalProperties::FreeForm(false)))
}

impl PartialSchema for ChatV6Request {
    fn schema() -> RefOr<Schema> {
        AnyOfBuilder::new()
            .description(Some("A v6 chat: `user_message`, or `message` in its place"))
            .item(variant("user_message"))
            .item(variant("message"))
            .into()
    }
}

impl ToSchema for ChatV6Request {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((ChatContext::name().into(), ChatContext::schema()));
        ChatContext::schemas(schemas);
    }
}
