//! The OpenAPI 3.1 document of the HTTP API, served at `/api/v1/openapi.json`.
//! A test checks that every route the router serves is documented here and
//! every documented route is served.

use serde_json::{json, Value};

/// Outgoing: what the service POSTs to each configured webhook receiver
/// (interfaces.md), as an OpenAPI 3.1 `webhooks` entry.
fn webhooks() -> Value {
    json!({
        "notification": {"post": {
                "summary": "An alert to a person. Header X-Mizuban-Signature: sha256=<lowercase hex HMAC-SHA256 of the exact body with the receiver's secret>; `id` is the idempotency key (a retry carries the same id, also sent as Idempotency-Key). Receivers with format slack/teams get a chat body instead.",
                "parameters": [{"name": "X-Mizuban-Signature", "in": "header", "required": true, "schema": {"type": "string", "pattern": "^sha256=[0-9a-f]{64}$"}}],
                "requestBody": {"required": true, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["id", "type", "sent_at", "recipient"],
                    "properties": {
                        "id": {"type": "string", "description": "n-…, the idempotency key"},
                        "type": {"enum": crate::notify::message::Kind::ALL.map(|k| k.as_str())},
                        "sent_at": {"type": "string", "format": "date-time"},
                        "alarm": {"$ref": "#/components/schemas/Alarm"},
                        "incident": {"type": "object", "properties": {"id": {"type": "string"}, "count": {"type": "integer"}, "alarms": {"type": "array", "items": {"$ref": "#/components/schemas/Alarm"}}}},
                        "recipient": {"type": "string"},
                        "recipient_name": {"type": "string"},
                        "language": {"enum": ["ja", "en"]},
                        "escalation_level": {"type": "integer", "minimum": 1},
                        "ack_url": {"type": "string", "description": "single use, expires (ack_expires_at)"},
                        "ack_code": {"type": "string", "description": "for POST /api/v1/ack-codes"},
                        "ack_expires_at": {"type": "string", "format": "date-time"},
                        "board_url": {"type": "string"},
                        "messages": {"type": "array", "description": "summary: the held messages"}
                    }}}}},
                "responses": {"200": {"description": "any 2xx: delivered; anything else or no answer: retried with backoff"}}
            }}
    })
}

/// `(method, path)` of every documented operation.
pub fn operations() -> Vec<(String, String)> {
    let doc = document();
    let mut v = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths object") {
        for method in item.as_object().expect("path item").keys() {
            v.push((method.to_uppercase(), path.clone()));
        }
    }
    v.sort();
    v
}

