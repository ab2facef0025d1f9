//! Cron schedules, read in a job's time zone. Pure: every function takes the time.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds};

/// A parsed cron expression: 5 fields (minute precision), 6 fields (with seconds first)
/// or an alias (`@daily`, `@hourly`, …).
#[derive(Clone, Debug)]
pub struct Schedule {
    /// The expression with seconds, as tokio-cron-scheduler wants it.
    normalized: String,
    cron: Cron,
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        self.normalized == other.normalized
    }
}

impl FromStr for Schedule {
    type Err = String;
    fn from_str(s: &str) -> Result<Schedule, String> {
        let s = s.trim();
        let normalized = match s.to_ascii_lowercase().as_str() {
            "@yearly" | "@annually" => "0 0 0 1 1 *".to_string(),
            "@monthly" => "0 0 0 1 * *".to_string(),
            "@weekly" => "0 0 0 * * 0".to_string(),
            "@daily" | "@midnight" => "0 0 0 * * *".to_string(),
            "@hourly" => "0 0 * * * *".to_string(),
            _ => match s.split_whitespace().count() {
                5 => format!("0 {s}"),
                6 => s.to_string(),
                n => {
                    return Err(format!(
                        "cron expression {s:?} has {n} fields; expected 5 (min hour dom month dow), 6 (sec min hour dom month dow) or an @alias"
                    ));
                }
            },
        };
        let cron = CronParser::builder()
            .seconds(Seconds::Required)
            .build()
            .parse(&normalized)
            .map_err(|e| format!("invalid cron expression {s:?}: {e}"))?;
        Ok(Schedule { normalized, cron })
    }
}

impl<'de> serde::Deserialize<'de> for Schedule {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Schedule, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.normalized)
    }
}

impl Schedule {
    pub fn as_cron(&self) -> &str {
        &self.normalized
    }

    /// The first run strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&after.with_timezone(&tz), false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// The last due time at or before `now`.
    pub fn previous_due(&self, now: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        self.cron
            .find_previous_occurrence(&now.with_timezone(&tz), true)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// Whether a run was missed while nobody was watching (systemd's `Persistent=`):
    /// the schedule came due after the last successful run and before `now`.
    pub fn missed(&self, last_success: Option<DateTime<Utc>>, now: DateTime<Utc>, tz: Tz) -> bool {
        let Some(due) = self.previous_due(now, tz) else {
            return false;
        };
        match last_success {
            Some(last) => last < due,
            // Never succeeded: catch up only if the job could have run before.
            None => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn utc(y: i32, m: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, h, mi, 0).unwrap()
    }

    #[test]
    fn forms_and_errors() {
        assert_eq!(
            "0 2 * * *".parse::<Schedule>().unwrap().as_cron(),
            "0 0 2 * * *"
        );
        assert_eq!(
            "@daily".parse::<Schedule>().unwrap().as_cron(),
            "0 0 0 * * *"
        );
        assert!("*/5 * * * * *".parse::<Schedule>().is_ok());
        assert!(
            "every day"
                .parse::<Schedule>()
                .unwrap_err()
                .contains("fields")
        );
        assert!("0 99 * * *".parse::<Schedule>().is_err());
    }

    #[test]
    fn next_run_in_a_time_zone() {
        let s: Schedule = "0 2 * * *".parse().unwrap();
        let berlin = chrono_tz::Europe::Berlin;
        // 02:00 in Berlin in winter is 01:00 UTC.
        assert_eq!(
            s.next_after(utc(2026, 1, 10, 12, 0), berlin),
            Some(utc(2026, 1, 11, 1, 0))
        );
        // In summer it is 00:00 UTC.
        assert_eq!(
            s.next_after(utc(2026, 7, 10, 12, 0), berlin),
            Some(utc(2026, 7, 11, 0, 0))
        );
    }

    #[test]
    fn daylight_saving_gap_still_runs_once() {
        // 2026-03-29: Berlin skips 02:00-03:00. A 02:30 job must still run that day.
        let s: Schedule = "30 2 * * *".parse().unwrap();
        let berlin = chrono_tz::Europe::Berlin;
        let next = s.next_after(utc(2026, 3, 28, 12, 0), berlin).unwrap();
        assert!(
            next > utc(2026, 3, 28, 12, 0) && next < utc(2026, 3, 29, 12, 0),
            "{next}"
        );
    }

    #[test]
    fn missed_runs() {
        let s: Schedule = "0 2 * * *".parse().unwrap();
        let tz = chrono_tz::UTC;
        let now = utc(2026, 5, 5, 10, 0);
        assert!(s.missed(Some(utc(2026, 5, 4, 2, 1)), now, tz));
        assert!(!s.missed(Some(utc(2026, 5, 5, 2, 1)), now, tz));
        assert!(s.missed(None, now, tz));
    }
}
