//! Cron schedules for CronJobs: parsing `spec.schedule` and finding when it
//! next fires in the CronJob's time zone (`spec.timeZone`).
//!
//! The syntax is standard cron as Kubernetes accepts it: five fields
//! (minute, hour, day of month, month, day of week) or a macro such as
//! `@hourly`. Flotilla also accepts a sixth, leading seconds field so that
//! tests can use schedules shorter than a minute (`*/2 * * * * *`).
//!
//! Day matching follows cron: when both day fields are restricted (neither
//! starts with `*` or `?`), a day matches if either does, so `0 0 1 * MON`
//! runs on the first of the month and on every Monday.
//!
//! Times are matched as civil (wall-clock) times in the zone, to the second.
//! Across daylight-saving changes a civil time that does not exist (the hour
//! skipped in spring) does not fire, and one that happens twice (the hour
//! repeated in autumn) fires once, at its first occurrence. The search for
//! the next run gives up five years on, so a schedule that never matches,
//! such as `0 0 30 2 *`, reports no next run instead of searching for ever.

use crate::time::Time;
use jiff::civil::DateTime;
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::Timestamp;
use std::fmt;
use std::str::FromStr;

/// How many years past its start [`Schedule::next_after`] looks before it
/// concludes that the schedule does not fire. Most schedules fire within a
/// year; one pinned to 29 February, or to a date that must also be a given
/// weekday, can go years between runs (29 February skips 2100, so 2096 to
/// 2104). Kubernetes' cron library stops at five years too.
const SEARCH_YEARS: i32 = 5;

/// The macros and the five fields each stands for.
const MACROS: [(&str, &str); 7] = [
    ("@yearly", "0 0 1 1 *"),
    ("@annually", "0 0 1 1 *"),
    ("@monthly", "0 0 1 * *"),
    ("@weekly", "0 0 * * 0"),
    ("@daily", "0 0 * * *"),
    ("@midnight", "0 0 * * *"),
    ("@hourly", "0 * * * *"),
];

const MONTH_NAMES: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const WEEKDAY_NAMES: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// What one field of a schedule may hold.
struct Field {
    name: &'static str,
    min: u32,
    /// The largest value that may be written.
    max: u32,
    /// Where `*` and `a/n` end: below `max` for the day of week, where 7 is
    /// only another way to write Sunday.
    wild_max: u32,
    /// Names for the values from `min` on (months from 1, weekdays from 0).
    names: &'static [&'static str],
    /// How the names are described in errors.
    names_hint: &'static str,
    /// Whether `?` may stand for `*` (the two day fields).
    day: bool,
    /// The day of week: 7 is Sunday and may close a range (`FRI-SUN`).
    weekday: bool,
}

const SECOND: Field = Field {
    name: "second",
    min: 0,
    max: 59,
    wild_max: 59,
    names: &[],
    names_hint: "",
    day: false,
    weekday: false,
};
const MINUTE: Field = Field {
    name: "minute",
    min: 0,
    max: 59,
    wild_max: 59,
    names: &[],
    names_hint: "",
    day: false,
    weekday: false,
};
const HOUR: Field = Field {
    name: "hour",
    min: 0,
    max: 23,
    wild_max: 23,
    names: &[],
    names_hint: "",
    day: false,
    weekday: false,
};
const DAY_OF_MONTH: Field = Field {
    name: "day-of-month",
    min: 1,
    max: 31,
    wild_max: 31,
    names: &[],
    names_hint: "",
    day: true,
    weekday: false,
};
const MONTH: Field = Field {
    name: "month",
    min: 1,
    max: 12,
    wild_max: 12,
    names: &MONTH_NAMES,
    names_hint: " or a month name JAN-DEC",
    day: false,
    weekday: false,
};
const DAY_OF_WEEK: Field = Field {
    name: "day-of-week",
    min: 0,
    max: 7,
    wild_max: 6,
    names: &WEEKDAY_NAMES,
    names_hint: " or a weekday name SUN-SAT",
    day: true,
    weekday: true,
};

/// A parsed cron schedule. Each field is a bit set of the values it
/// matches (bit `v` for value `v`; Sunday is 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    text: String,
    seconds: u64,
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    /// Both day fields are restricted: a day matches if either does.
    either_day: bool,
    /// No month has a day the schedule allows (`0 0 30 2 *`), so it never
    /// fires and searches can stop at once.
    never: bool,
    has_seconds: bool,
}

/// Parses a schedule; see [`Schedule::parse`].
pub fn parse(text: &str) -> Result<Schedule, String> {
    Schedule::parse(text)
}

