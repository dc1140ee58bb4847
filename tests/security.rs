//! Security as a user relies on it: login throttling that slows a guesser
//! without locking out the real operator, sessions that end when they should
//! (logout, a removed user, a changed role or password) across restarts, and
//! event streams capped in all and per caller.

mod common;
use common::*;
use serde_json::{json, Value};

fn hash(pw: &str) -> String {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let salt = SaltString::encode_b64(rand_id().as_bytes()).unwrap();
    argon2::Argon2::default()
        .hash_password(pw.as_bytes(), &salt)
        .unwrap()
        .to_string()
}

fn add_user(h: &Harness, name: &str, pw_hash: &str, role: &str) {
    let cfg = std::fs::read_to_string(&h.config_path).unwrap()
        + &format!("\n[[user]]\nname = \"{name}\"\npassword_hash = \"{pw_hash}\"\nrole = \"{role}\"\n");
    std::fs::write(&h.config_path, cfg).unwrap();
}

fn set_users(h: &Harness, users: &[(&str, &str, &str)]) {
    let text = std::fs::read_to_string(&h.config_path).unwrap();
    let base = text.split("\n[[user]]").next().unwrap().to_string();
    std::fs::write(&h.config_path, base).unwrap();
    for (n, p, r) in users {
        add_user(h, n, p, r);
    }
}

/// A client bound to one loopback address (127.0.0.x), as one machine.
fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip.parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap()
}

async fn login(c: &reqwest::Client, h: &Harness, user: &str, pw: &str) -> reqwest::Response {
    c.post(format!("{}/api/v1/login", h.base))
        .json(&json!({"user": user, "password": pw}))
        .send()
        .await
        .unwrap()
}

fn cookie_of(r: &reqwest::Response) -> String {
    let c = r.headers()["set-cookie"].to_str().unwrap();
    c.split(';').next().unwrap().to_string()
}

