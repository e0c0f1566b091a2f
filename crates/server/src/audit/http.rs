//! The audit log's route: `GET /api/audit/events/`.

use alpacon_api::audit as api;
use alpacon_api::Page;
use axum::extract::State;
use axum::http::Uri;
use serde_json::Value;
use sqlx::FromRow;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::{page_response, Bind, Json, Listing, PageParams, Query};
use crate::app::AppState;
use crate::auth::Caller;
use crate::db::rfc3339;
use crate::error::ApiError;
use crate::openapi::Errors;

use super::*;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_audit_events))
}

/// A row of `audit_events`, as listed.
#[derive(sqlx::FromRow)]
struct EventRow {
    id: String,
    ts: i64,
    action: String,
    result: String,
    actor_username: Option<String>,
    token_name: Option<String>,
    server_id: Option<String>,
    server_name: Option<String>,
    client_ip: Option<String>,
    detail: String,
    work_session_id: Option<String>,
}

impl From<EventRow> for api::AuditEvent {
    fn from(r: EventRow) -> Self {
        api::AuditEvent {
            id: r.id,
            timestamp: rfc3339(r.ts),
            action: r.action,
            result: r.result,
            user: r.actor_username,
            token: r.token_name,
            server: r.server_id,
            server_name: r.server_name,
            client_ip: r.client_ip,
            work_session: r.work_session_id,
            detail: serde_json::from_str::<Value>(&r.detail).unwrap_or(Value::String(r.detail)),
        }
    }
}

/// Audit events, newest first.
///
/// Admins see everyone's events; everyone else sees their own.
#[utoipa::path(get, path = "/api/audit/events/", tag = "audit",
    params(PageParams, api::AuditFilters),
    responses((status = 200, body = Page<api::AuditEvent>), Errors))]
async fn list_audit_events(
    State(st): State<AppState>,
    caller: Caller,
    Query(pp): Query<PageParams>,
    Query(f): Query<api::AuditFilters>,
    uri: Uri,
) -> Result<Json<Page<api::AuditEvent>>, ApiError> {
    let page = pp.page()?;
    let mut conds: Vec<String> = Vec::new();
    let mut args: Vec<String> = Vec::new();
    // Pushes a bind value and returns its placeholder.
    fn arg(v: String, args: &mut Vec<String>) -> String {
        args.push(v);
        format!("${}", args.len())
    }
    if !caller.is_admin() {
        // Everyone sees their own trail; admins see everyone's.
        let p = arg(caller.user_id.clone(), &mut args);
        conds.push(format!("actor_user_id = {p}"));
    }
    if let Some(a) = f.action.filter(|s| !s.is_empty()) {
        if let Some(prefix) = a.strip_suffix('*') {
            let p = arg(format!("{}%", escape_like(prefix)), &mut args);
            conds.push(format!("action LIKE {p} ESCAPE '\\'"));
        } else {
            let p = arg(a, &mut args);
            conds.push(format!("action = {p}"));
        }
    }
    if let Some(s) = f.server.filter(|s| !s.is_empty()) {
        let p = arg(s, &mut args);
        conds.push(format!("(server_id = {p} OR server_name = {p})"));
    }
    if let Some(u) = f.username.filter(|s| !s.is_empty()) {
        let p = arg(u, &mut args);
        conds.push(format!("actor_username = {p}"));
    }
    if let Some(w) = f.work_session.filter(|s| !s.is_empty()) {
        let p = arg(w, &mut args);
        conds.push(format!("work_session_id = {p}"));
    }
    let where_ = if conds.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conds.join(" AND "))
    };

    let (count, rows) = Listing {
        count_from: "audit_events",
        select: "SELECT id, ts, action, result, actor_username, token_name, server_id, server_name,
                client_ip, detail, work_session_id
         FROM audit_events",
        filter: &where_,
        order_by: "seq DESC",
        binds: args.iter().map(|a| Bind::Text(a)).collect(),
    }
    .fetch(&st.db, page)
    .await?;
    let results = rows
        .iter()
        .map(|r| EventRow::from_row(r).map(api::AuditEvent::from))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(page_response(count, results, page, &uri))
}