impl Schedule {
    /// Parses a schedule: five cron fields, six with seconds first, or a
    /// macro. The error names the field at fault and says what to write.
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err(
                "empty schedule: write 5 fields such as \"*/5 * * * *\" or a macro such as @hourly"
                    .into(),
            );
        }
        if let Some(rest) = text
            .strip_prefix("CRON_TZ=")
            .or_else(|| text.strip_prefix("TZ="))
        {
            let prefix = text.split_whitespace().next().unwrap_or(text);
            let to = match rest.split_whitespace().next() {
                Some(zone) if !prefix.ends_with('=') => format!(" to {zone:?}"),
                _ => String::new(),
            };
            return Err(format!(
                "a time zone prefix ({prefix:?}) is not allowed in the schedule: remove it and \
                 set the CronJob's spec.timeZone{to} instead"
            ));
        }
        let expanded = if text.starts_with('@') {
            match MACROS.iter().find(|(m, _)| m.eq_ignore_ascii_case(text)) {
                Some((_, fields)) => *fields,
                None => {
                    let known: Vec<&str> = MACROS.iter().map(|(m, _)| *m).collect();
                    let every = if text.to_ascii_lowercase().starts_with("@every") {
                        " (@every is not supported: write a step such as */5 in the minute field)"
                    } else {
                        ""
                    };
                    return Err(format!(
                        "unknown macro {text:?}{every}: use one of {} or 5 cron fields",
                        known.join(", ")
                    ));
                }
            }
        } else {
            text
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let (second, rest) = match fields.len() {
            5 => ("0", &fields[..]),
            6 => (fields[0], &fields[1..]),
            n => {
                return Err(format!(
                    "expected 5 fields (minute hour day-of-month month day-of-week) or 6 with \
                     seconds first, found {n}"
                ))
            }
        };
        let [minute, hour, dom, month, dow] = rest else {
            return Err("expected 5 fields (minute hour day-of-month month day-of-week)".into());
        };
        let starred = |f: &str| f.starts_with('*') || f.starts_with('?');
        let mut schedule = Schedule {
            text: text.to_string(),
            seconds: parse_field(&SECOND, second)?,
            minutes: parse_field(&MINUTE, minute)?,
            hours: parse_field(&HOUR, hour)?,
            days: parse_field(&DAY_OF_MONTH, dom)?,
            months: parse_field(&MONTH, month)?,
            weekdays: parse_field(&DAY_OF_WEEK, dow)?,
            either_day: !starred(dom) && !starred(dow),
            never: false,
            has_seconds: fields.len() == 6,
        };
        // Only when both day fields must match can the days rule out every
        // date: each month has every weekday, and every weekday falls on
        // each day of the month in some year.
        if !schedule.either_day {
            const LONGEST: [u32; 12] = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
            schedule.never = !(1..=12u32).any(|m| {
                has(schedule.months, m)
                    && (1..=LONGEST[m as usize - 1]).any(|d| has(schedule.days, d))
            });
        }
        Ok(schedule)
    }

    /// Whether the schedule has a seconds field, and so may fire more than
    /// once a minute.
    pub fn has_seconds(&self) -> bool {
        self.has_seconds
    }

    /// The first time strictly after `after` at which the schedule fires in
    /// `zone`, or `None` if it does not fire within five years.
    pub fn next_after(&self, after: Time, zone: &Zone) -> Option<Time> {
        let start = Timestamp::from_millisecond(after.0).ok()?;
        let year = i32::from(zone.0.to_datetime(start).year());
        self.search(after, &zone.0, year + SEARCH_YEARS)
    }

    /// The runs in `(from, until]`: how many there are, counting no further
    /// than `limit` (so `limit` means "that many or more"), and the latest of
    /// them, found even when there are more than `limit`. A controller runs
    /// the latest and can refuse to catch up when too many were missed.
    ///
    /// The cost grows with the count (at most `limit`), plus a bisection of
    /// the remaining span when the limit is reached.
    pub fn missed_since(
        &self,
        from: Time,
        until: Time,
        zone: &Zone,
        limit: usize,
    ) -> (usize, Option<Time>) {
        let from = from.max(Time(Timestamp::MIN.as_millisecond()));
        let until = until.min(Time(Timestamp::MAX.as_millisecond()));
        if until <= from || self.never {
            return (0, None);
        }
        let Ok(end) = Timestamp::from_millisecond(until.0) else {
            return (0, None);
        };
        // Look a year past `until`'s civil year so that no run up to `until`
        // is out of reach, however far back `from` is.
        let last_year = i32::from(zone.0.to_datetime(end).year()) + 1;
        let fires_by_until =
            |t: Time| matches!(self.search(t, &zone.0, last_year), Some(n) if n <= until);

        let (mut count, mut latest, mut cursor) = (0, None, from);
        while count < limit {
            match self.search(cursor, &zone.0, last_year) {
                Some(n) if n <= until => {
                    count += 1;
                    latest = Some(n);
                    cursor = n;
                }
                _ => return (count, latest),
            }
        }
        if !fires_by_until(cursor) {
            return (count, latest);
        }
        // A run lies in (lo, until] and none in (hi, until]; when they are
        // a millisecond apart, the latest run is at `hi`.
        let (mut lo, mut hi) = (cursor, until);
        while hi.0 - lo.0 > 1 {
            let mid = Time(lo.0 + (hi.0 - lo.0) / 2);
            if fires_by_until(mid) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        (count, Some(hi))
    }

    /// The first firing strictly after `after`, looking no further than the
    /// end of civil year `last_year`.
    ///
    /// Walks civil time field by field, jumping to the next allowed month,
    /// day, hour, minute and second, so the cost is a few steps per field
    /// rather than one per second. Civil times map to instants in order
    /// (a repeated hour is taken at its first occurrence), so the first
    /// civil match whose instant is after `after` is the answer.
    fn search(&self, after: Time, tz: &TimeZone, last_year: i32) -> Option<Time> {
        if self.never {
            return None;
        }
        let now = tz.to_datetime(Timestamp::from_millisecond(after.0).ok()?);
        let mut y = i32::from(now.year());
        let mut mo = u32::try_from(now.month()).ok()?;
        let mut d = u32::try_from(now.day()).ok()?;
        let mut h = u32::try_from(now.hour()).ok()?;
        let mut mi = u32::try_from(now.minute()).ok()?;
        // The civil second of `after` is at or before it; start one later.
        let mut s = u32::try_from(now.second()).ok()? + 1;
        // A value past a field's range finds nothing in its bit set, which
        // carries into the next larger field below.
        loop {
            if y > last_year {
                return None;
            }
            let Some(m) = next_in(self.months, mo) else {
                (y, mo, d, h, mi, s) = (y + 1, 1, 1, 0, 0, 0);
                continue;
            };
            if m != mo {
                (mo, d, h, mi, s) = (m, 1, 0, 0, 0);
            }
            let Some(day) = (d..=days_in_month(y, mo)).find(|&d| self.day_matches(y, mo, d)) else {
                (mo, d, h, mi, s) = (mo + 1, 1, 0, 0, 0);
                continue;
            };
            if day != d {
                (d, h, mi, s) = (day, 0, 0, 0);
            }
            let Some(hour) = next_in(self.hours, h) else {
                (d, h, mi, s) = (d + 1, 0, 0, 0);
                continue;
            };
            if hour != h {
                (h, mi, s) = (hour, 0, 0);
            }
            let Some(minute) = next_in(self.minutes, mi) else {
                (h, mi, s) = (h + 1, 0, 0);
                continue;
            };
            if minute != mi {
                (mi, s) = (minute, 0);
            }
            let Some(second) = next_in(self.seconds, s) else {
                (mi, s) = (mi + 1, 0);
                continue;
            };
            s = second;
            if let Some(t) = instant(tz, y, mo, d, h, mi, s)? {
                if t > after {
                    return Some(t);
                }
            }
            // Skipped by a daylight-saving gap, or the first occurrence of
            // a repeated hour that `after` is already past.
            s += 1;
        }
    }

    fn day_matches(&self, y: i32, m: u32, d: u32) -> bool {
        let dom = has(self.days, d);
        let dow = has(self.weekdays, weekday(y, m, d));
        if self.either_day {
            dom || dow
        } else {
            dom && dow
        }
    }
}

