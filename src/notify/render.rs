//! What a person reads: the webhook payload (interfaces.md) is the
//! [`Message`] itself; from it come the e-mail (Japanese or English, plain
//! text that reads on a phone) and the chat-tool variants.

use super::message::{Kind, Message};
use crate::alarm::Alarm;
use crate::device::Priority;
use crate::model::Timestamp;
use chrono::FixedOffset;
use serde_json::Value;

fn local(t: Option<Timestamp>, offset_h: i32) -> String {
    t.map(|t| {
        let tz = FixedOffset::east_opt(offset_h * 3600).unwrap_or(FixedOffset::east_opt(0).unwrap());
        t.with_timezone(&tz).format("%Y-%m-%d %H:%M").to_string()
    })
    .unwrap_or_else(|| "–".into())
}

/// `HH:MM` local.
fn local_hm(t: Option<Timestamp>, offset_h: i32) -> String {
    let l = local(t, offset_h);
    l.get(11..).map(str::to_string).unwrap_or(l)
}

/// `HH:MM–HH:MM` local (the date is in the body's lines).
fn span(from: Option<Timestamp>, to: Option<Timestamp>, offset_h: i32) -> String {
    format!("{}–{}", local_hm(from, offset_h), local_hm(to, offset_h))
}

fn prio(p: Priority, ja: bool) -> &'static str {
    match (p, ja) {
        (Priority::Critical, true) => "最重要",
        (Priority::High, true) => "重要",
        (Priority::Medium, true) => "中",
        (Priority::Low, true) => "低",
        (Priority::Critical, false) => "CRITICAL",
        (Priority::High, false) => "HIGH",
        (Priority::Medium, false) => "MEDIUM",
        (Priority::Low, false) => "LOW",
    }
}

fn what(kind: Kind, ja: bool) -> &'static str {
    match (kind, ja) {
        (Kind::AlarmRaised, true) => "警報発生",
        (Kind::AlarmEscalated, true) => "警報（未確認のため再通知）",
        (Kind::AlarmCleared, true) => "復旧",
        (Kind::AlarmAcknowledged, true) => "確認済",
        (Kind::AlarmShelved, true) => "保留",
        (Kind::IncidentOpened, true) => "一括障害発生",
        (Kind::IncidentUpdated, true) => "一括障害（追加あり）",
        (Kind::IncidentClosed, true) => "一括障害 復旧",
        (Kind::Summary, true) => "通知のまとめ",
        (Kind::AlarmBrief | Kind::IncidentBrief, true) => "発生・復旧済みのお知らせ",
        (Kind::AlarmReactivated, true) => "復旧後の再発生のまとめ",
        (Kind::AlarmRaised, false) => "Alarm",
        (Kind::AlarmEscalated, false) => "Alarm (unacknowledged, escalated)",
        (Kind::AlarmCleared, false) => "Back to normal",
        (Kind::AlarmAcknowledged, false) => "Acknowledged",
        (Kind::AlarmShelved, false) => "Shelved",
        (Kind::IncidentOpened, false) => "Incident",
        (Kind::IncidentUpdated, false) => "Incident (more alarms)",
        (Kind::IncidentClosed, false) => "Incident over",
        (Kind::Summary, false) => "Summary of held notifications",
        (Kind::AlarmBrief | Kind::IncidentBrief, false) => "Over before anyone was paged",
        (Kind::AlarmReactivated, false) => "Came back after returning to normal",
    }
}

fn text(a: &Alarm, ja: bool) -> &str {
    if ja {
        &a.message_ja
    } else {
        &a.message
    }
}

fn alarm_line(a: Option<&Alarm>, ja: bool, offset_h: i32) -> String {
    let Some(a) = a else { return String::new() };
    let value = a.value.map(|v| format!(" ({v})")).unwrap_or_default();
    format!(
        "[{}] {} {}{} — {}",
        prio(a.priority, ja),
        a.site,
        text(a, ja),
        value,
        local(Some(a.raised_at), offset_h)
    )
}

