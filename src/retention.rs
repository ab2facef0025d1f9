//! Retention planning: which snapshots of a job to keep. Pure: snapshots, policy and
//! time in; a decision per snapshot out (like Proxmox's `compute_prune_info`).
//!
//! Periods (hour, day, week, month, year) are calendar periods in the job's time zone, so
//! daylight-saving changes move no snapshot into the wrong day. A period's kept copy is
//! its newest complete snapshot; a period with none is stood for by its newest partial
//! one, so a job that is partial every night (one unreadable file) is still thinned like
//! any other instead of growing without bound. Of the partial snapshots newer than every
//! complete one, the newest is kept: it holds the freshest data there is. The newest
//! complete snapshot is always kept, and a policy that says nothing removes nothing.

use chrono::{DateTime, Datelike, Duration, Timelike, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionPolicy {
    pub keep_last: Option<u32>,
    pub keep_hourly: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
    pub keep_yearly: Option<u32>,
    /// Keep everything younger than this (e.g. "7d", "36h"), relative to the newest snapshot.
    #[serde(default, with = "opt_duration")]
    pub keep_within: Option<Duration>,
}

/// Parses a retention duration: a number and a unit, `m`, `h`, `d`, `w` or `y`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    opt_duration::parse(s)
}

mod opt_duration {
    use chrono::Duration;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn parse(s: &str) -> Result<Duration, String> {
        let s = s.trim();
        let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
        let n: i64 = num
            .parse()
            .map_err(|_| format!("duration {s:?} must look like 36h, 7d, 2w"))?;
        // A century is more than any retention needs, and keeps the arithmetic in range.
        let per_unit: i64 = match unit {
            "m" => 1,
            "h" => 60,
            "d" => 1440,
            "w" => 10080,
            "y" => 525_600,
            _ => return Err(format!("duration {s:?} needs a unit: m, h, d, w or y")),
        };
        if n.checked_mul(per_unit).is_none_or(|m| m > 100 * 525_600) {
            return Err(format!("duration {s:?} is longer than 100 years"));
        }
        match unit {
            "m" => Ok(Duration::minutes(n)),
            "h" => Ok(Duration::hours(n)),
            "d" => Ok(Duration::days(n)),
            "w" => Ok(Duration::weeks(n)),
            "y" => Ok(Duration::days(365 * n)),
            _ => Err(format!("duration {s:?} needs a unit: m, h, d, w or y")),
        }
    }

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&format!("{}m", d.num_minutes())),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| parse(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

impl RetentionPolicy {
    /// The seed default: two weeks of dailies.
    pub fn seed_default() -> RetentionPolicy {
        RetentionPolicy {
            keep_daily: Some(14),
            ..Default::default()
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == RetentionPolicy::default()
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.keep_within.is_some_and(|d| d <= Duration::zero()) {
            return Err("keep_within must be positive".into());
        }
        Ok(())
    }
}

/// What the planner needs of a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate<K> {
    pub key: K,
    pub time: DateTime<Utc>,
    pub complete: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision<K> {
    pub key: K,
    pub keep: bool,
    /// Why it is kept ("daily", "last", "newest complete", …); empty when removed.
    pub reasons: Vec<&'static str>,
}

/// Decides, for one job's snapshots, which to keep. Order of input does not matter;
/// output is newest first.
pub fn plan<K: Clone>(
    snapshots: &[Candidate<K>],
    policy: &RetentionPolicy,
    tz: Tz,
) -> Vec<Decision<K>> {
    let mut order: Vec<usize> = (0..snapshots.len()).collect();
    order.sort_by(|&a, &b| snapshots[b].time.cmp(&snapshots[a].time));
    let mut reasons: Vec<Vec<&'static str>> = vec![Vec::new(); snapshots.len()];

    if policy.is_empty() {
        for r in reasons.iter_mut() {
            r.push("no policy");
        }
    }
    let newest_complete = order.iter().copied().find(|&i| snapshots[i].complete);
    if let Some(i) = newest_complete {
        reasons[i].push("newest complete");
    }
    // The newest snapshot, when partial, holds the freshest data there is.
    if let Some(&i) = order.first()
        && !snapshots[i].complete
    {
        reasons[i].push("newest (partial)");
    }
    if let Some(n) = policy.keep_last {
        for &i in order
            .iter()
            .filter(|&&i| snapshots[i].complete)
            .take(n as usize)
        {
            reasons[i].push("last");
        }
    }
    if let (Some(within), Some(&newest)) = (policy.keep_within, order.first()) {
        let cutoff = snapshots[newest].time - within;
        for &i in &order {
            if snapshots[i].time >= cutoff {
                reasons[i].push("within");
            }
        }
    }
    type Bucket = fn(DateTime<Tz>) -> (i32, u32, u32, u32);
    // Each period: how many to keep, the reason for a complete copy, the reason for a
    // partial one standing in, and the calendar bucket.
    let periods: [(Option<u32>, &'static str, &'static str, Bucket); 5] = [
        (policy.keep_hourly, "hourly", "hourly (partial)", |t| {
            (t.year(), t.ordinal(), t.hour(), 0)
        }),
        (policy.keep_daily, "daily", "daily (partial)", |t| {
            (t.year(), t.ordinal(), 0, 0)
        }),
        (policy.keep_weekly, "weekly", "weekly (partial)", |t| {
            let w = t.iso_week();
            (w.year(), w.week(), 0, 0)
        }),
        (policy.keep_monthly, "monthly", "monthly (partial)", |t| {
            (t.year(), t.month(), 0, 0)
        }),
        (policy.keep_yearly, "yearly", "yearly (partial)", |t| {
            (t.year(), 0, 0, 0)
        }),
    ];
    for (count, name, partial_name, bucket) in periods {
        let Some(count) = count else { continue };
        // Periods newest first, each with its newest complete and newest partial snapshot.
        let mut periods: Vec<(Option<usize>, Option<usize>)> = Vec::new();
        let mut slot_of = std::collections::HashMap::new();
        for &i in &order {
            let key = bucket(snapshots[i].time.with_timezone(&tz));
            let slot = *slot_of.entry(key).or_insert_with(|| {
                periods.push((None, None));
                periods.len() - 1
            });
            let (complete, partial) = &mut periods[slot];
            let best = if snapshots[i].complete {
                complete
            } else {
                partial
            };
            best.get_or_insert(i);
        }
        for (complete, partial) in periods.into_iter().take(count as usize) {
            match (complete, partial) {
                (Some(i), _) => reasons[i].push(name),
                (None, Some(i)) => reasons[i].push(partial_name),
                (None, None) => {}
            }
        }
    }
    order
        .into_iter()
        .map(|i| Decision {
            key: snapshots[i].key.clone(),
            keep: !reasons[i].is_empty(),
            reasons: reasons[i].clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;
    use std::collections::HashSet;

    fn c(key: u32, time: DateTime<Utc>, complete: bool) -> Candidate<u32> {
        Candidate {
            key,
            time,
            complete,
        }
    }

    fn kept(d: &[Decision<u32>]) -> Vec<u32> {
        let mut v: Vec<u32> = d.iter().filter(|d| d.keep).map(|d| d.key).collect();
        v.sort();
        v
    }

    #[test]
    fn fourteen_dailies_keep_the_newest_per_day() {
        let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        // Four snapshots a day for 30 days.
        let snaps: Vec<_> = (0..120)
            .map(|i| c(i, start + Duration::hours(6 * i as i64), true))
            .collect();
        let d = plan(&snaps, &RetentionPolicy::seed_default(), chrono_tz::UTC);
        let k = kept(&d);
        assert_eq!(k.len(), 14);
        assert!(k.iter().all(|i| i % 4 == 3), "{k:?}");
        assert_eq!(*k.last().unwrap(), 119);
    }

    #[test]
    fn partial_snapshots_do_not_stand_for_a_day() {
        let day = |d, h| Utc.with_ymd_and_hms(2026, 1, d, h, 0, 0).unwrap();
        let snaps = vec![
            c(1, day(1, 1), true),
            c(2, day(1, 20), false),
            c(3, day(2, 1), true),
            c(4, day(2, 5), false),
        ];
        let policy = RetentionPolicy {
            keep_daily: Some(2),
            ..Default::default()
        };
        let d = plan(&snaps, &policy, chrono_tz::UTC);
        // 2 is partial in a day that has a complete copy: removed; 4 is the newest.
        assert_eq!(kept(&d), vec![1, 3, 4]);
    }

    #[test]
    fn a_job_partial_every_night_is_still_thinned() {
        let start = Utc.with_ymd_and_hms(2026, 1, 1, 2, 0, 0).unwrap();
        // 60 nights, every run partial (one unreadable file), and one complete run long ago.
        let mut snaps: Vec<_> = (1..=60)
            .map(|i| c(i, start + Duration::days(i as i64), false))
            .collect();
        snaps.push(c(0, start, true));
        let d = plan(&snaps, &RetentionPolicy::seed_default(), chrono_tz::UTC);
        let k = kept(&d);
        // Fourteen daily copies (partial ones stand for their days) and the newest
        // complete snapshot; not all sixty.
        assert_eq!(k, [vec![0], (47..=60).collect::<Vec<_>>()].concat());
    }

    #[test]
    fn days_are_local_days_across_dst() {
        // Berlin, end of DST 2026-10-25: 23:30 local on the 24th is 21:30 UTC; 00:30 on
        // the 25th is 22:30 UTC. Two different local days, one UTC day.
        let tz = chrono_tz::Europe::Berlin;
        let a = Utc.with_ymd_and_hms(2026, 10, 24, 21, 30, 0).unwrap();
        let b = Utc.with_ymd_and_hms(2026, 10, 24, 22, 30, 0).unwrap();
        let policy = RetentionPolicy {
            keep_daily: Some(2),
            ..Default::default()
        };
        assert_eq!(
            kept(&plan(&[c(1, a, true), c(2, b, true)], &policy, tz)),
            vec![1, 2]
        );
        assert_eq!(
            kept(&plan(
                &[c(1, a, true), c(2, b, true)],
                &policy,
                chrono_tz::UTC
            )),
            vec![2]
        );
    }

    #[test]
    fn keep_within_and_empty_policy() {
        let t = |h| Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap() + Duration::hours(h);
        let snaps = vec![c(1, t(0), true), c(2, t(10), true), c(3, t(20), true)];
        let policy = RetentionPolicy {
            keep_within: Some(Duration::hours(12)),
            ..Default::default()
        };
        assert_eq!(kept(&plan(&snaps, &policy, chrono_tz::UTC)), vec![2, 3]);
        assert_eq!(
            kept(&plan(&snaps, &RetentionPolicy::default(), chrono_tz::UTC)),
            vec![1, 2, 3]
        );
    }

    proptest! {
        #[test]
        fn invariants(
            times in proptest::collection::vec((0i64..2_000_000, any::<bool>()), 1..60),
            last in proptest::option::of(0u32..5),
            daily in proptest::option::of(0u32..10),
            weekly in proptest::option::of(0u32..5),
        ) {
            let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
            let snaps: Vec<_> = times.iter().enumerate()
                .map(|(i, (m, complete))| c(i as u32, start + Duration::minutes(*m), *complete)).collect();
            let policy = RetentionPolicy { keep_last: last, keep_daily: daily, keep_weekly: weekly, ..Default::default() };
            let d = plan(&snaps, &policy, chrono_tz::Europe::Berlin);
            prop_assert_eq!(d.len(), snaps.len());
            // The newest complete snapshot is always kept.
            if let Some(newest) = snaps.iter().filter(|s| s.complete).max_by_key(|s| (s.time, std::cmp::Reverse(s.key))) {
                let kept_newest = d.iter().filter(|x| x.keep).any(|x| snaps[x.key as usize].complete && snaps[x.key as usize].time == newest.time);
                prop_assert!(kept_newest);
            }
            // Period rules pick a partial snapshot only for a period without a complete one.
            for x in &d {
                if x.reasons.iter().any(|r| ["daily", "weekly", "last"].contains(r)) {
                    prop_assert!(snaps[x.key as usize].complete);
                }
                if x.reasons.contains(&"daily (partial)") {
                    let day = |t: DateTime<Utc>| t.with_timezone(&chrono_tz::Europe::Berlin).date_naive();
                    let me = day(snaps[x.key as usize].time);
                    prop_assert!(!snaps.iter().any(|s| s.complete && day(s.time) == me));
                }
            }
            // Bounded: never more kept than the rules allow (liveness for partial jobs).
            let bound = 2 + last.unwrap_or(0) as usize + daily.unwrap_or(0) as usize + weekly.unwrap_or(0) as usize;
            if last.is_some() || daily.is_some() || weekly.is_some() {
                prop_assert!(d.iter().filter(|x| x.keep).count() <= bound);
            }
            // Each daily-kept snapshot is in a distinct local day, at most `daily` of them.
            let days: Vec<_> = d.iter().filter(|x| x.reasons.iter().any(|r| r.starts_with("daily")))
                .map(|x| snaps[x.key as usize].time.with_timezone(&chrono_tz::Europe::Berlin).date_naive()).collect();
            let unique: HashSet<_> = days.iter().collect();
            prop_assert_eq!(unique.len(), days.len());
            prop_assert!(days.len() <= daily.unwrap_or(0) as usize);
        }
    }
}