fn err(desc: &str) -> Value {
    json!({"description": desc, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

fn op(
    summary: &str,
    role: Option<&str>,
    params: Value,
    body: Option<Value>,
    ok: Value,
    errors: &[(&str, &str)],
) -> Value {
    let mut responses = serde_json::Map::new();
    responses.insert("200".into(), ok);
    if role.is_some() {
        responses.insert("401".into(), err("not authenticated"));
        responses.insert(
            "403".into(),
            err("role too low (or missing CSRF token on a cookie session)"),
        );
    }
    for (code, d) in errors {
        responses.insert((*code).into(), err(d));
    }
    // Any request can be malformed (an unreadable query string or body).
    responses
        .entry("400")
        .or_insert_with(|| err("malformed request: query string, path or body unreadable"));
    let mut o = json!({
        "summary": summary,
        "parameters": params,
        "responses": responses,
    });
    if let Some(r) = role {
        o["security"] = json!([{"bearer": []}, {"session": []}]);
        o["x-required-role"] = json!(r);
    }
    if let Some(b) = body {
        // A body with required fields is itself required (an empty one is refused).
        let required = b["required"].as_array().is_some_and(|r| !r.is_empty());
        o["requestBody"] = json!({"required": required, "content": {"application/json": {"schema": b}}});
    }
    o
}

fn ok_json(desc: &str, schema: Value) -> Value {
    json!({"description": desc, "content": {"application/json": {"schema": schema}}})
}

fn path_id(desc: &str) -> Value {
    json!([{"name": "id", "in": "path", "required": true, "schema": {"type": "string", "minLength": 1}, "description": desc}])
}

/// Free text the journal keeps: not blank, at most 1000 characters.
fn text(required_desc: &str) -> Value {
    json!({"type": "string", "minLength": 1, "maxLength": 1000, "pattern": "\\S", "description": required_desc})
}

/// A `limit` query parameter; the server refuses values outside 1..=max.
fn limit(max: u64) -> Value {
    json!({"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": max}})
}

/// An HTML page answer (the ack link pages) for `code`.
fn html(desc: &str) -> Value {
    json!({"description": desc, "content": {"text/html": {"schema": {"type": "string"}}}})
}

pub fn document() -> Value {
    let alarm = json!({"$ref": "#/components/schemas/Alarm"});
    let replay_view = json!({"type": "object", "required": ["id", "state", "progress", "from", "to"], "properties": {
        "id": {"type": "string"}, "state": {"enum": ["running", "done", "failed"]}, "progress": {"type": "number", "minimum": 0, "maximum": 1},
        "from": {"type": "string", "format": "date-time"}, "to": {"type": "string", "format": "date-time"},
        "error": {"type": ["string", "null"]}, "summary": {"type": ["object", "null"]}}});
    let alarm_cmd_errors: &[(&str, &str)] = &[
        ("400", "body is not JSON"),
        ("404", "no open alarm with that id"),
        ("409", "not possible in the alarm's state"),
        ("413", "body too large"),
        ("422", "body fields invalid"),
    ];
    let mut doc = json!({
        "openapi": "3.1.0",
        "info": {
            "title": "mizuban HTTP API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Alarm board, sites, history and journal of the mizuban master station. Times are RFC 3339 UTC. Errors are {\"error\": \"...\"}."
        },
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "Tokens from configuration, each with a role"},
                "session": {"type": "apiKey", "in": "cookie", "name": "mizuban_session", "description": "From POST /api/v1/login; state-changing requests must send X-CSRF-Token"}
            },
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
                "Alarm": {
                    "type": "object",
                    "required": ["id", "site", "source", "condition", "priority", "state", "raised_at", "detected_at", "cleared_at", "acked_at", "acked_by", "value", "message"],
                    "properties": {
                        "id": {"type": "string", "description": "stable for the life of this occurrence"},
                        "site": {"type": "string"}, "device": {"type": "string"},
                        "source": {"type": "string", "description": "point (B17.p) or device id"},
                        "condition": {"type": "string"},
                        "origin": {"enum": ["rule", "device", "comm"]},
                        "priority": {"enum": ["critical", "high", "medium", "low"]},
                        "state": {"enum": ["normal", "unack_active", "ack_active", "unack_rtn", "shelved", "suppressed", "out_of_service"]},
                        "active": {"type": "boolean"}, "acked": {"type": "boolean"},
                        "raised_at": {"type": "string", "format": "date-time", "description": "event time of the reading that raised it"},
                        "detected_at": {"type": "string", "format": "date-time", "description": "when mizuban processed it"},
                        "cleared_at": {"type": ["string", "null"], "format": "date-time"},
                        "acked_at": {"type": ["string", "null"], "format": "date-time"},
                        "acked_by": {"type": ["string", "null"]},
                        "ack_comment": {"type": ["string", "null"]},
                        "shelved_until": {"type": ["string", "null"], "format": "date-time"},
                        "shelve_reason": {"type": ["string", "null"]},
                        "suppressed_by": {"type": ["string", "null"]},
                        "value": {"type": ["number", "null"]}, "limit": {"type": ["number", "null"]},
                        "message": {"type": "string"}, "message_ja": {"type": "string"},
                        "late": {"type": "boolean", "description": "raised and cleared in data that arrived after the fact; for review, not paged as it happened (routing may send a brief)"},
                        "told": {"type": "boolean", "description": "a transition worth notifying was emitted for this occurrence; whether anyone was notified is `paged`"},
                        "paged": {"type": "boolean", "description": "a notification about this alarm (page, escalation, brief or summary) was delivered to someone; false while a message is pending, held or failed"},
                        "reactivations": {"type": "integer", "minimum": 0, "description": "times it became active again before anyone acknowledged it"}
                    }
                },
                "Site": {
                    "type": "object", "required": ["id", "kind", "name", "status", "last_seen"],
                    "properties": {
                        "id": {"type": "string"}, "kind": {"enum": ["dma", "pump_station"]}, "name": {"type": "string"},
                        "status": {"enum": ["ok", "alarm", "comm_loss", "out_of_service"]},
                        "last_seen": {"type": ["string", "null"], "format": "date-time"},
                        "values": {"type": "object"}
                    }
                },
                "Reading": {"type": "object", "required": ["t", "value", "quality"], "properties": {
                    "t": {"type": "string", "format": "date-time"}, "value": {"type": ["number", "null"]},
                    "quality": {"enum": ["good", "uncertain", "bad"]}, "arrived": {"type": "string", "format": "date-time"}}},
                "Rollup": {"type": "object", "description": "the good and uncertain values whose event time falls in the bucket starting at `t`",
                    "required": ["t", "value", "min", "max", "count"], "properties": {
                    "t": {"type": "string", "format": "date-time"}, "value": {"type": "number", "description": "mean"},
                    "min": {"type": "number"}, "max": {"type": "number"}, "count": {"type": "integer", "minimum": 1}}}
            }
        },
        "paths": {
            "/": {"get": op("The alarm board (HTML)", None, json!([]), None, json!({"description": "HTML page"}), &[])},
            "/assets/{name}": {"get": op("The board's script and style (board.js, board.css, ack.css)", None,
                json!([{"name": "name", "in": "path", "required": true, "schema": {"enum": ["board.js", "board.css", "ack.css"]}}]), None,
                json!({"description": "JavaScript or CSS", "content": {"text/javascript": {}, "text/css": {}}}), &[("404", "no such asset")])},
            "/metrics": {"get": op("Prometheus metrics", None, json!([]), None, json!({"description": "Prometheus text format", "content": {"text/plain": {}}}), &[])},
            "/api/v1/health": {"get": op("Service health", None, json!([]), None,
                ok_json("running", json!({"type": "object", "properties": {"status": {"type": "string"}, "reasons": {"type": "array"}, "ingest_lag_s": {"type": "number", "description": "arrival minus the device's sent_at of the latest message that had one: the broker's and mizuban's delay (never makes data late)"}}})),
                &[("503", "a collector or the store is down; reasons says which")])},
            "/api/v1/openapi.json": {"get": op("This document", Some("viewer"), json!([]), None, ok_json("OpenAPI", json!({"type": "object"})), &[])},
            "/api/v1/login": {"post": op("Log in (sets the session cookie)", None, json!([]),
                Some(json!({"type": "object", "additionalProperties": false, "required": ["user", "password"], "properties": {"user": {"type": "string", "maxLength": 256}, "password": {"type": "string", "maxLength": 1024}}})),
                ok_json("logged in; csrf is the token to echo in X-CSRF-Token", json!({"type": "object"})),
                &[("400", "body is not JSON, or name or password too long"), ("401", "wrong user or password"), ("422", "fields missing"), ("429", "too many failed logins from this client for this name; see Retry-After")])},
            "/api/v1/logout": {"post": op("Log out", None, json!([]), None, ok_json("logged out", json!({"type": "object"})), &[])},
            "/api/v1/session": {"get": op("Who am I", Some("viewer"), json!([]), None, ok_json("caller", json!({"type": "object"})), &[])},
            "/api/v1/sites": {"get": op("All sites with status", Some("viewer"), json!([]), None, ok_json("sites", json!({"type": "array", "items": {"$ref": "#/components/schemas/Site"}})), &[])},
            "/api/v1/sites/{id}": {"get": op("One site: configuration, status, open alarms, points, latest raw message", Some("viewer"), path_id("site id"), None, ok_json("site", json!({"type": "object"})), &[("404", "no such site")])},
            "/api/v1/sites/{id}/commands": {"post": op("Device command to a Modbus controller (alarm_reset, p1_inhibit, p2_inhibit, remote_pump_down), confirmed by read-back and journaled", Some("engineer"), path_id("site id"),
                Some(json!({"type": "object", "additionalProperties": false, "required": ["command", "reason"], "properties": {"command": {"enum": ["alarm_reset", "p1_inhibit", "p2_inhibit", "remote_pump_down"]}, "value": {"type": ["boolean", "null"], "description": "for inhibits: true inhibits, false releases"}, "reason": text("why, for the journal")}})),
                ok_json("confirmed", json!({"type": "object"})),
                &[("404", "no such site"), ("409", "not a Modbus site, refused by the controller, or not confirmed"), ("422", "unknown command or no reason"), ("503", "controller unreachable")])},
            "/api/v1/alarms": {"get": op("Alarms operators must see, highest priority first, then newest", Some("viewer"), json!([
                    {"name": "state", "in": "query", "schema": {"type": "string", "pattern": "^(normal|unack_active|ack_active|unack_rtn|shelved|suppressed|out_of_service)(,(normal|unack_active|ack_active|unack_rtn|shelved|suppressed|out_of_service))*$"}, "description": "comma-separated states"},
                    {"name": "site", "in": "query", "schema": {"type": "string"}},
                    {"name": "all", "in": "query", "schema": {"type": "boolean"}, "description": "add the rest, including recently closed occurrences"}]),
                None, ok_json("alarms", json!({"type": "array", "items": alarm})), &[("400", "unknown state")])},
            "/api/v1/alarms/{id}": {"get": op("One alarm occurrence", Some("viewer"), path_id("alarm id"), None, ok_json("alarm", alarm.clone()), &[("404", "unknown id")])},
            "/api/v1/alarms/{id}/journal": {"get": op("Every transition of one occurrence: when, who, why", Some("viewer"), path_id("alarm id"), None, ok_json("journal rows, newest first", json!({"type": "array"})), &[("404", "unknown id")])},
            "/api/v1/alarms/{id}/ack": {"post": op("Acknowledge", Some("operator"), path_id("alarm id"),
                Some(json!({"type": "object", "additionalProperties": false, "properties": {"comment": {"type": ["string", "null"], "maxLength": 1000}}})), ok_json("updated alarm", alarm.clone()), alarm_cmd_errors)},
            "/api/v1/alarms/{id}/shelve": {"post": op("Shelve for a time; expires by itself", Some("operator"), path_id("alarm id"),
                Some(json!({"type": "object", "additionalProperties": false, "required": ["minutes", "reason"], "properties": {"minutes": {"type": "integer", "minimum": 1, "maximum": 10080}, "reason": text("why, for the journal")}})),
                ok_json("updated alarm", alarm.clone()), alarm_cmd_errors)},
            "/api/v1/alarms/{id}/unshelve": {"post": op("End a shelve now", Some("operator"), path_id("alarm id"), None, ok_json("updated alarm", alarm.clone()), alarm_cmd_errors)},
            "/api/v1/alarms/{id}/out_of_service": {"post": op("Take out of service", Some("engineer"), path_id("alarm id"),
                Some(json!({"type": "object", "additionalProperties": false, "required": ["reason"], "properties": {"reason": text("why, for the journal")}})), ok_json("updated alarm", alarm.clone()), alarm_cmd_errors)},
            "/api/v1/alarms/{id}/return_to_service": {"post": op("Return to service", Some("engineer"), path_id("alarm id"),
                Some(json!({"type": "object", "additionalProperties": false, "required": ["reason"], "properties": {"reason": text("why, for the journal")}})), ok_json("updated alarm", alarm.clone()), alarm_cmd_errors)},
            "/api/v1/points/{id}/readings": {"get": op("History of one point (`{site}.{point}`)", Some("viewer"), json!([
                    {"name": "id", "in": "path", "required": true, "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]+\\.[A-Za-z0-9._-]+$"}, "example": "B17.p"},
                    {"name": "from", "in": "query", "schema": {"type": "string", "format": "date-time"}, "description": "default: 24 h before to"},
                    {"name": "to", "in": "query", "schema": {"type": "string", "format": "date-time"}, "description": "default: now"},
                    {"name": "resolution", "in": "query", "schema": {"enum": ["raw", "1m", "1h"]}, "description": "raw readings (default), or 1-minute / 1-hour rollups (mean as `value`, with min, max and count) of the buckets that overlap the span"},
                    limit(100_000)]),
                None, {
                    let mut ok = ok_json("readings (or rollup buckets) in event-time order, at most `limit`; when the span holds more, a `Link` header names the next page", json!({"type": "array", "items": {"oneOf": [{"$ref": "#/components/schemas/Reading"}, {"$ref": "#/components/schemas/Rollup"}]}}));
                    ok["headers"] = json!({"Link": {"description": "`<…/readings?from=…&to=…&limit=…[&resolution=…]>; rel=\"next\"` when more follow in the span (RFC 8288); absent on the last page", "schema": {"type": "string"}}});
                    ok
                }, &[("400", "bad point id or time"), ("404", "no such site or point")])},
            "/api/v1/journal": {"get": op("Alarm journal, newest first", Some("viewer"), json!([
                    {"name": "site", "in": "query", "schema": {"type": "string"}},
                    {"name": "condition", "in": "query", "schema": {"type": "string"}},
                    {"name": "priority", "in": "query", "schema": {"enum": ["critical", "high", "medium", "low"]}},
                    {"name": "alarm", "in": "query", "schema": {"type": "string"}},
                    {"name": "from", "in": "query", "schema": {"type": "string", "format": "date-time"}},
                    {"name": "to", "in": "query", "schema": {"type": "string", "format": "date-time"}},
                    limit(10_000),
                    {"name": "format", "in": "query", "schema": {"enum": ["json", "csv"]}, "description": "csv: a spreadsheet download (UTF-8 with BOM)"}]),
                None, json!({"description": "journal rows", "content": {"application/json": {"schema": {"type": "array"}}, "text/csv": {}}}), &[("400", "bad time, priority or format")])},
            "/api/v1/kpis": {"get": op("Alarm-management KPIs (ISA-18.2 / EEMUA 191) over a span, default the last 24 h: annunciations per hour and per 10 minutes, flood periods (more than 10 in 10 minutes) and time in flood, chattering alarms (3 or more in 60 s), stale alarms (active more than 24 h), the ten worst actors with their share, priority distribution against the 80/15/5 guide, time to acknowledge, pages per on-call person per night (17:00-09:00 local)", Some("viewer"), json!([
                    {"name": "from", "in": "query", "schema": {"type": "string", "format": "date-time"}},
                    {"name": "to", "in": "query", "schema": {"type": "string", "format": "date-time"}}]),
                None, ok_json("KPIs", json!({"type": "object", "required": ["from", "to", "annunciations", "per_hour_mean", "per_10min_peak", "flood_periods", "time_in_flood_pct", "chattering", "stale", "bad_actors", "priorities", "pages_per_night"],
                    "properties": {"annunciations": {"type": "integer"}, "per_hour_mean": {"type": "number"}, "per_10min_peak": {"type": "integer"}, "flood_periods": {"type": "integer"}, "time_in_flood_pct": {"type": "number"}, "stale": {"type": "integer"},
                        "chattering": {"type": "array"}, "bad_actors": {"type": "array"}, "priorities": {"type": "array"}, "pages_per_night": {"type": "array"}, "ack_median_s": {"type": ["number", "null"]}}})),
                &[("400", "a time that does not parse")])},
            "/api/v1/replays": {
                "get": op("Replays started from the board (the last few, newest first; kept in memory)", Some("engineer"), json!([]),
                    None, ok_json("replays", json!({"type": "array"})), &[]),
                "post": op("Start a replay of the service's own record for a span, optionally beside a candidate rules file (its TOML text); one at a time. Poll the replay for progress", Some("engineer"), json!([]),
                    Some(json!({"type": "object", "additionalProperties": false, "required": ["from", "to"], "properties": {
                        "from": {"type": "string", "format": "date-time"}, "to": {"type": "string", "format": "date-time"},
                        "candidate_rules": {"type": ["string", "null"], "maxLength": 60000}}})),
                    json!({"description": "started", "content": {"application/json": {"schema": replay_view.clone()}}}),
                    &[("400", "from not before to"), ("409", "a replay is running"), ("422", "the candidate rules do not load")])},
            "/api/v1/replays/{id}": {"get": op("One replay: state (running, done, failed), progress 0..1, summary when done", Some("engineer"),
                path_id("replay id"), None, json!({"description": "the replay", "content": {"application/json": {"schema": replay_view}}}), &[("404", "unknown replay")])},
            "/api/v1/replays/{id}/result": {"get": op("A finished replay's JSON (as `mizuban replay --json` writes it)", Some("engineer"),
                path_id("replay id"), None, ok_json("the replay's output", json!({"type": "object"})), &[("404", "unknown replay"), ("409", "still running, or failed")])},
            "/api/v1/replays/{id}/report": {"get": op("A finished replay's report: one self-contained HTML page", Some("engineer"),
                path_id("replay id"), None, html("HTML page"), &[("404", "unknown replay"), ("409", "still running, or failed")])},
            "/api/v1/quarantine": {"get": op("Rejected messages, newest first (bounded)", Some("viewer"), json!([limit(10_000)]),
                None, ok_json("entries", json!({"type": "array"})), &[])},
            "/api/v1/events": {"get": op("Server-sent events: `snapshot` of open alarms, then one `alarm` event per transition; `resync` if the client fell behind. Browsers may pass ?token=", Some("viewer"),
                json!([{"name": "token", "in": "query", "schema": {"type": "string"}}]), None, json!({"description": "text/event-stream", "content": {"text/event-stream": {}}}), &[])},
            "/ack/{token}": {
                "get": op("Page for an acknowledge link from an alert (e-mail, chat): shows the alarms and a button; looking does not acknowledge", None,
                    json!([{"name": "token", "in": "path", "required": true, "schema": {"type": "string"}}]), None,
                    html("HTML page"), &[("404", "unknown link")]),
                "post": op("Acknowledge every alarm of the alert's incident as the person it was sent to (single use, expires); form field `comment` optional", None,
                    json!([{"name": "token", "in": "path", "required": true, "schema": {"type": "string"}}]), None,
                    html("HTML page"), &[("404", "unknown link"), ("409", "expired or already used")])},
            "/api/v1/ack-codes": {"post": op("Acknowledge with the short code from an alert, as the person it was sent to (for SMS/phone gateways)", Some("operator"), json!([]),
                Some(json!({"type": "object", "additionalProperties": false, "required": ["code"], "properties": {"code": {"type": "string", "minLength": 1, "pattern": "\\S"}, "comment": {"type": ["string", "null"], "maxLength": 1000}}})),
                ok_json("alarms acknowledged", json!({"type": "object", "properties": {"acknowledged": {"type": "array", "items": alarm}}})),
                &[("404", "unknown code, or notifications not configured"), ("409", "expired or already used"), ("422", "no code")])},
            "/api/v1/alarms/{id}/notifications": {"get": op("Who was told about this alarm: type, person, channel, escalation level, created, state (pending, sent, failed, held, summarized), attempts, last error", Some("viewer"),
                path_id("alarm id"), None, ok_json("outbox rows, oldest first", json!({"type": "array"})), &[])},
            "/api/v1/notifications": {"get": op("The notification outbox, newest first", Some("viewer"),
                json!([{"name": "state", "in": "query", "schema": {"enum": ["pending", "sent", "failed", "held", "summarized"]}}, limit(5_000)]),
                None, ok_json("outbox rows", json!({"type": "array"})), &[("400", "unknown state"), ("404", "notifications not configured")])},
            "/api/v1/oncall": {"get": op("Who is on call now, per team (rotation and overrides)", Some("viewer"), json!([]),
                None, ok_json("teams", json!({"type": "array", "items": {"type": "object", "properties": {"team": {"type": "string"}, "person": {"type": "string"}}}})), &[("404", "notifications not configured")])}
        }
    });
    // The ack link pages answer in HTML whatever happens (a phone opened them).
    for m in ["get", "post"] {
        if let Some(rs) = doc["paths"]["/ack/{token}"][m]["responses"].as_object_mut() {
            for (code, r) in rs.iter_mut() {
                let d = r["description"].as_str().unwrap_or("").to_string();
                if code != "200" {
                    *r = html(&d);
                }
            }
        }
    }
    doc["webhooks"] = webhooks();
    doc
}