async fn with_cookie(h: &Harness, cookie: &str) -> u16 {
    reqwest::Client::new()
        .get(format!("{}/api/v1/alarms", h.base))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guesser_is_slowed_but_cannot_lock_the_operator_out() {
    let mut h = Harness::start("sec-throttle", &[dma("B01", "AKT-DMA-001")]).await;
    add_user(&h, "operator", &hash("right one"), "operator");
    h.restart().await;
    let stranger = client_from("127.0.0.7");
    let mut throttled = None;
    for _ in 0..12 {
        let r = login(&stranger, &h, "operator", "guess").await;
        if r.status() == 429 {
            throttled = Some(r);
            break;
        }
        assert_eq!(r.status(), 401);
    }
    let r = throttled.expect("repeated wrong passwords are slowed down");
    let wait: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=900).contains(&wait), "Retry-After {wait}");
    let body: Value = r.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("try again"), "{body}");
    // Even the right password waits, from the guesser's client...
    assert_eq!(login(&stranger, &h, "operator", "right one").await.status(), 429);
    // ...but the operator at their own desk gets in at once.
    let desk = client_from("127.0.0.8");
    let r = login(&desk, &h, "operator", "right one").await;
    assert_eq!(r.status(), 200, "a stranger's guesses must not lock the operator out");
    // Names and passwords past any sane length are refused before any work.
    let r = login(&stranger, &h, &"x".repeat(60_000), "p").await;
    assert_eq!(r.status(), 400);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_end_at_logout_and_at_account_changes_across_restarts() {
    let mut h = Harness::start("sec-sessions", &[dma("B01", "AKT-DMA-001")]).await;
    let (sato, kato, ito) = (hash("pw-sato"), hash("pw-kato"), hash("pw-ito"));
    set_users(
        &h,
        &[
            ("sato", &sato, "operator"),
            ("kato", &kato, "operator"),
            ("ito", &ito, "operator"),
        ],
    );
    h.pin_http = Some(([127, 0, 0, 1], free_port()).into());
    h.restart().await;
    let c = reqwest::Client::new();
    let mut cookies = std::collections::HashMap::new();
    for (u, p) in [("sato", "pw-sato"), ("kato", "pw-kato"), ("ito", "pw-ito")] {
        let r = login(&c, &h, u, p).await;
        assert_eq!(r.status(), 200);
        cookies.insert(u, cookie_of(&r));
    }
    // A second session for sato, to log out.
    let r = login(&c, &h, "sato", "pw-sato").await;
    let sato_out = cookie_of(&r);
    let csrf = r.json::<Value>().await.unwrap()["csrf"].as_str().unwrap().to_string();
    let r = c
        .post(format!("{}/api/v1/logout", h.base))
        .header("cookie", &sato_out)
        .header("x-csrf-token", csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(with_cookie(&h, &sato_out).await, 401, "logged out");
    assert_eq!(
        with_cookie(&h, &cookies["sato"]).await,
        200,
        "sato's other session stands"
    );
    // Restart with the same configuration: the logout holds, the rest stand.
    h.restart().await;
    assert_eq!(with_cookie(&h, &sato_out).await, 401, "a logout survives a restart");
    for u in ["sato", "kato", "ito"] {
        assert_eq!(
            with_cookie(&h, &cookies[u]).await,
            200,
            "{u}'s session survives a restart"
        );
    }
    // kato removed, ito's password changed, sato made a viewer.
    set_users(&h, &[("sato", &sato, "viewer"), ("ito", &hash("new-ito"), "operator")]);
    h.restart().await;
    for u in ["sato", "kato", "ito"] {
        assert_eq!(
            with_cookie(&h, &cookies[u]).await,
            401,
            "{u}'s session ended with the change"
        );
    }
    assert_eq!(login(&c, &h, "ito", "new-ito").await.status(), 200);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_are_capped_in_all_and_per_caller() {
    let mut h = Harness::start("sec-sse", &[dma("B01", "AKT-DMA-001")]).await;
    let cfg = std::fs::read_to_string(&h.config_path).unwrap().replacen(
        "[http]\n",
        "[http]\nmax_event_streams = 3\nmax_event_streams_per_caller = 2\n",
        1,
    );
    std::fs::write(&h.config_path, cfg).unwrap();
    h.restart().await;
    let open = |token: &'static str| {
        let url = format!("{}/api/v1/events", h.base);
        async move { reqwest::Client::new().get(url).bearer_auth(token).send().await.unwrap() }
    };
    let a1 = open(OP_TOKEN).await;
    let a2 = open(OP_TOKEN).await;
    assert_eq!((a1.status().as_u16(), a2.status().as_u16()), (200, 200));
    let a3 = open(OP_TOKEN).await;
    assert_eq!(a3.status(), 429, "a third stream for one caller");
    assert!(a3.headers().contains_key("retry-after"));
    let b1 = open(VIEW_TOKEN).await;
    assert_eq!(b1.status(), 200);
    let c1 = open(ENG_TOKEN).await;
    assert_eq!(c1.status(), 503, "the service's cap");
    assert!(c1.json::<Value>().await.unwrap()["error"].is_string());
    // A stream closed gives its place back.
    drop(a1);
    h.wait_until("a place is free again", || async {
        open(ENG_TOKEN).await.status() == 200
    })
    .await;
    drop((a2, b1));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_is_json_and_every_answer_has_the_security_headers() {
    let h = Harness::start("sec-http", &[dma("B01", "AKT-DMA-001")]).await;
    let c = reqwest::Client::new();
    let cases: Vec<(reqwest::Method, &str, Option<&str>, Option<&str>, u16)> = vec![
        (reqwest::Method::DELETE, "/api/v1/alarms", Some(VIEW_TOKEN), None, 405),
        (reqwest::Method::PUT, "/api/v1/health", None, None, 405),
        (
            reqwest::Method::GET,
            "/api/v1/nothing-here",
            Some(VIEW_TOKEN),
            None,
            404,
        ),
        (reqwest::Method::GET, "/api/v1/alarms", None, None, 401),
        (
            reqwest::Method::POST,
            "/api/v1/alarms/x/ack",
            Some(VIEW_TOKEN),
            Some("{}"),
            403,
        ),
        (reqwest::Method::POST, "/api/v1/login", None, Some("{not json"), 400),
        (
            reqwest::Method::GET,
            "/api/v1/journal?limit=abc",
            Some(VIEW_TOKEN),
            None,
            400,
        ),
        (reqwest::Method::GET, "/assets/nope.js", None, None, 404),
    ];
    for (m, path, token, body, want) in cases {
        let mut rq = c.request(m.clone(), format!("{}{path}", h.base));
        if let Some(t) = token {
            rq = rq.bearer_auth(t);
        }
        if let Some(b) = body {
            rq = rq.header("content-type", "application/json").body(b.to_string());
        }
        let r = rq.send().await.unwrap();
        assert_eq!(r.status().as_u16(), want, "{m} {path}");
        let ty = r.headers()["content-type"].to_str().unwrap().to_string();
        assert!(ty.starts_with("application/json"), "{m} {path}: {ty}");
        let v: Value = r.json().await.unwrap();
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{m} {path}: {v}");
    }
    for path in ["/", "/assets/board.js", "/api/v1/health", "/api/v1/nothing-here"] {
        let r = c.get(format!("{}{path}", h.base)).send().await.unwrap();
        let hd = r.headers();
        assert_eq!(hd["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(hd["referrer-policy"], "no-referrer", "{path}");
        let csp = hd["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        assert!(!csp.contains("unsafe-inline"), "{path}: {csp}");
    }
    // The board's page has no inline script or style left to need it.
    let page = c
        .get(format!("{}/", h.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !page.contains("<script>") && !page.contains("<style>"),
        "inline code in the board page"
    );
    assert!(
        !page.contains(" style=\"") && !page.contains(" onclick="),
        "inline attributes in the board page"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_be_protected_or_moved_to_their_own_address() {
    let mut h = Harness::start("sec-metrics", &[dma("B01", "AKT-DMA-001")]).await;
    let own = free_port();
    let cfg = std::fs::read_to_string(&h.config_path).unwrap().replacen(
        "[http]\n",
        &format!("[http]\nmetrics_listen = \"127.0.0.1:{own}\"\nmetrics_token = \"scrape-secret\"\n"),
        1,
    );
    std::fs::write(&h.config_path, cfg).unwrap();
    // The harness reads metrics from the main address; after this restart it
    // cannot, so stop and start the app by hand.
    h.stop_service().await;
    h.start_service_unchecked().await;
    let c = reqwest::Client::new();
    let main = c.get(format!("{}/metrics", h.base)).send().await.unwrap();
    assert_eq!(main.status(), 404, "not beside the board any more");
    let url = format!("http://127.0.0.1:{own}/metrics");
    assert_eq!(c.get(&url).send().await.unwrap().status(), 401);
    let r = c.get(&url).bearer_auth("scrape-secret").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("mizuban_messages_total"));
    h.stop().await;
}
