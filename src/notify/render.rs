//! What a person reads: the webhook payload (interfaces.md), and from it the
//! e-mail (Japanese or English, plain text that reads on a phone) and the
//! chat-tool variants.

use chrono::{DateTime, FixedOffset, Utc};
use serde_json::Value;

fn local(v: &Value, offset_h: i32) -> String {
    v.as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| {
            let tz = FixedOffset::east_opt(offset_h * 3600).unwrap_or(FixedOffset::east_opt(0).unwrap());
            t.with_timezone(&tz).format("%Y-%m-%d %H:%M").to_string()
        })
        .unwrap_or_else(|| "–".into())
}

/// `HH:MM` local.
fn local_hm(v: &Value, offset_h: i32) -> String {
    let l = local(v, offset_h);
    l.get(11..).map(str::to_string).unwrap_or(l)
}

/// `HH:MM–HH:MM` local (the date is in the body's lines).
fn span(from: &Value, to: &Value, offset_h: i32) -> String {
    format!("{}–{}", local_hm(from, offset_h), local_hm(to, offset_h))
}

fn prio(p: &str, ja: bool) -> &'static str {
    match (p, ja) {
        ("critical", true) => "最重要",
        ("high", true) => "重要",
        ("medium", true) => "中",
        ("low", true) => "低",
        ("critical", false) => "CRITICAL",
        ("high", false) => "HIGH",
        ("medium", false) => "MEDIUM",
        _ => "LOW",
    }
}

fn what(kind: &str, ja: bool) -> &'static str {
    match (kind, ja) {
        ("alarm.raised", true) => "警報発生",
        ("alarm.escalated", true) => "警報（未確認のため再通知）",
        ("alarm.cleared", true) => "復旧",
        ("alarm.acknowledged", true) => "確認済",
        ("alarm.shelved", true) => "保留",
        ("incident.opened", true) => "一括障害発生",
        ("incident.updated", true) => "一括障害（追加あり）",
        ("incident.closed", true) => "一括障害 復旧",
        ("summary", true) => "通知のまとめ",
        ("alarm.brief", true) | ("incident.brief", true) => "発生・復旧済みのお知らせ",
        ("alarm.raised", false) => "Alarm",
        ("alarm.escalated", false) => "Alarm (unacknowledged, escalated)",
        ("alarm.cleared", false) => "Back to normal",
        ("alarm.acknowledged", false) => "Acknowledged",
        ("alarm.shelved", false) => "Shelved",
        ("incident.opened", false) => "Incident",
        ("incident.updated", false) => "Incident (more alarms)",
        ("incident.closed", false) => "Incident over",
        ("summary", false) => "Summary of held notifications",
        ("alarm.brief", false) | ("incident.brief", false) => "Over before anyone was paged",
        _ => "",
    }
}

fn alarm_line(a: &Value, ja: bool, offset_h: i32) -> String {
    let msg = if ja { &a["message_ja"] } else { &a["message"] };
    let value = a["value"].as_f64().map(|v| format!(" ({v})")).unwrap_or_default();
    format!(
        "[{}] {} {}{} — {}",
        prio(a["priority"].as_str().unwrap_or(""), ja),
        a["site"].as_str().unwrap_or(""),
        msg.as_str().unwrap_or(""),
        value,
        local(&a["raised_at"], offset_h)
    )
}

