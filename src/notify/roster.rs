//! Who is on call: rotations that hand over at a set local time (daily, or
//! weekly on a set day), and one-off overrides that win over the rotation.
//! Local time is the service's fixed UTC offset (Asia/Tokyo has no daylight
//! saving, so a fixed +9 is exact).

use super::config::{parse_hhmm, parse_weekday, NotifyConfig, Rotation, Team};
use chrono::{DateTime, Datelike, Duration, FixedOffset, NaiveDateTime, Utc};

/// The member on call for `team` at `at`; an override covering `at` wins.
pub fn on_call<'a>(cfg: &'a NotifyConfig, team: &'a Team, at: DateTime<Utc>, utc_offset_hours: i32) -> Option<&'a str> {
    if let Some(o) = cfg
        .overrides
        .iter()
        .rev() // the one written last wins
        .find(|o| o.team == team.id && o.from <= at && at < o.to)
    {
        return Some(&o.person);
    }
    if team.members.is_empty() {
        return None;
    }
    let tz = FixedOffset::east_opt(utc_offset_hours * 3600)?;
    let handover = parse_hhmm(&team.handover)?;
    // The first shift starts at the hand-over time on the start date (for a
    // weekly rotation: on or after the start date, on the hand-over day).
    let mut first_local: NaiveDateTime = team.start.and_time(handover);
    let period = match team.rotation {
        Rotation::Daily => Duration::days(1),
        Rotation::Weekly => {
            let day = parse_weekday(team.handover_day.as_deref()?)?;
            while first_local.weekday() != day {
                first_local += Duration::days(1);
            }
            Duration::weeks(1)
        }
    };
    let first = first_local.and_local_timezone(tz).single()?.with_timezone(&Utc);
    // Before the first shift the last member of the cycle holds it.
    let shifts = (at - first).num_seconds().div_euclid(period.num_seconds());
    let idx = shifts.rem_euclid(team.members.len() as i64) as usize;
    Some(&team.members[idx])
}

/// The people a level's targets resolve to at `at`, in order, without repeats.
pub fn resolve(cfg: &NotifyConfig, targets: &[String], at: DateTime<Utc>, utc_offset_hours: i32) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for t in targets {
        let who = match t.split_once(':') {
            Some(("team", id)) => cfg
                .teams
                .iter()
                .find(|x| x.id == id)
                .and_then(|team| on_call(cfg, team, at, utc_offset_hours))
                .map(str::to_string),
            Some(("person", id)) => Some(id.to_string()),
            _ => None,
        };
        if let Some(w) = who {
            if !out.contains(&w) {
                out.push(w);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> NotifyConfig {
        toml::from_str(
            r#"
[[person]]
id = "sato"
name = "佐藤"
contact = [{kind = "webhook", to = "x"}]
[[person]]
id = "suzuki"
name = "鈴木"
contact = [{kind = "webhook", to = "x"}]
[[person]]
id = "takahashi"
name = "高橋"
contact = [{kind = "webhook", to = "x"}]
[[team]]
id = "night"
rotation = "daily"
handover = "08:30"
start = "2025-01-20"
members = ["sato", "suzuki", "takahashi"]
[[team]]
id = "chiefs"
rotation = "weekly"
handover = "09:00"
handover_day = "mon"
start = "2025-01-15"
members = ["sato", "suzuki"]
[[override]]
team = "night"
person = "takahashi"
from = "2025-01-21T08:00:00Z"
to = "2025-01-21T12:00:00Z"
"#,
        )
        .unwrap()
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn daily_rotation_hands_over_at_local_time() {
        let c = cfg();
        let t = &c.teams[0];
        // 2025-01-20 08:30 JST = 2025-01-19 23:30 UTC: sato's first shift.
        assert_eq!(on_call(&c, t, at("2025-01-19T23:30:00Z"), 9), Some("sato"));
        assert_eq!(on_call(&c, t, at("2025-01-20T23:29:59Z"), 9), Some("sato"));
        assert_eq!(on_call(&c, t, at("2025-01-20T23:30:00Z"), 9), Some("suzuki"));
        assert_eq!(
            on_call(&c, t, at("2025-01-22T23:30:00Z"), 9),
            Some("sato"),
            "wraps round"
        );
        // Before the rotation starts the last member holds it.
        assert_eq!(on_call(&c, t, at("2025-01-19T23:29:00Z"), 9), Some("takahashi"));
    }

    #[test]
    fn an_override_wins_only_while_it_lasts() {
        let c = cfg();
        let t = &c.teams[0];
        assert_eq!(on_call(&c, t, at("2025-01-21T07:59:00Z"), 9), Some("suzuki"));
        assert_eq!(on_call(&c, t, at("2025-01-21T08:00:00Z"), 9), Some("takahashi"));
        assert_eq!(on_call(&c, t, at("2025-01-21T12:00:00Z"), 9), Some("suzuki"));
    }

    #[test]
    fn weekly_rotation_on_its_day() {
        let c = cfg();
        let t = &c.teams[1];
        // Start 2025-01-15 (Wed): the first Monday 09:00 JST is 2025-01-20 = 00:00 UTC.
        assert_eq!(on_call(&c, t, at("2025-01-20T00:00:00Z"), 9), Some("sato"));
        assert_eq!(on_call(&c, t, at("2025-01-26T23:59:00Z"), 9), Some("sato"));
        assert_eq!(on_call(&c, t, at("2025-01-27T00:00:00Z"), 9), Some("suzuki"));
        assert_eq!(on_call(&c, t, at("2025-02-03T00:00:00Z"), 9), Some("sato"));
    }

    #[test]
    fn targets_resolve_without_repeats() {
        let c = cfg();
        let who = resolve(
            &c,
            &["team:night".into(), "person:suzuki".into(), "team:chiefs".into()],
            at("2025-01-21T00:00:00Z"),
            9,
        );
        assert_eq!(who, vec!["suzuki".to_string(), "sato".to_string()]);
    }
}
