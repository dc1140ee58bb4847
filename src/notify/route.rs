//! Routing: which escalation policy an alarm goes to, by site, area, kind,
//! condition, priority and local time of day. First match wins; no match
//! means the alarm is for the board only.

use super::config::{parse_hhmm, NotifyConfig, Route};
use crate::alarm::Alarm;
use crate::config::Site;
use chrono::{DateTime, FixedOffset, NaiveTime, Utc};

/// `HH:MM-HH:MM`, possibly wrapping midnight.
pub fn parse_window(s: &str) -> Option<(NaiveTime, NaiveTime)> {
    let (a, b) = s.split_once('-')?;
    Some((parse_hhmm(a)?, parse_hhmm(b)?))
}

fn in_window(w: (NaiveTime, NaiveTime), t: NaiveTime) -> bool {
    let (from, to) = w;
    if from <= to {
        from <= t && t < to
    } else {
        t >= from || t < to
    }
}

pub fn matches(r: &Route, a: &Alarm, site: Option<&Site>, at: DateTime<Utc>, utc_offset_hours: i32) -> bool {
    let any = |list: &[String], v: &str| list.is_empty() || list.iter().any(|x| x == v);
    if !any(&r.sites, a.site.as_str()) || !any(&r.conditions, &a.condition) {
        return false;
    }
    if !r.areas.is_empty() && !site.is_some_and(|s| r.areas.contains(&s.area)) {
        return false;
    }
    if !r.kinds.is_empty() && !site.is_some_and(|s| r.kinds.contains(&s.kind)) {
        return false;
    }
    if !r.priorities.is_empty() && !r.priorities.contains(&a.priority) {
        return false;
    }
    if let Some(w) = r.hours.as_deref().and_then(parse_window) {
        let Some(tz) = FixedOffset::east_opt(utc_offset_hours * 3600) else {
            return false;
        };
        if !in_window(w, at.with_timezone(&tz).time()) {
            return false;
        }
    }
    true
}

/// The route that takes an alarm at `at`, if any.
pub fn find<'a>(
    cfg: &'a NotifyConfig,
    a: &Alarm,
    site: Option<&Site>,
    at: DateTime<Utc>,
    utc_offset_hours: i32,
) -> Option<&'a Route> {
    cfg.routes.iter().find(|r| matches(r, a, site, at, utc_offset_hours))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_wrap_midnight() {
        let w = parse_window("17:00-08:30").unwrap();
        let t = |s| parse_hhmm(s).unwrap();
        assert!(in_window(w, t("17:00")));
        assert!(in_window(w, t("23:59")));
        assert!(in_window(w, t("03:00")));
        assert!(!in_window(w, t("08:30")));
        assert!(!in_window(w, t("12:00")));
        let day = parse_window("08:30-17:00").unwrap();
        assert!(in_window(day, t("12:00")) && !in_window(day, t("17:00")));
        assert!(parse_window("8-17").is_none());
    }
}