/// Subject and body of the e-mail for a payload.
pub fn email(p: &Value, ja: bool, offset_h: i32, service: &str) -> (String, String) {
    let kind = p["type"].as_str().unwrap_or("");
    let n = p["incident"]["alarms"].as_array().map(|a| a.len()).unwrap_or(0);
    let head = what(kind, ja);
    let subject = if kind.ends_with(".brief") {
        let a = &p["alarm"];
        let cond = if ja { &a["message_ja"] } else { &a["message"] };
        let sites = p["episode"]["sites"].as_u64().unwrap_or(1);
        let span = span(&p["episode"]["from"], &p["episode"]["to"], offset_h);
        let rep = p["episode"]["reported_at"]
            .as_str()
            .map(|_| local_hm(&p["episode"]["reported_at"], offset_h));
        match (ja, sites > 1, rep) {
            (true, true, _) => format!(
                "【水番】{head}: {}ほか{sites}か所 {} {span} 全て復旧",
                a["site"].as_str().unwrap_or(""),
                cond.as_str().unwrap_or("")
            ),
            (true, false, Some(r)) => format!(
                "【水番】{head}: {} {} {span}（{r} に受信）",
                a["site"].as_str().unwrap_or(""),
                cond.as_str().unwrap_or("")
            ),
            (true, false, None) => format!(
                "【水番】{head}: {} {} {span}",
                a["site"].as_str().unwrap_or(""),
                cond.as_str().unwrap_or("")
            ),
            (false, true, _) => format!(
                "[mizuban] {head}: {sites} sites, {} {span}, all back",
                cond.as_str().unwrap_or("")
            ),
            (false, false, Some(r)) => format!(
                "[mizuban] {head}: {} {} {span}, reported at {r}",
                a["site"].as_str().unwrap_or(""),
                cond.as_str().unwrap_or("")
            ),
            (false, false, None) => format!(
                "[mizuban] {head}: {} {} {span}",
                a["site"].as_str().unwrap_or(""),
                cond.as_str().unwrap_or("")
            ),
        }
    } else if kind == "summary" {
        let k = p["messages"].as_array().map(|m| m.len()).unwrap_or(0);
        if ja {
            format!("【水番】{head}（{k}件）")
        } else {
            format!("[mizuban] {head} ({k})")
        }
    } else if kind.starts_with("incident.") {
        let a = &p["alarm"];
        let cond = if ja { &a["message_ja"] } else { &a["message"] };
        if ja {
            format!(
                "【水番】{head} {}ほか {n}か所: {}",
                a["site"].as_str().unwrap_or(""),
                cond.as_str().unwrap_or("")
            )
        } else {
            format!(
                "[mizuban] {head}: {} and others, {n} sites: {}",
                a["site"].as_str().unwrap_or(""),
                cond.as_str().unwrap_or("")
            )
        }
    } else {
        let a = &p["alarm"];
        let cond = if ja { &a["message_ja"] } else { &a["message"] };
        let pr = prio(a["priority"].as_str().unwrap_or(""), ja);
        if ja {
            format!(
                "【水番】{head} [{pr}] {} {}",
                a["site"].as_str().unwrap_or(""),
                cond.as_str().unwrap_or("")
            )
        } else {
            format!(
                "[mizuban] {head} [{pr}] {} {}",
                a["site"].as_str().unwrap_or(""),
                cond.as_str().unwrap_or("")
            )
        }
    };
    let mut b = String::new();
    b.push_str(&format!("{service}\n{head}\n\n"));
    if kind == "summary" {
        b.push_str(if ja {
            "通知が多いため、以下をまとめて送ります。\n\n"
        } else {
            "Too many notifications at once; these were held and are summarised here.\n\n"
        });
        for m in p["messages"].as_array().into_iter().flatten() {
            b.push_str(&format!(
                "・{} {}\n",
                what(m["type"].as_str().unwrap_or(""), ja),
                alarm_line(&m["alarm"], ja, offset_h)
            ));
        }
    } else if kind.ends_with(".brief") {
        b.push_str(if ja {
            "以下は通知の前に発生・復旧しました（確認の必要はありません。記録のためのお知らせです）。\n\n"
        } else {
            "These were over before anyone was paged (nothing to acknowledge; for the record).\n\n"
        });
        for a in p["incident"]["alarms"].as_array().into_iter().flatten() {
            let late = if a["late"].as_bool() == Some(true) {
                if ja {
                    format!("（{} に受信）", local_hm(&a["detected_at"], offset_h))
                } else {
                    format!(" (reported at {})", local_hm(&a["detected_at"], offset_h))
                }
            } else {
                String::new()
            };
            b.push_str(&format!(
                "・{} → {}{late}\n",
                alarm_line(a, ja, offset_h),
                local_hm(&a["cleared_at"], offset_h)
            ));
        }
    } else if n > 1 {
        for a in p["incident"]["alarms"].as_array().into_iter().flatten() {
            b.push_str(&format!("・{}\n", alarm_line(a, ja, offset_h)));
        }
    } else {
        b.push_str(&format!("{}\n", alarm_line(&p["alarm"], ja, offset_h)));
        if let Some(by) = p["alarm"]["acked_by"].as_str() {
            b.push_str(&if ja {
                format!("確認者: {by}\n")
            } else {
                format!("Acknowledged by: {by}\n")
            });
        }
    }
    if let Some(l) = p["escalation_level"].as_u64() {
        b.push_str(&if ja {
            format!("\n通知段階: {l}\n")
        } else {
            format!("\nEscalation level: {l}\n")
        });
    }
    if let Some(url) = p["ack_url"].as_str() {
        b.push_str(&if ja {
            format!(
                "\n確認（アック）はこちら:\n{url}\n確認コード: {}\n",
                p["ack_code"].as_str().unwrap_or("")
            )
        } else {
            format!(
                "\nAcknowledge here:\n{url}\nAck code: {}\n",
                p["ack_code"].as_str().unwrap_or("")
            )
        });
    }
    if let Some(url) = p["board_url"].as_str() {
        b.push_str(&if ja {
            format!("\n監視画面: {url}\n")
        } else {
            format!("\nBoard: {url}\n")
        });
    }
    b.push_str(if ja {
        "\n-- \n水番（自動送信）。このメールへの返信は届きません。\n"
    } else {
        "\n-- \nmizuban (automatic). Replies to this message are not read.\n"
    });
    (subject, b)
}

