//! The public HTTP API as scripts and browsers use it: every route x role,
//! JSON errors, the event stream, shelving that expires by itself, sessions
//! with CSRF, and the OpenAPI document kept in step with the router.

mod common;
use chrono::Duration;
use common::*;
use mizuban_sim::Scenario;
use reqwest::Method;
use serde_json::{json, Value};

/// A harness with one open alarm (HH_LEVEL and friends at MP-0061).
async fn with_alarm(name: &str) -> (Harness, mizuban_sim::Handle, String) {
    let h = Harness::start(name, &[mps("MP-0061", "AKT-MPN-0061"), dma("B01", "AKT-DMA-001")]).await;
    let sim = h.spawn_mps(quiet_mps("MP-0061", "AKT-MPN-0061"), t0()).await;
    h.run(&[&sim], Duration::minutes(10)).await;
    sim.inject(Scenario::DoorOpen {
        duration: Duration::hours(5),
    })
    .await
    .unwrap();
    h.run(&[&sim], Duration::minutes(1)).await;
    let a = h.get("/api/v1/alarms").await;
    let id = a[0]["id"].as_str().unwrap().to_string();
    (h, sim, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_by_role() {
    let (h, _sim, id) = with_alarm("api-roles").await;
    let viewer_routes = [
        "/api/v1/sites",
        "/api/v1/sites/MP-0061",
        "/api/v1/alarms",
        &format!("/api/v1/alarms/{id}"),
        &format!("/api/v1/alarms/{id}/journal"),
        "/api/v1/points/MP-0061.level/readings",
        "/api/v1/journal",
        "/api/v1/quarantine",
        "/api/v1/session",
        &format!("/api/v1/alarms/{id}/notifications"),
    ];
    for path in viewer_routes {
        let (code, body) = h.request(Method::GET, path, None, None).await;
        assert_eq!(code, 401, "{path} unauthenticated");
        assert!(body["error"].is_string(), "{path}: JSON error body");
        let (code, _) = h.request(Method::GET, path, Some("not-a-token"), None).await;
        assert_eq!(code, 401, "{path} bad token");
        for tok in [VIEW_TOKEN, OP_TOKEN, ENG_TOKEN, ADMIN_TOKEN] {
            let (code, _) = h.request(Method::GET, path, Some(tok), None).await;
            assert_eq!(code, 200, "{path} with {tok}");
        }
    }
    // Alert routes need viewer; without `notify_file` they say it is not configured.
    for path in ["/api/v1/notifications", "/api/v1/oncall"] {
        let (code, _) = h.request(Method::GET, path, None, None).await;
        assert_eq!(code, 401, "{path} unauthenticated");
        let (code, body) = h.request(Method::GET, path, Some(VIEW_TOKEN), None).await;
        assert_eq!(code, 404, "{path}: {body}");
    }
    let code_body = json!({"code": "ABCD2345"});
    let (code, _) = h
        .request(Method::POST, "/api/v1/ack-codes", None, Some(code_body.clone()))
        .await;
    assert_eq!(code, 401);
    let (code, _) = h.post("/api/v1/ack-codes", VIEW_TOKEN, code_body.clone()).await;
    assert_eq!(code, 403);
    let (code, _) = h.post("/api/v1/ack-codes", OP_TOKEN, code_body).await;
    assert_eq!(code, 404);
    // Open routes.
    for path in ["/api/v1/health", "/metrics", "/", "/assets/board.js"] {
        let (code, _) = h.request(Method::GET, path, None, None).await;
        assert_eq!(code, 200, "{path}");
    }
    // The OpenAPI document is under /api/: a viewer reads it (interfaces.md).
    let (code, _) = h.request(Method::GET, "/api/v1/openapi.json", None, None).await;
    assert_eq!(code, 401);
    let (code, _) = h
        .request(Method::GET, "/api/v1/openapi.json", Some(VIEW_TOKEN), None)
        .await;
    assert_eq!(code, 200);
    // Operator routes: viewer forbidden, operator allowed.
    let shelve = json!({"minutes": 30, "reason": "crew on site"});
    let (code, body) = h.post(&format!("/api/v1/alarms/{id}/ack"), VIEW_TOKEN, json!({})).await;
    assert_eq!((code, body["error"].is_string()), (403, true));
    let (code, _) = h
        .post(&format!("/api/v1/alarms/{id}/shelve"), VIEW_TOKEN, shelve.clone())
        .await;
    assert_eq!(code, 403);
    let (code, _) = h
        .request(Method::POST, &format!("/api/v1/alarms/{id}/ack"), None, Some(json!({})))
        .await;
    assert_eq!(code, 401);
    // Engineer routes: operator forbidden.
    let (code, _) = h
        .post(
            &format!("/api/v1/alarms/{id}/out_of_service"),
            OP_TOKEN,
            json!({"reason": "x"}),
        )
        .await;
    assert_eq!(code, 403);
    let (code, a) = h
        .post(
            &format!("/api/v1/alarms/{id}/out_of_service"),
            ENG_TOKEN,
            json!({"reason": "float replaced"}),
        )
        .await;
    assert_eq!((code, a["state"].as_str()), (200, Some("out_of_service")));
    let (code, a) = h
        .post(
            &format!("/api/v1/alarms/{id}/return_to_service"),
            ENG_TOKEN,
            json!({"reason": "done"}),
        )
        .await;
    assert_eq!((code, a["state"].as_str()), (200, Some("unack_active")));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_shelve_and_errors() {
    let (h, sim, id) = with_alarm("api-ack").await;
    let (code, a) = h
        .post(
            &format!("/api/v1/alarms/{id}/ack"),
            OP_TOKEN,
            json!({"comment": "見に行きます"}),
        )
        .await;
    assert_eq!(code, 200);
    assert_eq!(a["state"], "ack_active");
    assert_eq!(a["acked_by"], "op");
    assert_eq!(a["id"], id.as_str(), "same occurrence");
    let (code, e) = h.post(&format!("/api/v1/alarms/{id}/ack"), OP_TOKEN, json!({})).await;
    assert_eq!(code, 409, "{e}");
    let (code, _) = h.post("/api/v1/alarms/al-unknown/ack", OP_TOKEN, json!({})).await;
    assert_eq!(code, 404);
    // Bad bodies.
    let r = h
        .http
        .post(format!("{}/api/v1/alarms/{id}/shelve", h.base))
        .bearer_auth(OP_TOKEN)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.json::<Value>().await.unwrap()["error"].is_string());
    let (code, _) = h
        .post(
            &format!("/api/v1/alarms/{id}/shelve"),
            OP_TOKEN,
            json!({"minutes": "ten", "reason": "x"}),
        )
        .await;
    assert_eq!(code, 422);
    let (code, _) = h
        .post(
            &format!("/api/v1/alarms/{id}/shelve"),
            OP_TOKEN,
            json!({"minutes": 0, "reason": "x"}),
        )
        .await;
    assert_eq!(code, 422);
    let (code, _) = h
        .post(&format!("/api/v1/alarms/{id}/shelve"), OP_TOKEN, json!({"minutes": 10}))
        .await;
    assert_eq!(code, 422, "a shelve needs a reason");
    let big = "x".repeat(100_000);
    let r = h
        .http
        .post(format!("{}/api/v1/alarms/{id}/ack", h.base))
        .bearer_auth(OP_TOKEN)
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let (code, _) = h
        .request(Method::GET, "/api/v1/alarms?state=bogus", Some(VIEW_TOKEN), None)
        .await;
    assert_eq!(code, 400);
    let (code, _) = h
        .request(Method::GET, "/api/v1/points/nodot/readings", Some(VIEW_TOKEN), None)
        .await;
    assert_eq!(code, 400);
    let (code, _) = h
        .request(Method::GET, "/api/v1/points/B99.q/readings", Some(VIEW_TOKEN), None)
        .await;
    assert_eq!(code, 404);
    let (code, _) = h
        .request(
            Method::GET,
            "/api/v1/points/B01.q/readings?from=yesterday",
            Some(VIEW_TOKEN),
            None,
        )
        .await;
    assert_eq!(code, 400);
    let (code, body) = h.request(Method::GET, "/api/v1/nothing", Some(VIEW_TOKEN), None).await;
    assert_eq!((code, body["error"].is_string()), (404, true));

    // Shelve for 30 minutes: hidden from the default list, back by itself.
    let (code, a) = h
        .post(
            &format!("/api/v1/alarms/{id}/shelve"),
            OP_TOKEN,
            json!({"minutes": 30, "reason": "crew on site"}),
        )
        .await;
    assert_eq!((code, a["state"].as_str()), (200, Some("shelved")));
    assert!(h
        .get("/api/v1/alarms")
        .await
        .as_array()
        .unwrap()
        .iter()
        .all(|x| x["id"] != id.as_str()));
    assert_eq!(h.get("/api/v1/alarms?state=shelved").await[0]["id"], id.as_str());
    h.run(&[&sim], Duration::minutes(31)).await;
    h.wait_until("shelve expired", || async {
        h.get(&format!("/api/v1/alarms/{id}")).await["state"] == "ack_active"
    })
    .await;
    let j = h.get(&format!("/api/v1/alarms/{id}/journal")).await;
    let actions: Vec<(&str, &str)> = j
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["action"].as_str().unwrap(), r["who"].as_str().unwrap()))
        .collect();
    assert!(actions.contains(&("unshelve", "system")), "{actions:?}");
    assert!(
        actions.contains(&("shelve", "op")) && actions.contains(&("ack", "op")),
        "who did what: {actions:?}"
    );
    let ack_row = j.as_array().unwrap().iter().find(|r| r["action"] == "ack").unwrap();
    assert_eq!(ack_row["why"], "見に行きます");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_stream_snapshot_then_transitions() {
    use futures::StreamExt;
    let (h, sim, id) = with_alarm("api-sse").await;
    let r = h
        .http
        .get(format!("{}/api/v1/events?token={VIEW_TOKEN}", h.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut stream = r.bytes_stream();
    let mut buf = String::new();
    let next_event = |buf: &mut String| -> Option<(String, Value)> {
        let end = buf.find("\n\n")?;
        let block: String = buf.drain(..end + 2).collect();
        let ev = block
            .lines()
            .find_map(|l| l.strip_prefix("event: "))
            .unwrap_or("message")
            .to_string();
        let data: String = block.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
        Some((ev, serde_json::from_str(&data).unwrap_or(Value::Null)))
    };
    let mut events = vec![];
    let want = |events: &Vec<(String, Value)>| events.iter().any(|(e, v)| e == "alarm" && v["action"] == "ack");
    h.post(&format!("/api/v1/alarms/{id}/ack"), OP_TOKEN, json!({})).await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !want(&events) {
        let chunk = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("events in time")
            .unwrap()
            .unwrap();
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(e) = next_event(&mut buf) {
            events.push(e);
        }
    }
    assert_eq!(events[0].0, "snapshot");
    assert!(events[0].1.as_array().unwrap().iter().any(|a| a["id"] == id.as_str()));
    let ack = events
        .iter()
        .find(|(e, v)| e == "alarm" && v["action"] == "ack")
        .unwrap();
    assert_eq!(ack.1["alarm"]["state"], "ack_active");
    assert_eq!(ack.1["who"], "op");
    drop(stream);
    drop(sim);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_session_needs_csrf_for_changes() {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let dir = tempfile::tempdir().unwrap();
    let hash = argon2::Argon2::default()
        .hash_password(b"correct horse", &SaltString::from_b64("c2FsdHNhbHRzYWx0").unwrap())
        .unwrap()
        .to_string();
    let (h, _sim, id) = with_alarm("api-session").await;
    drop(dir);
    // Users come from configuration; add one and restart with it.
    let mut h = h;
    let cfg = std::fs::read_to_string(&h.config_path).unwrap()
        + &format!("\n[[user]]\nname = \"sato\"\npassword_hash = \"{hash}\"\nrole = \"operator\"\n");
    std::fs::write(&h.config_path, cfg).unwrap();
    h.restart().await;
    // Behind a TLS-terminating proxy the cookie is Secure.
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1/login", h.base))
        .header("x-forwarded-proto", "https")
        .json(&json!({"user": "sato", "password": "correct horse"}))
        .send()
        .await
        .unwrap();
    let tls_cookie = r.headers()["set-cookie"].to_str().unwrap();
    assert!(tls_cookie.contains("; Secure"), "{tls_cookie}");
    let client = reqwest::Client::builder().cookie_store(true).build().unwrap();
    let r = client
        .post(format!("{}/api/v1/login", h.base))
        .json(&json!({"user": "sato", "password": "wrong"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client
        .post(format!("{}/api/v1/login", h.base))
        .json(&json!({"user": "sato", "password": "correct horse"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict") && !cookie.contains("Secure"),
        "{cookie}"
    );
    let csrf = r.json::<Value>().await.unwrap()["csrf"].as_str().unwrap().to_string();
    let r = client.get(format!("{}/api/v1/alarms", h.base)).send().await.unwrap();
    assert_eq!(r.status(), 200, "the cookie reads");
    let r = client
        .post(format!("{}/api/v1/alarms/{id}/ack", h.base))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "no CSRF token, no change");
    let r = client
        .post(format!("{}/api/v1/alarms/{id}/ack", h.base))
        .header("x-csrf-token", &csrf)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["acked_by"], "sato");
    // Failed logins are rate limited.
    for _ in 0..5 {
        client
            .post(format!("{}/api/v1/login", h.base))
            .json(&json!({"user": "sato", "password": "guess"}))
            .send()
            .await
            .unwrap();
    }
    let r = client
        .post(format!("{}/api/v1/login", h.base))
        .json(&json!({"user": "sato", "password": "correct horse"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let r = client.post(format!("{}/api/v1/logout", h.base)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = client.get(format!("{}/api/v1/alarms", h.base)).send().await.unwrap();
    assert_eq!(r.status(), 401, "logged out");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_documents_exactly_the_routes_served() {
    let h = Harness::start("api-openapi", &[dma("B01", "AKT-DMA-001")]).await;
    let doc = h.get("/api/v1/openapi.json").await;
    assert_eq!(doc["openapi"], "3.1.0");
    let documented = mizuban::api::openapi::operations();
    // Every documented operation is served (not the fallback 404)...
    for (method, path) in &documented {
        let concrete = path.replace("{id}", "MP-0001").replace("MP-0001/", "al-x/");
        let concrete = if path.starts_with("/api/v1/points/") {
            "/api/v1/points/B01.q/readings".to_string()
        } else {
            concrete
        };
        let m = Method::from_bytes(method.as_bytes()).unwrap();
        let r = h
            .http
            .request(m, format!("{}{concrete}", h.base))
            .bearer_auth(ENG_TOKEN)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        if path == "/api/v1/events" {
            // A stream that never ends: the status is the answer.
            assert_eq!(r.status(), 200);
            continue;
        }
        let body = r.text().await.unwrap();
        assert!(
            !body.contains("no such route"),
            "{method} {path} is documented but not served"
        );
    }
    // ...and every served route is documented.
    let served = mizuban::api::ROUTES;
    for (method, path) in served {
        assert!(
            documented.iter().any(|(m, p)| m == method && p == path),
            "{method} {path} is served but not documented"
        );
    }
    assert_eq!(served.len(), documented.len());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_a_collector_that_cannot_connect() {
    // Point the service at a port where no broker listens: 503 with a reason,
    // reconnect attempts counted, and it connects by itself once a broker is there.
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), "health", "health/", &[dma("B01", "AKT-DMA-001")], None);
    let text = std::fs::read_to_string(&path).unwrap();
    let (_, real_port) = broker();
    std::fs::write(
        &path,
        text.replace(&format!("port = {real_port}"), &format!("port = {port}")),
    )
    .unwrap();
    let cfg = mizuban::config::Config::load(&path).unwrap();
    let app = mizuban::app::start(cfg, Default::default()).await.unwrap();
    let base = format!("http://{}", app.http_addr);
    let http = reqwest::Client::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let m = http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if m.lines()
            .any(|l| l.starts_with("mizuban_mqtt_reconnects_total") && !l.ends_with(" 0"))
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no reconnect counted");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let r = http.get(format!("{base}/api/v1/health")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert!(body["reasons"][0].as_str().unwrap().starts_with("mqtt"), "{body}");
    // A broker appears on that port: the collector connects by itself.
    let _b = mizuban::collect::broker::EmbeddedBroker::start(Some(port), &[(MQTT_USER.into(), MQTT_PASSWORD.into())])
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while http.get(format!("{base}/api/v1/health")).send().await.unwrap().status() != 200 {
        assert!(std::time::Instant::now() < deadline, "did not reconnect");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_exports_csv() {
    let (h, _sim, id) = with_alarm("api-csv").await;
    h.post(
        &format!("/api/v1/alarms/{id}/ack"),
        OP_TOKEN,
        json!({"comment": "見た, \"確認\""}),
    )
    .await;
    let r = h
        .http
        .get(format!("{}/api/v1/journal?site=MP-0061&format=csv", h.base))
        .bearer_auth(VIEW_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/csv"));
    let text = r.text().await.unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next().unwrap(),
        "\u{feff}at,site,source,condition,priority,action,from,to,who,why,event_time,notify,late,alarm_id"
    );
    let ack = text.lines().find(|l| l.contains(",ack,")).expect("ack row");
    assert!(
        ack.contains(",op,\"見た, \"\"確認\"\"\","),
        "quoted per RFC 4180: {ack}"
    );
    let (code, _) = h
        .request(Method::GET, "/api/v1/journal?format=xml", Some(VIEW_TOKEN), None)
        .await;
    assert_eq!(code, 400);
    // The priority filter keeps the rows of that priority and only those.
    let alarm = h.get(&format!("/api/v1/alarms/{id}")).await;
    let prio = alarm["priority"].as_str().unwrap().to_string();
    let rows = h.get(&format!("/api/v1/journal?site=MP-0061&priority={prio}")).await;
    let rows = rows.as_array().unwrap();
    assert!(rows
        .iter()
        .any(|r| r["alarm_id"] == id.as_str() && r["action"] == "ack"));
    assert!(rows.iter().all(|r| r["priority"] == prio.as_str()));
    let other = if prio == "low" { "critical" } else { "low" };
    let rows = h.get(&format!("/api/v1/journal?site=MP-0061&priority={other}")).await;
    assert!(rows.as_array().unwrap().iter().all(|r| r["alarm_id"] != id.as_str()));
    let (code, _) = h
        .request(Method::GET, "/api/v1/journal?priority=urgent", Some(VIEW_TOKEN), None)
        .await;
    assert_eq!(code, 400);
    // A query string axum itself cannot read is still a JSON error.
    let (code, body) = h
        .request(Method::GET, "/api/v1/journal?limit=many", Some(VIEW_TOKEN), None)
        .await;
    assert_eq!(code, 400);
    assert!(body["error"].as_str().unwrap().contains("limit"), "{body}");
    h.stop().await;
}
