//! The OpenAPI 3.1 document, generated from the handlers' `#[utoipa::path]`
//! annotations and the types in `alpacon-api`, served at
//! `GET /api/openapi.json` and printed by `alpacon-server openapi`. The
//! console's TypeScript types (`web/src/api.gen.ts`) are generated from it.

use std::sync::OnceLock;

use alpacon_api::ErrorBody;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::RefOr;
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

/// The document as data, from the routes themselves.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = crate::app::api_routes().into_openapi();
    for item in doc.paths.paths.values_mut() {
        for op in operations_mut(item) {
            for (status, resp) in op.responses.responses.iter_mut() {
                if let RefOr::T(r) = resp {
                    if r.description.is_empty() {
                        r.description = reason(status);
                    }
                }
            }
        }
    }
    doc
}

fn operations_mut(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.patch,
    ]
    .into_iter()
    .filter_map(Option::as_mut)
}

/// A response's required description when its annotation gave none: the
/// status's reason phrase ("OK", "Created", "No Content").
fn reason(status: &str) -> String {
    status
        .parse::<u16>()
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Answer")
        .to_string()
}

/// The document as served, built once.
pub fn document() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        openapi().to_pretty_json().unwrap_or_else(|e| {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn operations(doc: &mut utoipa::openapi::OpenApi) -> Vec<(String, Operation)> {
        let mut out = Vec::new();
        for (path, item) in doc.paths.paths.iter_mut() {
            for op in operations_mut(item) {
                out.push((path.clone(), op.clone()));
            }
        }
        out
    }

    /// Clients and generated code rely on these: one name per operation,
    /// a summary and a tag for the reference, the shared error body on every
    /// route, and the trailing slash every API path has.
    #[test]
    fn every_operation_is_named_tagged_summarized_and_has_its_errors() {
        let mut doc = openapi();
        let ops = operations(&mut doc);
        assert!(!ops.is_empty());
        let mut ids = BTreeSet::new();
        for (path, op) in &ops {
            let id = op.operation_id.clone().unwrap_or_default();
            assert!(ids.insert(id.clone()), "operationId {id:?} twice ({path})");
            assert!(
                op.tags.as_ref().is_some_and(|t| !t.is_empty()),
                "{path} {id}: no tag"
            );
            assert!(
                op.summary
                    .as_ref()
                    .is_some_and(|s| !s.trim().is_empty() && !s.contains('\n')),
                "{path} {id}: the summary must be one line (a doc comment's first line)"
            );
            assert!(
                op.responses.responses.contains_key("4XX"),
                "{path} {id}: list `Errors` in its responses"
            );
            for (status, r) in &op.responses.responses {
                if let RefOr::T(r) = r {
                    assert!(!r.description.is_empty(), "{path} {id} {status}");
                }
            }
            if path.starts_with("/api/") && path != "/api/openapi.json" {
                assert!(path.ends_with('/'), "{path}: API paths end with '/'");
            }
        }
    }

    #[test]
    fn the_document_is_openapi_3_1_json() {
        let v: serde_json::Value = serde_json::from_str(document()).unwrap();
        assert_eq!(v["openapi"], "3.1.0");
        assert!(v["paths"]["/api/status/"]["get"].is_object());
        assert!(v["components"]["schemas"]["ErrorBody"].is_object());
        assert!(v["components"]["securitySchemes"]["bearer"].is_object());
    }

    /// Routes are registered with `routes!` from their annotated handlers,
    /// so none can be served without being in the document. The console's
    /// static pages are the only plain routes.
    #[test]
    fn no_route_is_left_out_of_the_document() {
        let src = std::path::PathBuf::from(crate::testutil::crate_dir()).join("src");
        let mut plain = Vec::new();
        let mut stack = vec![src];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                    continue;
                }
                if p.extension().is_none_or(|x| x != "rs") || p.ends_with("console.rs") {
                    continue;
                }
                let text = std::fs::read_to_string(&p).unwrap();
                // Tests may build their own routers.
                let code = text.split("#[cfg(test)]").next().unwrap_or("");
                if code.contains(".route(") {
                    plain.push(p.display().to_string());
                }
            }
        }
        assert!(plain.is_empty(), "routes outside the document in {plain:?}");
    }
}