/// A chat-tool body: Slack-style `{"text"}` or a Teams MessageCard.
pub fn chat(p: &Value, teams: bool, ja: bool, offset_h: i32, service: &str) -> Value {
    let (subject, body) = email(p, ja, offset_h, service);
    if teams {
        serde_json::json!({"@type": "MessageCard", "@context": "https://schema.org/extensions",
            "summary": subject, "title": subject, "text": body.replace('\n', "  \n")})
    } else {
        serde_json::json!({"text": format!("*{subject}*\n{body}")})
    }
}

pub fn now_rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn alarm(site: &str, late: bool) -> Value {
        json!({"site": site, "priority": "medium", "message": "Pressure low", "message_ja": "圧力低下",
               "raised_at": "2026-12-01T18:10:00Z", "cleared_at": "2026-12-01T18:40:00Z",
               "detected_at": "2026-12-01T19:00:00Z", "late": late})
    }

    #[test]
    fn briefs_say_when_it_began_ended_and_was_reported() {
        let late = json!({"type": "alarm.brief", "alarm": alarm("B22", true),
            "incident": {"alarms": [alarm("B22", true)]},
            "episode": {"from": "2026-12-01T18:10:00Z", "to": "2026-12-01T18:40:00Z", "reported_at": "2026-12-01T19:00:00Z", "sites": 1}});
        let (subject, body) = email(&late, false, 9, "mizuban");
        assert_eq!(
            subject,
            "[mizuban] Over before anyone was paged: B22 Pressure low 03:10–03:40, reported at 04:00"
        );
        assert!(
            body.contains("B22 Pressure low — 2026-12-02 03:10 → 03:40 (reported at 04:00)"),
            "{body}"
        );
        assert!(!body.contains("/ack/"));
        let (subject, _) = email(&late, true, 9, "水番");
        assert!(subject.contains("03:10–03:40（04:00 に受信）"), "{subject}");

        let many = json!({"type": "incident.brief", "alarm": alarm("MP-0401", false),
            "incident": {"alarms": [alarm("MP-0401", false), alarm("MP-0402", false)]},
            "episode": {"from": "2026-12-01T18:10:00Z", "to": "2026-12-01T18:40:00Z", "reported_at": null, "sites": 2}});
        let (subject, body) = email(&many, false, 9, "mizuban");
        assert_eq!(
            subject,
            "[mizuban] Over before anyone was paged: 2 sites, Pressure low 03:10–03:40, all back"
        );
        assert_eq!(body.matches("・").count(), 2, "{body}");
    }
}
