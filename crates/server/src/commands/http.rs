//! The commands routes: submit, list, read and follow a command's output.

use std::time::Duration;

use alpacon_api::commands as api;
use alpacon_api::Page;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use sqlx::FromRow;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::live::CHUNK;
use super::store::{self, CommandRow};
use super::{submit, visible, IDEMPOTENCY_HEADER};
use crate::api::{page_response, Bind, Json, Listing, PageParams, Path, Query};
use crate::app::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::openapi::Errors;
use crate::servers;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_commands, create_command))
        .routes(routes!(get_command))
        .routes(routes!(stream_command))
}

/// Runs a command on a server.
///
/// The command is stored first (`queued`), sent to the server's agent when
/// its link is up (`sent`, again on every reconnection until a result
/// arrives) and finished when the agent's result is committed. Follow its
/// output with `…/stream/`. The gate applies: the caller's reach, work
/// session, account rule and the token's access lists; a refused line is
/// audited and never stored. With an `Idempotency-Key`, a second
/// submission answers 200 with the first command (`Idempotent-Replayed:
/// true`); the same key for another command is refused
/// (`idempotency_key_reused`).
#[utoipa::path(post, path = "/api/events/commands/", tag = "commands",
    params(("Idempotency-Key" = Option<String>, Header,
        description = "1 to 255 visible ASCII characters (a UUID is a good choice), \
            per person: makes the submission safe to retry")),
    request_body = api::CreateCommand,
    responses(
        (status = 201, description = "Submitted", body = api::Command),
        (status = 200, description = "Submitted before with this Idempotency-Key: that command",
            body = api::Command,
            headers(("Idempotent-Replayed" = String, description = "`true`"))),
        Errors))]
async fn create_command(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Json(body): Json<api::CreateCommand>,
) -> Result<Response, ApiError> {
    let key = headers.get(IDEMPOTENCY_HEADER).map(HeaderValue::as_bytes);
    let s = submit(&state, &caller, body, key).await?;
    if s.replayed {
        let mut resp = Json(s.command).into_response();
        resp.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
        return Ok(resp);
    }
    Ok((StatusCode::CREATED, Json(s.command)).into_response())
}

/// One command and its result.
///
/// Admins see every command, others their own; a token with an access
/// list only those it ran itself.
#[utoipa::path(get, path = "/api/events/commands/{id}/", tag = "commands",
    params(("id" = String, Path, description = "The command's id")),
    responses((status = 200, body = api::Command), Errors))]
async fn get_command(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<api::Command>, ApiError> {
    Ok(Json(visible(&state, &caller, &id).await?.into()))
}

/// Commands, newest first.
///
/// Admins see every command, others their own; a token with an access
/// list only those it ran itself.
#[utoipa::path(get, path = "/api/events/commands/", tag = "commands",
    params(PageParams, api::CommandFilters),
    responses((status = 200, body = Page<api::Command>), Errors))]
async fn list_commands(
    State(state): State<AppState>,
    caller: Caller,
    uri: Uri,
    Query(pp): Query<PageParams>,
    Query(q): Query<api::CommandFilters>,
) -> Result<Json<Page<api::Command>>, ApiError> {
    let page = pp.page()?;
    let server_id = match &q.server {
        Some(s) => Some(
            servers::resolve_for(&state, &caller, s, "command.list")
                .await?
                .id,
        ),
        None => None,
    };
    let viewer = crate::acl::viewer(&state, &caller).await?;
    let (mine, token) = viewer.filter();
    let filter = "WHERE ($1 IS NULL OR c.server_id = $1) AND ($2 IS NULL OR c.status = $2)
                  AND ($3 IS NULL OR c.requested_by = $3) AND ($4 IS NULL OR c.token_id = $4)";
    let (count, rows) = Listing {
        count_from: "commands c",
        select: store::SELECT,
        filter,
        order_by: "c.created_at DESC, c.id DESC",
        binds: vec![
            Bind::OptText(server_id.as_deref()),
            Bind::OptText(q.status.as_deref()),
            Bind::OptText(mine),
            Bind::OptText(token),
        ],
    }
    .fetch(&state.db, page)
    .await?;
    let results = rows
        .iter()
        .map(|r| CommandRow::from_row(r).map(api::Command::from))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(page_response(count, results, page, &uri))
}

