//! The OpenAPI 3.1 document, generated from the handlers' `#[utoipa::path]`
//! annotations and the types in `alpacon-api`, served at
//! `GET /api/openapi.json` and printed by `alpacon-server openapi`. The
//! console's TypeScript types (`web/src/api.gen.ts`) are generated from it.

use std::sync::OnceLock;

use alpacon_api::ErrorBody;
use axum::http::header;
use axum::response::IntoResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoResponses, Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::AppState;

/// The errors any route can answer. Every one is an [`ErrorBody`]; its
/// `code` (one of `ErrorCode`) says which, and clients branch on it.
#[derive(IntoResponses)]
pub enum Errors {
    /// Refused: the request, the caller's credentials or rights, or the
    /// target's state; `code` says which.
    #[response(status = "4XX")]
    Refused(ErrorBody),
    /// The gateway could not answer: `internal` (the log has the cause),
    /// `storage_full`, `database_busy`, `server_offline`...
    #[response(status = "5XX")]
    Failed(ErrorBody),
}

/// A file or executable as raw bytes.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct Binary(#[allow(dead_code)] Vec<u8>);

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Alpacon API",
        description = "The Alpacon gateway's REST API: servers, commands, terminals, file \
            transfer, people and groups, tokens and their access lists, MFA, work sessions \
            and the audit log. Authenticate with `Authorization: Bearer <key>` (an API \
            token `alpat-...` or a login session `alpses-...`). Paths end with `/`; lists \
            are paged with `page` and `page_size`. Every error is `{\"code\", \"detail\"}`.",
        license(name = "Apache-2.0")
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "status", description = "Liveness and this document"),
        (name = "auth", description = "Logging in and out, the caller's own account"),
        (name = "tokens", description = "API tokens"),
        (name = "acl", description = "Access lists of API tokens"),
        (name = "iam", description = "People, groups and invitations"),
        (name = "mfa", description = "Second factors: TOTP and security keys"),
        (name = "servers", description = "Servers, registration tokens, agent installation"),
        (name = "commands", description = "Commands run on servers"),
        (name = "websh", description = "Terminals, their shares and recordings"),
        (name = "webftp", description = "File transfer"),
        (name = "work_sessions", description = "Time-boxed, approved access to servers"),
        (name = "audit", description = "The audit log"),
    )
)]
pub struct ApiDoc;

/// Every route needs a bearer key unless it says `security(())`.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API token (alpat-...) or a login session (alpses-...); \
                         `Authorization: Token <key>` works too",
                    ))
                    .build(),
            ),
        );
        doc.security = Some(vec![utoipa::openapi::security::SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]);
    }
}

/// The document, built once from the routes themselves.
pub fn document() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        crate::app::api_routes()
            .into_openapi()
            .to_pretty_json()
            .unwrap_or_else(|e| {
                // Serializing our own types cannot fail; if it ever does,
                // the document says so rather than the gateway stopping.
                tracing::error!("cannot serialize the OpenAPI document: {e}");
                "{}".to_string()
            })
    })
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(openapi_json))
}

/// This document (OpenAPI 3.1).
#[utoipa::path(get, path = "/api/openapi.json", tag = "status", security(()),
    responses((status = 200, description = "The OpenAPI document", body = Object), Errors))]
async fn openapi_json() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], document())
}