impl FromStr for Schedule {
    type Err = String;

    fn from_str(s: &str) -> Result<Schedule, String> {
        Schedule::parse(s)
    }
}

/// The schedule as written, without surrounding whitespace.
impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The time zone a schedule is read in: a CronJob's `spec.timeZone`, UTC
/// when it is unset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zone(TimeZone);

impl Zone {
    /// Coordinated Universal Time, which has no daylight saving.
    pub fn utc() -> Zone {
        Zone(TimeZone::UTC)
    }

    /// The IANA time zone `name` (`Europe/Madrid`); `""` means UTC.
    pub fn named(name: &str) -> Result<Zone, String> {
        if name.is_empty() || name == "UTC" || name == "Etc/UTC" {
            return Ok(Zone::utc());
        }
        TimeZone::get(name).map(Zone).map_err(|_| {
            format!("unknown time zone {name:?}: use an IANA name such as Europe/Madrid or UTC")
        })
    }
}

impl Default for Zone {
    fn default() -> Zone {
        Zone::utc()
    }
}

/// Parses one field into the bit set of values it matches, naming the field
/// in any error.
fn parse_field(field: &Field, text: &str) -> Result<u64, String> {
    let mut bits = 0;
    for item in text.split(',') {
        let item_bits = if item.is_empty() {
            Err("an empty item: remove the extra comma".to_string())
        } else {
            parse_item(field, item)
        };
        bits |= item_bits.map_err(|e| format!("{} field {text:?}: {e}", field.name))?;
    }
    Ok(bits)
}