/// A command's output as it runs, then its result (NDJSON).
///
/// Output lines carry base64 chunks from byte `offset` on; the last line is
/// the finished command. A reader that loses the connection (or outlives a
/// gateway restart) reconnects with the offset it has and misses nothing.
#[utoipa::path(get, path = "/api/events/commands/{id}/stream/", tag = "commands",
    params(("id" = String, Path, description = "The command's id"), api::CommandStreamQuery),
    responses((status = 200, description = "One JSON object per line",
        body = api::CommandStreamLine, content_type = "application/x-ndjson"), Errors))]
async fn stream_command(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<api::CommandStreamQuery>,
) -> Result<Response, ApiError> {
    visible(&state, &caller, &id).await?;
    let follow = Follow {
        state,
        id,
        offset: q.offset.unwrap_or(0),
        done: false,
    };
    let body = futures_util::stream::unfold(follow, |mut f| async move {
        if f.done {
            return None;
        }
        let item = f.next_line().await;
        Some((item, f))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .header(header::CACHE_CONTROL, "no-store")
        .body(Body::from_stream(body))
        .map_err(ApiError::internal)
}

struct Follow {
    state: AppState,
    id: String,
    offset: u64,
    done: bool,
}

fn ndjson(line: &api::CommandStreamLine) -> Bytes {
    let mut s = serde_json::to_string(line).unwrap_or_default();
    s.push('\n');
    Bytes::from(s)
}

fn output_line(offset: u64, data: &[u8]) -> Bytes {
    ndjson(&api::CommandStreamLine::Output {
        offset,
        data: STANDARD.encode(data),
    })
}

impl Follow {
    async fn next_line(&mut self) -> Result<Bytes, std::io::Error> {
        loop {
            // Live output first, while the command runs.
            if let Some(entry) = self.state.relay.live.get(&self.id) {
                let notified = entry.notify.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let (chunk, finished) = {
                    let b = entry.lock();
                    (b.read_from(self.offset), b.finished)
                };
                if let Some(chunk) = chunk {
                    let line = output_line(self.offset, &chunk);
                    self.offset += chunk.len() as u64;
                    return Ok(line);
                }
                if !finished {
                    // Wake on new output or the result; poll the database now
                    // and then in case the result came through another node.
                    let _ = tokio::time::timeout(Duration::from_secs(2), notified).await;
                    if !self.finished_in_db().await? {
                        continue;
                    }
                }
            }
            let cmd = store::fetch(&self.state, &self.id)
                .await
                .map_err(|e| std::io::Error::other(e.detail))?
                .ok_or_else(|| std::io::Error::other("command vanished"))?;
            if !cmd.status.is_done() {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            // Finished: the stored output is the whole truth.
            let output = cmd.output.as_deref().unwrap_or_default();
            let start = (self.offset as usize).min(output.len());
            if start < output.len() {
                let end = (start + CHUNK).min(output.len());
                let line = output_line(self.offset, &output[start..end]);
                self.offset += (end - start) as u64;
                return Ok(line);
            }
            self.done = true;
            return Ok(ndjson(&api::CommandStreamLine::Result {
                command: Box::new(cmd.into()),
            }));
        }
    }

    async fn finished_in_db(&self) -> Result<bool, std::io::Error> {
        let status: Option<String> =
            sqlx::query_scalar("SELECT status FROM commands WHERE id = $1")
                .bind(&self.id)
                .fetch_optional(&self.state.db.pool)
                .await
                .map_err(std::io::Error::other)?;
        Ok(matches!(
            status.as_deref(),
            Some("finished" | "error") | None
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TestApp;
    use axum::http::{Method, Request};
    use serde_json::{json, Value};

    async fn submit(
        app: &TestApp,
        key: &str,
        idem: Option<&str>,
        body: Value,
    ) -> (StatusCode, Value) {
        let mut b = Request::builder()
            .method(Method::POST)
            .uri("/api/events/commands/")
            .header(header::AUTHORIZATION, format!("Token {key}"))
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(k) = idem {
            b = b.header(IDEMPOTENCY_HEADER, k);
        }
        app.send(b.body(Body::from(body.to_string())).unwrap())
            .await
    }

    async fn count(app: &TestApp, sql: &str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(&app.state.db.pool)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_retried_submission_with_its_key_runs_once() {
        let app = TestApp::new().await;
        let admin = app.admin_key().await;
        app.add_server("web-1", 1).await;
        let body = json!({"server": "web-1", "line": "echo once", "username": "root"});
        let (s1, v1) = submit(&app, &admin, Some("k-1"), body.clone()).await;
        assert_eq!(s1, StatusCode::CREATED, "{v1}");
        // The client lost the answer and retries: the same command.
        let (s2, v2) = submit(&app, &admin, Some("k-1"), body.clone()).await;
        assert_eq!(s2, StatusCode::OK, "{v2}");
        assert_eq!(v1["id"], v2["id"]);
        // Concurrent retries too.
        let racing = (0..8).map(|_| submit(&app, &admin, Some("k-2"), body.clone()));
        let answers = futures_util::future::join_all(racing).await;
        let ids: std::collections::HashSet<String> = answers
            .iter()
            .map(|(s, v)| {
                assert!(s.is_success(), "{s} {v}");
                v["id"].as_str().unwrap().to_string()
            })
            .collect();
        assert_eq!(ids.len(), 1, "{answers:?}");
        assert_eq!(count(&app, "SELECT COUNT(*) FROM commands").await, 2);
        assert_eq!(
            count(
                &app,
                "SELECT COUNT(*) FROM audit_events WHERE action = 'command.run'"
            )
            .await,
            2
        );
        // The same key for another command is a client bug, said clearly.
        let other = json!({"server": "web-1", "line": "echo twice", "username": "root"});
        let (s, v) = submit(&app, &admin, Some("k-1"), other).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
        assert_eq!(v["code"], "idempotency_key_reused");
        // Without a key every submission is a new command; a bad key is refused.
        submit(&app, &admin, None, body.clone()).await;
        submit(&app, &admin, None, body.clone()).await;
        assert_eq!(count(&app, "SELECT COUNT(*) FROM commands").await, 4);
        let (s, v) = submit(&app, &admin, Some("has space"), body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    }

    /// The command object and the NDJSON stream, field by field.
    #[tokio::test]
    async fn a_finished_command_reads_and_streams_as_before() {
        let app = TestApp::new().await;
        let admin = app.admin_key().await;
        let sid = app.add_server("web-1", 1).await;
        let body = json!({"server": "web-1", "line": "echo hi", "username": "root",
                          "env": {"B": "2", "A": "1"}});
        let (s, v) = submit(&app, &admin, None, body).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let id = v["id"].as_str().unwrap().to_string();
        let keys = |v: &Value| {
            let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
            k.sort();
            k
        };
        let all = [
            "added_at",
            "delivered_at",
            "elapsed_ms",
            "env",
            "error",
            "exit_code",
            "finished_at",
            "groupname",
            "id",
            "line",
            "output",
            "output_truncated",
            "requested_by",
            "server",
            "server_name",
            "status",
            "username",
        ];
        assert_eq!(keys(&v), all);
        assert_eq!(v["status"], "queued");
        assert_eq!(v["output"], Value::Null);
        assert_eq!(v["env"], json!({"A": "1", "B": "2"}));
        assert_eq!(v["requested_by"], "admin");
        assert_eq!(v["server"], sid.as_str());
        assert_eq!(v["server_name"], "web-1");
        super::super::store_result(
            &app.state,
            &sid,
            alpacon_proto::CommandResult {
                id: id.clone(),
                exit_code: 3,
                elapsed_ms: 12,
                output: b"hi\n".to_vec(),
                truncated: false,
                error: None,
            },
        )
        .await
        .unwrap();
        let path = format!("/api/events/commands/{id}/");
        let (s, v) = app.call(Method::GET, &path, Some(&admin), None).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(keys(&v), all);
        assert_eq!(
            (
                &v["status"],
                &v["exit_code"],
                &v["elapsed_ms"],
                &v["output"],
                &v["error"]
            ),
            (
                &json!("finished"),
                &json!(3),
                &json!(12),
                &json!("hi\n"),
                &Value::Null
            )
        );
        assert!(v["finished_at"].as_str().unwrap().ends_with('Z'), "{v}");
        let (s, lines) = app
            .call(
                Method::GET,
                &format!("{path}stream/?offset=1"),
                Some(&admin),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK);
        let lines: Vec<Value> = lines
            .as_str()
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(
            lines[0],
            json!({"type": "output", "offset": 1, "data": STANDARD.encode(b"i\n")})
        );
        assert_eq!(lines[1]["type"], "result");
        assert_eq!(lines[1]["command"], v);
        // A command the agent could not run carries its error.
        let (_, v) = submit(
            &app,
            &admin,
            None,
            json!({"server": "web-1", "line": "x", "username": "root"}),
        )
        .await;
        let id = v["id"].as_str().unwrap().to_string();
        let error =
            alpacon_proto::StreamError::new(alpacon_proto::ErrorCode::NoSuchUser, "no user");
        super::super::store_result(
            &app.state,
            &sid,
            alpacon_proto::CommandResult {
                id: id.clone(),
                exit_code: -1,
                elapsed_ms: 0,
                output: Vec::new(),
                truncated: false,
                error: Some(error),
            },
        )
        .await
        .unwrap();
        let (_, v) = app
            .call(
                Method::GET,
                &format!("/api/events/commands/{id}/"),
                Some(&admin),
                None,
            )
            .await;
        assert_eq!(v["status"], "error");
        assert_eq!(
            v["error"],
            json!({"code": "no_such_user", "detail": "no user"})
        );
        assert_eq!(v["output"], "");
    }

    #[tokio::test]
    async fn a_member_cannot_tell_a_hidden_server_from_a_missing_one() {
        let app = TestApp::new().await;
        app.add_server("secret-db", 1).await;
        let mine = app.add_server("web-1", 2).await;
        let alice = app.user_key("alice").await;
        app.reach("alice", &mine).await;
        let mut answers = Vec::new();
        for name in ["secret-db", "no-such-server"] {
            for path in ["/api/events/commands/", "/api/websh/sessions/"] {
                let (s, v) = app
                    .call(
                        Method::GET,
                        &format!("{path}?server={name}"),
                        Some(&alice),
                        None,
                    )
                    .await;
                let detail = v["detail"].as_str().unwrap_or("").replace(name, "NAME");
                answers.push((path, s, v["code"].clone(), detail));
            }
        }
        assert_eq!(answers[0..2], answers[2..4], "{answers:?}");
        assert_eq!(answers[0].1, StatusCode::NOT_FOUND);
        // Their own trail holds the refusals, without the hidden server's id.
        let leaked = count(
            &app,
            "SELECT COUNT(*) FROM audit_events WHERE server_id IS NOT NULL AND result = 'error'",
        )
        .await;
        assert_eq!(leaked, 0);
        let (s, _) = app
            .call(
                Method::GET,
                "/api/events/commands/?server=web-1",
                Some(&alice),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK);
    }

    #[tokio::test]
    async fn a_restricted_token_reads_only_the_commands_it_ran() {
        let app = TestApp::new().await;
        let admin = app.admin_key().await;
        app.add_server("web-1", 1).await;
        app.add_server("db-1", 2).await;
        let body = json!({"server": "db-1", "line": "head /etc/shadow", "username": "root"});
        let (s, secret) = submit(&app, &admin, None, body).await;
        assert_eq!(s, StatusCode::CREATED, "{secret}");
        let (_, t) = app
            .call(
                Method::POST,
                "/api/auth/tokens/",
                Some(&admin),
                Some(json!({"name": "ci"})),
            )
            .await;
        let token = t["key"].as_str().unwrap().to_string();
        let own = json!({"server": "web-1", "line": "uptime", "username": "root"});
        let (s, mine) = submit(&app, &token, None, own).await;
        assert_eq!(s, StatusCode::CREATED, "{mine}");
        let (s, v) = app
            .call(
                Method::POST,
                "/api/security/server-acl/",
                Some(&admin),
                Some(json!({"token": "ci", "server": "web-1"})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let detail = |id: &Value| format!("/api/events/commands/{}/", id.as_str().unwrap());
        let (s, _) = app
            .call(Method::GET, &detail(&secret["id"]), Some(&token), None)
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (s, _) = app
            .call(
                Method::GET,
                &format!("{}stream/", detail(&secret["id"])),
                Some(&token),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (s, _) = app
            .call(Method::GET, &detail(&mine["id"]), Some(&token), None)
            .await;
        assert_eq!(s, StatusCode::OK);
        let (_, v) = app
            .call(Method::GET, "/api/events/commands/", Some(&token), None)
            .await;
        assert_eq!(v["count"], 1, "{v}");
        // The person's own session still reads everything of theirs.
        let (s, _) = app
            .call(Method::GET, &detail(&secret["id"]), Some(&admin), None)
            .await;
        assert_eq!(s, StatusCode::OK);
    }

    #[tokio::test]
    async fn no_command_exists_without_its_audit_event() {
        let app = TestApp::new().await;
        let admin = app.admin_key().await;
        app.add_server("web-1", 1).await;
        // The audit write fails (as if the gateway died between the two).
        sqlx::query(
            "CREATE TRIGGER no_audit BEFORE INSERT ON audit_events
             WHEN NEW.action = 'command.run'
             BEGIN SELECT RAISE(ABORT, 'audit unavailable'); END",
        )
        .execute(&app.state.db.pool)
        .await
        .unwrap();
        let body = json!({"server": "web-1", "line": "echo x", "username": "root"});
        let (s, _) = submit(&app, &admin, None, body).await;
        assert!(s.is_server_error(), "{s}");
        assert_eq!(count(&app, "SELECT COUNT(*) FROM commands").await, 0);
    }

    #[tokio::test]
    async fn members_act_only_with_their_own_groups_and_audited_when_refused() {
        let app = TestApp::new().await;
        let admin = app.admin_key().await;
        let sid = app.add_server("web-1", 1).await;
        let alice = app.user_key("alice").await;
        // alice reaches web-1 through ops.
        let (s, v) = app
            .call(
                Method::POST,
                "/api/iam/groups/",
                Some(&admin),
                Some(json!({"name": "ops"})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        for (path, b) in [
            ("/api/iam/groups/ops/servers/", json!({"server": sid})),
            (
                "/api/iam/memberships/",
                json!({"group": "ops", "user": "alice"}),
            ),
        ] {
            let (s, v) = app.call(Method::POST, path, Some(&admin), Some(b)).await;
            assert!(s.is_success(), "{path}: {s} {v}");
        }
        let run = |group: Option<&str>| {
            let mut b = json!({"server": "web-1", "line": "id; head /etc/shadow"});
            if let Some(g) = group {
                b["groupname"] = json!(g);
            }
            b
        };
        for bad in ["shadow", "root", "docker"] {
            let (s, v) = submit(&app, &alice, None, run(Some(bad))).await;
            assert_eq!(s, StatusCode::FORBIDDEN, "{bad}: {v}");
            assert_eq!(v["code"], "group_not_allowed");
        }
        for good in [None, Some("alice"), Some("ops")] {
            let (s, v) = submit(&app, &alice, None, run(good)).await;
            assert_eq!(s, StatusCode::CREATED, "{good:?}: {v}");
        }
        assert_eq!(
            count(
                &app,
                "SELECT COUNT(*) FROM audit_events WHERE action = 'command.run' AND result = 'error'
                 AND detail LIKE '%group_not_allowed%'"
            )
            .await,
            3
        );
        assert_eq!(count(&app, "SELECT COUNT(*) FROM commands").await, 3);
    }
}