/// Subject and body of the e-mail for a message.
pub fn email(p: &Message, ja: bool, offset_h: i32, service: &str) -> (String, String) {
    let kind = p.kind;
    let n = p.alarms().len();
    let head = what(kind, ja);
    let lead = p.alarm.as_ref();
    let site = lead.map(|a| a.site.as_str()).unwrap_or("");
    let cond = lead.map(|a| text(a, ja)).unwrap_or("");
    let subject = match kind {
        Kind::AlarmBrief | Kind::IncidentBrief => {
            let ep = p.episode.as_ref();
            let sites = ep.map(|e| e.sites).unwrap_or(1);
            let span = span(ep.and_then(|e| e.from), ep.and_then(|e| e.to), offset_h);
            let rep = ep.and_then(|e| e.reported_at).map(|r| local_hm(Some(r), offset_h));
            match (ja, sites > 1, rep) {
                (true, true, _) => format!("【水番】{head}: {site}ほか{sites}か所 {cond} {span} 全て復旧"),
                (true, false, Some(r)) => format!("【水番】{head}: {site} {cond} {span}（{r} に受信）"),
                (true, false, None) => format!("【水番】{head}: {site} {cond} {span}"),
                (false, true, _) => format!("[mizuban] {head}: {sites} sites, {cond} {span}, all back"),
                (false, false, Some(r)) => format!("[mizuban] {head}: {site} {cond} {span}, reported at {r}"),
                (false, false, None) => format!("[mizuban] {head}: {site} {cond} {span}"),
            }
        }
        Kind::Summary => {
            let k = p.messages.as_ref().map(|m| m.len()).unwrap_or(0);
            if ja {
                format!("【水番】{head}（{k}件）")
            } else {
                format!("[mizuban] {head} ({k})")
            }
        }
        Kind::IncidentOpened | Kind::IncidentUpdated | Kind::IncidentClosed => {
            if ja {
                format!("【水番】{head} {site}ほか {n}か所: {cond}")
            } else {
                format!("[mizuban] {head}: {site} and others, {n} sites: {cond}")
            }
        }
        Kind::AlarmReactivated => {
            let k = lead.map(|a| a.reactivations).unwrap_or(0);
            if ja {
                format!("【水番】{head}: {site} {cond} 再発生{k}回・復旧済み")
            } else {
                format!("[mizuban] {head}: {site} {cond}, {k} times, now over")
            }
        }
        Kind::AlarmRaised
        | Kind::AlarmEscalated
        | Kind::AlarmCleared
        | Kind::AlarmAcknowledged
        | Kind::AlarmShelved => {
            let pr = lead.map(|a| prio(a.priority, ja)).unwrap_or("");
            if ja {
                format!("【水番】{head} [{pr}] {site} {cond}")
            } else {
                format!("[mizuban] {head} [{pr}] {site} {cond}")
            }
        }
    };
    let mut b = String::new();
    b.push_str(&format!("{service}\n{head}\n\n"));
    if kind == Kind::Summary {
        b.push_str(if ja {
            "通知が多いため、以下をまとめて送ります。\n\n"
        } else {
            "Too many notifications at once; these were held and are summarised here.\n\n"
        });
        for m in p.messages.iter().flatten() {
            b.push_str(&format!(
                "・{} {}\n",
                what(m.kind, ja),
                alarm_line(m.alarm.as_ref(), ja, offset_h)
            ));
        }
    } else if kind.is_brief() {
        b.push_str(if ja {
            "以下は通知の前に発生・復旧しました（確認の必要はありません。記録のためのお知らせです）。\n\n"
        } else {
            "These were over before anyone was paged (nothing to acknowledge; for the record).\n\n"
        });
        for a in p.alarms() {
            let late = if a.late {
                if ja {
                    format!("（{} に受信）", local_hm(Some(a.detected_at), offset_h))
                } else {
                    format!(" (reported at {})", local_hm(Some(a.detected_at), offset_h))
                }
            } else {
                String::new()
            };
            b.push_str(&format!(
                "・{} → {}{late}\n",
                alarm_line(Some(a), ja, offset_h),
                local_hm(a.cleared_at, offset_h)
            ));
        }
    } else if n > 1 {
        for a in p.alarms() {
            b.push_str(&format!("・{}\n", alarm_line(Some(a), ja, offset_h)));
        }
    } else {
        b.push_str(&format!("{}\n", alarm_line(lead, ja, offset_h)));
        if let Some(a) = lead.filter(|_| kind == Kind::AlarmReactivated) {
            let k = a.reactivations;
            let (from, to) = (local_hm(Some(a.raised_at), offset_h), local_hm(a.cleared_at, offset_h));
            b.push_str(&if ja {
                format!("復旧した後、{k}回再発生しました（{from}〜{to}、現在は復旧・確認済み）。\n")
            } else {
                format!("After it first returned to normal it came back {k} times ({from}–{to}); it is over and acknowledged now.\n")
            });
        }
        if let Some(by) = lead.and_then(|a| a.acked_by.as_deref()) {
            b.push_str(&if ja {
                format!("確認者: {by}\n")
            } else {
                format!("Acknowledged by: {by}\n")
            });
        }
    }
    if let Some(l) = p.escalation_level {
        b.push_str(&if ja {
            format!("\n通知段階: {l}\n")
        } else {
            format!("\nEscalation level: {l}\n")
        });
    }
    if let Some(url) = &p.ack_url {
        let code = p.ack_code.as_deref().unwrap_or("");
        b.push_str(&if ja {
            format!("\n確認（アック）はこちら:\n{url}\n確認コード: {code}\n")
        } else {
            format!("\nAcknowledge here:\n{url}\nAck code: {code}\n")
        });
    }
    let url = &p.board_url;
    b.push_str(&if ja {
        format!("\n監視画面: {url}\n")
    } else {
        format!("\nBoard: {url}\n")
    });
    b.push_str(if ja {
        "\n-- \n水番（自動送信）。このメールへの返信は届きません。\n"
    } else {
        "\n-- \nmizuban (automatic). Replies to this message are not read.\n"
    });
    (subject, b)
}