/// One comma-separated item: `*`, `?`, `v`, `a-b`, each optionally `/step`.
fn parse_item(field: &Field, item: &str) -> Result<u64, String> {
    let (base, step) = match item.split_once('/') {
        Some((base, step)) => (base, Some(step)),
        None => (item, None),
    };
    let stepped = step.is_some();
    let step = match step {
        None => 1,
        Some(s) if s.contains('/') => {
            return Err(format!(
                "{item:?} has more than one '/': write a single step, as in */5"
            ))
        }
        Some(s) if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) => {
            return Err(format!(
                "step {s:?} in {item:?} is not a number: write a whole number after '/', as in */5"
            ))
        }
        Some(s) => match s.parse::<u32>() {
            Ok(0) => return Err(format!("step 0 in {item:?}: a step must be at least 1")),
            Ok(n) => n,
            // A step longer than any field matches only the start.
            Err(_) => u32::MAX,
        },
    };
    let (lo, hi) = if base == "*" || base == "?" {
        if base == "?" && !field.day {
            return Err(
                "'?' is only allowed in the day-of-month and day-of-week fields: use *".into(),
            );
        }
        (field.min, field.wild_max)
    } else if let Some((a, b)) = base.split_once('-') {
        let a = parse_value(field, a, item)?;
        let mut b = parse_value(field, b, item)?;
        // Sunday may close a weekday range: FRI-SUN.
        if field.weekday && b == 0 && a > 0 {
            b = 7;
        }
        if a > b {
            return Err(format!(
                "range {base:?} runs backwards: write the smaller value first, or list both \
                 ends with a comma"
            ));
        }
        (a, b)
    } else {
        let a = parse_value(field, base, item)?;
        // `a/n` runs from a to the end of the field.
        if stepped {
            (a, field.wild_max.max(a))
        } else {
            (a, a)
        }
    };
    let mut bits = 0u64;
    let mut v = lo;
    while v <= hi {
        // 7 is Sunday, like 0.
        let bit = if field.weekday && v == 7 { 0 } else { v };
        bits |= 1 << bit;
        match v.checked_add(step) {
            Some(next) => v = next,
            None => break,
        }
    }
    Ok(bits)
}

/// A number or (for months and weekdays) a three-letter English name.
fn parse_value(field: &Field, text: &str, item: &str) -> Result<u32, String> {
    let range = format!("{}-{}", field.min, field.max);
    if text.is_empty() {
        return Err(format!(
            "{item:?} is missing a value: write a number in the range {range}"
        ));
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return match text.parse::<u32>() {
            Ok(v) if (field.min..=field.max).contains(&v) => Ok(v),
            _ => Err(format!("{text} is out of range {range}")),
        };
    }
    if let Some(i) = field
        .names
        .iter()
        .position(|n| n.eq_ignore_ascii_case(text))
    {
        return Ok(field.min + i as u32);
    }
    let names = field.names_hint;
    let quartz = if text.contains(['#', 'L', 'W', 'l', 'w']) {
        " (the Quartz extensions L, W and # are not supported)"
    } else {
        ""
    };
    Err(format!(
        "{text:?} is not a value: write a number in the range {range}{names}{quartz}"
    ))
}

fn has(bits: u64, v: u32) -> bool {
    v < 64 && bits & (1 << v) != 0
}

/// The smallest value in `bits` at or above `from`.
fn next_in(bits: u64, from: u32) -> Option<u32> {
    if from >= 64 {
        return None;
    }
    let rest = bits & (u64::MAX << from);
    (rest != 0).then(|| rest.trailing_zeros())
}