/// A chat-tool body: Slack-style `{"text"}` or a Teams MessageCard.
pub fn chat(p: &Message, teams: bool, ja: bool, offset_h: i32, service: &str) -> Value {
    let (subject, body) = email(p, ja, offset_h, service);
    if teams {
        serde_json::json!({"@type": "MessageCard", "@context": "https://schema.org/extensions",
            "summary": subject, "title": subject, "text": body.replace('\n', "  \n")})
    } else {
        serde_json::json!({"text": format!("*{subject}*\n{body}")})
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn alarm(site: &str, late: bool) -> Alarm {
        use crate::alarm::{AlarmOrigin, RaiseSpec, Registry};
        let t = |s: &str| s.parse::<Timestamp>().unwrap();
        let spec = RaiseSpec {
            site: crate::model::SiteId::new(site).unwrap(),
            device: crate::model::DeviceId::new("AKT-DEV-0001").unwrap(),
            source: format!("{site}.p"),
            condition: "pressure_low".into(),
            origin: AlarmOrigin::Rule,
            priority: Priority::Medium,
            value: None,
            limit: None,
            message: "Pressure low".into(),
            message_ja: "圧力低下".into(),
            suppressed_by: vec![],
        };
        let mut a = Registry::new()
            .raise(spec, t("2026-12-01T18:10:00Z"), t("2026-12-01T18:10:00Z"))
            .remove(0)
            .alarm;
        a.cleared_at = Some(t("2026-12-01T18:40:00Z"));
        a.detected_at = t("2026-12-01T19:00:00Z");
        a.late = late;
        a
    }

    /// A message as the planner stores it, from its JSON.
    fn message(v: Value) -> Message {
        let mut m = json!({"id": "n-1", "sent_at": null, "recipient": "tanaka", "recipient_name": "Tanaka",
            "language": "en", "board_url": "https://mizuban.example/"});
        for (k, x) in v.as_object().unwrap() {
            m[k] = x.clone();
        }
        serde_json::from_value(m).unwrap()
    }

    #[test]
    fn briefs_say_when_it_began_ended_and_was_reported() {
        let late = message(json!({"type": "alarm.brief", "alarm": alarm("B22", true),
            "incident": {"id": "i-1", "count": 1, "alarms": [alarm("B22", true)]},
            "episode": {"from": "2026-12-01T18:10:00Z", "to": "2026-12-01T18:40:00Z", "reported_at": "2026-12-01T19:00:00Z", "sites": 1}}));
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

        let many = message(json!({"type": "incident.brief", "alarm": alarm("MP-0401", false),
            "incident": {"id": "i-2", "count": 2, "alarms": [alarm("MP-0401", false), alarm("MP-0402", false)]},
            "episode": {"from": "2026-12-01T18:10:00Z", "to": "2026-12-01T18:40:00Z", "reported_at": null, "sites": 2}}));
        let (subject, body) = email(&many, false, 9, "mizuban");
        assert_eq!(
            subject,
            "[mizuban] Over before anyone was paged: 2 sites, Pressure low 03:10–03:40, all back"
        );
        assert_eq!(body.matches("・").count(), 2, "{body}");
    }

    #[test]
    fn a_reactivation_summary_says_how_often_and_who_acknowledged() {
        let mut a = alarm("B22", false);
        a.reactivations = 4;
        a.acked_by = Some("sato".into());
        let m = message(json!({"type": "alarm.reactivated", "alarm": a,
            "incident": {"id": "i-1", "count": 1, "alarms": [a]}}));
        let (subject, body) = email(&m, false, 9, "mizuban");
        assert_eq!(
            subject,
            "[mizuban] Came back after returning to normal: B22 Pressure low, 4 times, now over"
        );
        assert!(body.contains("came back 4 times (03:10–03:40)"), "{body}");
        assert!(body.contains("Acknowledged by: sato"), "{body}");
        let (subject, body) = email(&m, true, 9, "水番");
        assert!(subject.contains("再発生4回"), "{subject}");
        assert!(body.contains("4回再発生") && body.contains("確認者: sato"), "{body}");
    }
}