fn is_leap(y: i32) -> bool {
    y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)
}

fn days_in_month(y: i32, m: u32) -> u32 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// The day of the week, Sunday = 0 (Zeller-style, via days since the epoch).
fn weekday(y: i32, m: u32, d: u32) -> u32 {
    let (y, m, d) = (i64::from(y), i64::from(m), i64::from(d));
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    // 1970-01-01 was a Thursday.
    u32::try_from((days + 4).rem_euclid(7)).unwrap_or(0)
}

/// The instant of a civil time in `tz`: `Some(None)` if it falls in a
/// daylight-saving gap, the first occurrence if it happens twice, and
/// `None` if it is outside the supported years.
fn instant(
    tz: &TimeZone,
    y: i32,
    mo: u32,
    d: u32,
    h: u32,
    mi: u32,
    s: u32,
) -> Option<Option<Time>> {
    let dt = DateTime::new(
        i16::try_from(y).ok()?,
        i8::try_from(mo).ok()?,
        i8::try_from(d).ok()?,
        i8::try_from(h).ok()?,
        i8::try_from(mi).ok()?,
        i8::try_from(s).ok()?,
        0,
    )
    .ok()?;
    let offset = match tz.to_ambiguous_timestamp(dt).offset() {
        AmbiguousOffset::Unambiguous { offset } => offset,
        AmbiguousOffset::Fold { before, .. } => before,
        AmbiguousOffset::Gap { .. } => return Some(None),
    };
    Some(Some(Time(offset.to_timestamp(dt).ok()?.as_millisecond())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Time {
        Time::parse_rfc3339(s).unwrap_or_else(|| panic!("bad test time {s}"))
    }

    fn sched(s: &str) -> Schedule {
        Schedule::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn zone(name: &str) -> Zone {
        Zone::named(name).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The next `n` runs after `after`, in UTC.
    fn runs(s: &str, after: &str, z: &Zone, n: usize) -> Vec<String> {
        let s = sched(s);
        let mut at = t(after);
        let mut out = Vec::new();
        for _ in 0..n {
            match s.next_after(at, z) {
                Some(next) => {
                    out.push(next.to_string().replace(".000Z", "Z"));
                    at = next;
                }
                None => break,
            }
        }
        out
    }

    #[test]
    fn parses_valid_schedules() {
        for (text, seconds) in [
            ("* * * * *", false),
            ("*/15 * * * *", false),
            ("0 0 * * 0", false),
            ("0 0 * * 7", false),
            ("5,10-20/5,45 1-3 1,15 JAN-mar * ", false),
            ("0 9 ? * MON-FRI", false),
            ("0 9 * * fri-sun", false),
            ("0 9 1/10 */2 ?", false),
            ("*/2 * * * * *", true),
            ("30 0 12 * * *", true),
            ("@hourly", false),
            ("@DAILY", false),
            ("@annually", false),
        ] {
            assert_eq!(sched(text).has_seconds(), seconds, "{text}");
            assert_eq!(
                text.parse::<Schedule>().map(|s| s.to_string()),
                Ok(text.trim().into())
            );
        }
    }

    #[test]
    fn rejects_invalid_schedules_saying_what_to_write() {
        for (text, wanted) in [
            ("", "empty schedule"),
            ("   ", "empty schedule"),
            ("61 * * * *", "minute field \"61\": 61 is out of range 0-59"),
            ("* * *", "expected 5 fields (minute hour day-of-month month day-of-week) or 6 with seconds first, found 3"),
            ("* * * * * * *", "found 7"),
            ("*/0 * * * *", "step 0 in \"*/0\": a step must be at least 1"),
            ("TZ=Europe/Madrid 0 * * * *", "spec.timeZone"),
            ("CRON_TZ=UTC 0 * * * *", "spec.timeZone"),
            ("0 24 * * *", "hour field \"24\": 24 is out of range 0-23"),
            ("0 0 0 * *", "day-of-month field \"0\": 0 is out of range 1-31"),
            ("0 0 32 * *", "out of range 1-31"),
            ("0 0 * 13 *", "month field \"13\""),
            ("0 0 * * 8", "day-of-week field \"8\": 8 is out of range 0-7"),
            ("0 0 * FOO *", "month name JAN-DEC"),
            ("0 0 * * MONDAY", "weekday name SUN-SAT"),
            ("? * * * *", "only allowed in the day-of-month and day-of-week"),
            ("5-1 * * * *", "runs backwards"),
            ("1,,2 * * * *", "remove the extra comma"),
            ("*/x * * * *", "step \"x\" in \"*/x\" is not a number"),
            ("*/5/2 * * * *", "more than one '/'"),
            ("-5 * * * *", "missing a value"),
            ("0 0 L * *", "Quartz"),
            ("0 0 * * 5#3", "Quartz"),
            ("@reboot", "unknown macro \"@reboot\""),
            ("@every 5m", "@every is not supported"),
            ("99999999999999999999 * * * *", "out of range 0-59"),
        ] {
            match Schedule::parse(text) {
                Ok(_) => panic!("{text:?} parsed"),
                Err(e) => assert!(e.contains(wanted), "{text:?}: {e:?} lacks {wanted:?}"),
            }
        }
    }

    #[test]
    fn never_panics_on_garbage() {
        let garbage = [
            "\0",
            "@",
            "@@",
            "*",
            "/",
            "-",
            ",",
            "*/",
            "/*",
            "--",
            "1-",
            "-1",
            "1--2",
            "*-*",
            "*/-1",
            "**",
            "?/?",
            "ÿ ÿ ÿ ÿ ÿ",
            "é * * * *",
            "0 0 * * SUNDAY",
            "1/0 * * * *",
            "4294967295 * * * *",
            "0/4294967295 * * * *",
            "* * * * 0-7/4294967296",
            "\u{200b} * * * *",
            "TZ=",
            "CRON_TZ=",
            "@yearly extra",
            "1 2 3 4 5 6 7 8",
            "0-59/1,0-59/2 0-23 1-31 1-12 0-7",
            "* * * * * ?",
            "7-7 * * * 7-0",
        ];
        for g in garbage {
            if let Ok(s) = Schedule::parse(g) {
                let _ = s.next_after(Time(0), &Zone::utc());
            }
        }
        // Every short string over the cron alphabet.
        let alphabet = [
            "*", "?", "/", "-", ",", "0", "7", "9", "L", "a", " ", "\t", "@",
        ];
        let mut stack = vec![String::new()];
        while let Some(s) = stack.pop() {
            if let Ok(parsed) = Schedule::parse(&s) {
                let _ = parsed.next_after(Time(0), &Zone::utc());
            }
            if s.len() < 4 {
                stack.extend(alphabet.iter().map(|c| format!("{s}{c}")));
            }
        }
        let s = sched("* * * * *");
        for at in [i64::MIN, i64::MAX, -1, 253_402_300_799_000] {
            let _ = s.next_after(Time(at), &Zone::utc());
            let _ = s.missed_since(Time(at), Time(i64::MAX), &Zone::utc(), 3);
            let _ = s.missed_since(Time(i64::MIN), Time(at), &Zone::utc(), 3);
        }
    }

    #[test]
    fn next_after_crosses_every_boundary() {
        let utc = Zone::utc();
        for (schedule, after, next) in [
            // minute, hour, day, month and year boundaries
            ("* * * * *", "2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z"),
            (
                "* * * * *",
                "2026-01-01T00:00:59.999Z",
                "2026-01-01T00:01:00Z",
            ),
            ("* * * * *", "2026-01-01T00:59:30Z", "2026-01-01T01:00:00Z"),
            ("30 * * * *", "2026-01-01T23:45:00Z", "2026-01-02T00:30:00Z"),
            ("0 0 * * *", "2026-01-31T12:00:00Z", "2026-02-01T00:00:00Z"),
            ("0 0 1 * *", "2026-12-15T00:00:00Z", "2027-01-01T00:00:00Z"),
            ("@yearly", "2026-01-01T00:00:00Z", "2027-01-01T00:00:00Z"),
            ("@monthly", "2026-04-30T23:59:59Z", "2026-05-01T00:00:00Z"),
            ("@weekly", "2026-01-01T00:00:00Z", "2026-01-04T00:00:00Z"),
            ("@daily", "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"),
            ("@midnight", "2025-12-31T23:59:59Z", "2026-01-01T00:00:00Z"),
            (
                "@hourly",
                "2026-01-01T10:00:00.001Z",
                "2026-01-01T11:00:00Z",
            ),
            // day 31 skips the months without one
            ("0 0 31 * *", "2026-01-31T00:00:00Z", "2026-03-31T00:00:00Z"),
            // 29 February only in leap years
            ("0 0 29 2 *", "2026-01-01T00:00:00Z", "2028-02-29T00:00:00Z"),
            ("0 0 29 2 *", "2024-02-29T00:00:00Z", "2028-02-29T00:00:00Z"),
            ("0 0 29 2 *", "1999-03-01T00:00:00Z", "2000-02-29T00:00:00Z"),
            // names and 7 as Sunday (2026-01-04 is a Sunday)
            ("0 12 * * 7", "2026-01-01T00:00:00Z", "2026-01-04T12:00:00Z"),
            (
                "0 12 * * SUN",
                "2026-01-01T00:00:00Z",
                "2026-01-04T12:00:00Z",
            ),
            (
                "0 12 * * mon-fri",
                "2026-01-02T13:00:00Z",
                "2026-01-05T12:00:00Z",
            ),
            (
                "0 12 * * FRI-SUN",
                "2026-01-05T00:00:00Z",
                "2026-01-09T12:00:00Z",
            ),
            (
                "0 0 1 Jun *",
                "2026-01-01T00:00:00Z",
                "2026-06-01T00:00:00Z",
            ),
            // either day field: the 13th or a Friday
            (
                "0 0 13 * FRI",
                "2026-01-01T00:00:00Z",
                "2026-01-02T00:00:00Z",
            ),
            (
                "0 0 13 * FRI",
                "2026-01-09T00:00:00Z",
                "2026-01-13T00:00:00Z",
            ),
            // a starred day field makes both apply: a 13th on Friday or Sunday
            (
                "0 0 13 * */5",
                "2026-01-01T00:00:00Z",
                "2026-02-13T00:00:00Z",
            ),
            (
                "0 0 */1 * FRI",
                "2026-01-01T00:00:00Z",
                "2026-01-02T00:00:00Z",
            ),
            (
                "0 0 ? * FRI",
                "2026-01-03T00:00:00Z",
                "2026-01-09T00:00:00Z",
            ),
            // a/n runs to the end of the field
            (
                "50/5 * * * *",
                "2026-01-01T00:56:00Z",
                "2026-01-01T01:50:00Z",
            ),
        ] {
            let got = sched(schedule).next_after(t(after), &utc);
            assert_eq!(got, Some(t(next)), "{schedule} after {after}");
        }
    }

    #[test]
    fn steps_and_seconds() {
        let utc = Zone::utc();
        assert_eq!(
            runs("*/15 * * * *", "2026-01-01T00:50:00Z", &utc, 3),
            [
                "2026-01-01T01:00:00Z",
                "2026-01-01T01:15:00Z",
                "2026-01-01T01:30:00Z"
            ]
        );
        assert_eq!(
            runs("*/2 * * * * *", "2026-01-01T00:00:57.500Z", &utc, 3),
            [
                "2026-01-01T00:00:58Z",
                "2026-01-01T00:01:00Z",
                "2026-01-01T00:01:02Z"
            ]
        );
        assert_eq!(
            runs("10-20/5 0 0 * * *", "2026-01-01T00:00:00Z", &utc, 4),
            [
                "2026-01-01T00:00:10Z",
                "2026-01-01T00:00:15Z",
                "2026-01-01T00:00:20Z",
                "2026-01-02T00:00:10Z"
            ]
        );
    }

    #[test]
    fn time_zones_and_daylight_saving() {
        let madrid = zone("Europe/Madrid");
        // Winter is UTC+1, summer UTC+2.
        assert_eq!(
            runs("0 9 * * *", "2026-01-10T00:00:00Z", &madrid, 1),
            ["2026-01-10T08:00:00Z"]
        );
        assert_eq!(
            runs("0 9 * * *", "2026-07-10T00:00:00Z", &madrid, 1),
            ["2026-07-10T07:00:00Z"]
        );
        // 2026-03-29 02:30 does not exist in Madrid: that day is skipped.
        assert_eq!(
            runs("30 2 * * *", "2026-03-28T12:00:00Z", &madrid, 2),
            ["2026-03-30T00:30:00Z", "2026-03-31T00:30:00Z"]
        );
        assert_eq!(
            runs("*/30 * * * *", "2026-03-29T00:15:00Z", &madrid, 3),
            [
                "2026-03-29T00:30:00Z",
                "2026-03-29T01:00:00Z",
                "2026-03-29T01:30:00Z"
            ]
        );
        // 2026-10-25 02:30 happens twice (00:30Z and 01:30Z): it fires once.
        assert_eq!(
            runs("30 2 * * *", "2026-10-24T12:00:00Z", &madrid, 2),
            ["2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"]
        );
        assert_eq!(
            runs("*/30 * * * *", "2026-10-24T23:45:00Z", &madrid, 4),
            [
                "2026-10-25T00:00:00Z",
                "2026-10-25T00:30:00Z",
                "2026-10-25T02:00:00Z",
                "2026-10-25T02:30:00Z"
            ]
        );
        // From inside the repeated hour, the next run is after it.
        assert_eq!(
            runs("*/30 * * * *", "2026-10-25T01:10:00Z", &madrid, 1),
            ["2026-10-25T02:00:00Z"]
        );
        assert_eq!(
            runs("* * * * * *", "2026-10-25T01:59:59Z", &madrid, 1),
            ["2026-10-25T02:00:00Z"]
        );
    }

    #[test]
    fn names_time_zones() {
        assert_eq!(Zone::named(""), Ok(Zone::utc()));
        assert_eq!(Zone::named("UTC"), Ok(Zone::utc()));
        assert_eq!(Zone::named("Etc/UTC"), Ok(Zone::utc()));
        assert!(Zone::named("America/New_York").is_ok());
        assert_eq!(
            Zone::named("Mars/Olympus"),
            Err(
                "unknown time zone \"Mars/Olympus\": use an IANA name such as Europe/Madrid or UTC"
                    .into()
            )
        );
        assert!(Zone::named("../../etc/passwd").is_err());
    }

    #[test]
    fn never_matching_schedules_give_up_quickly() {
        let utc = Zone::utc();
        let started = std::time::Instant::now();
        for s in ["0 0 30 2 *", "0 0 31 4,6,9,11 *", "* * 31 2 *"] {
            assert_eq!(
                sched(s).next_after(t("2026-01-01T00:00:00Z"), &utc),
                None,
                "{s}"
            );
            assert_eq!(
                sched(s).missed_since(Time(0), t("2026-01-01T00:00:00Z"), &utc, 100),
                (0, None)
            );
        }
        // 29 February is eight years apart across 2100: beyond the search.
        assert_eq!(
            sched("0 0 29 2 *").next_after(t("2096-03-01T00:00:00Z"), &utc),
            None
        );
        // Feb 29 that is also a Sunday: 2032-02-29 is one.
        assert_eq!(
            sched("0 0 29 2 */7").next_after(t("2027-06-01T00:00:00Z"), &utc),
            Some(t("2032-02-29T00:00:00Z"))
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn counts_missed_runs() {
        let utc = Zone::utc();
        let hourly = sched("0 * * * *");
        let from = t("2026-01-01T00:00:00Z");
        let until = t("2026-01-01T05:30:00Z");
        let five = t("2026-01-01T05:00:00Z");
        assert_eq!(hourly.missed_since(from, until, &utc, 100), (5, Some(five)));
        // Limited count, but still the latest run.
        assert_eq!(hourly.missed_since(from, until, &utc, 3), (3, Some(five)));
        assert_eq!(hourly.missed_since(from, until, &utc, 5), (5, Some(five)));
        assert_eq!(hourly.missed_since(from, until, &utc, 0), (0, Some(five)));
        // (from, until]: until counts, from does not.
        assert_eq!(hourly.missed_since(from, five, &utc, 100), (5, Some(five)));
        assert_eq!(
            hourly.missed_since(t("2026-01-01T01:00:00Z"), five, &utc, 100),
            (4, Some(five))
        );
        assert_eq!(
            hourly.missed_since(from, t("2026-01-01T00:59:59Z"), &utc, 100),
            (0, None)
        );
        assert_eq!(hourly.missed_since(until, from, &utc, 100), (0, None));
        assert_eq!(hourly.missed_since(from, from, &utc, 100), (0, None));
        // Years of minutes since the epoch: the count stops at the limit
        // and the latest is still exact.
        let started = std::time::Instant::now();
        let minutely = sched("* * * * *");
        let now = t("2026-05-17T10:42:31.250Z");
        assert_eq!(
            minutely.missed_since(Time(0), now, &utc, 101),
            (101, Some(t("2026-05-17T10:42:00Z")))
        );
        let yearly = sched("@yearly");
        assert_eq!(
            yearly.missed_since(Time(0), now, &utc, 101),
            (56, Some(t("2026-01-01T00:00:00Z")))
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        // In a time zone, across the repeated hour: 02:00 and 02:30 count once.
        let madrid = zone("Europe/Madrid");
        assert_eq!(
            sched("*/30 * * * *").missed_since(
                t("2026-10-24T23:45:00Z"),
                t("2026-10-25T02:00:00Z"),
                &madrid,
                100
            ),
            (3, Some(t("2026-10-25T02:00:00Z")))
        );
    }
}
