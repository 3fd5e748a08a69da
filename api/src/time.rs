//! Timestamps: milliseconds since the Unix epoch, printed as RFC 3339 in
//! YAML and JSON and kept as a plain integer on the wire.

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// A point in time with millisecond precision (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Time(pub i64);

impl Time {
    /// The current wall-clock time.
    pub fn now() -> Time {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Time(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }

    /// Milliseconds since the Unix epoch.
    pub fn millis(self) -> i64 {
        self.0
    }

    /// Milliseconds elapsed from `earlier` to `self` (negative if `earlier` is later).
    pub fn since(self, earlier: Time) -> i64 {
        self.0.saturating_sub(earlier.0)
    }

    /// Parses `YYYY-MM-DDTHH:MM:SS[.fff]Z`.
    pub fn parse_rfc3339(s: &str) -> Option<Time> {
        let b = s.as_bytes();
        if b.len() < 20 || !s.ends_with('Z') {
            return None;
        }
        let num = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse().ok() };
        let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
        let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
        if b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
            return None;
        }
        if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
            return None;
        }
        let mut ms = 0;
        let frac = &s[19..s.len() - 1];
        if let Some(f) = frac.strip_prefix('.') {
            if f.is_empty() || !f.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            let f3: String = f.chars().chain("000".chars()).take(3).collect();
            ms = f3.parse().ok()?;
        } else if !frac.is_empty() {
            return None;
        }
        let days = days_from_civil(y, mo, d);
        Some(Time(((days * 24 + h) * 60 + mi) * 60_000 + se * 1000 + ms))
    }
}

// Howard Hinnant's civil-calendar algorithms (public domain descriptions).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.rem_euclid(1000);
        let secs = self.0.div_euclid(1000);
        let days = secs.div_euclid(86_400);
        let sod = secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        write!(
            f,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
            sod / 3600,
            (sod / 60) % 60,
            sod % 60
        )
    }
}

impl schemars::JsonSchema for Time {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Time".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "format": "date-time",
            "description": "A time in RFC 3339, e.g. 2026-12-05T10:00:00Z."
        })
    }
}

impl Serialize for Time {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            s.serialize_i64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Time {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Time, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            Time::parse_rfc3339(&s).ok_or_else(|| {
                de::Error::custom(format!(
                    "{s:?} is not a timestamp like 2026-01-02T03:04:05Z"
                ))
            })
        } else {
            i64::deserialize(d).map(Time)
        }
    }
}

/// Formats an age the way `kubectl get` does: `45s`, `12m`, `3h`, `5d`.
pub fn age(from: Time, now: Time) -> String {
    let s = now.since(from).max(0) / 1000;
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_rfc3339() {
        for ms in [0, 1, 999, 1_764_000_000_123, 951_782_400_000, -86_400_000] {
            let t = Time(ms);
            assert_eq!(Time::parse_rfc3339(&t.to_string()), Some(t), "{t}");
        }
        assert_eq!(Time(0).to_string(), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            Time::parse_rfc3339("2000-02-29T12:00:00Z").map(|t| t.to_string()),
            Some("2000-02-29T12:00:00.000Z".into())
        );
    }

    #[test]
    fn rejects_garbage() {
        for s in [
            "",
            "2020",
            "2020-13-01T00:00:00Z",
            "2020-01-01 00:00:00Z",
            "2020-01-01T00:00:00.Z",
            "ÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿZ",
        ] {
            assert_eq!(Time::parse_rfc3339(s), None, "{s}");
        }
    }

    #[test]
    fn ages_print_like_kubectl() {
        assert_eq!(age(Time(0), Time(5_000)), "5s");
        assert_eq!(age(Time(0), Time(600_000)), "10m");
        assert_eq!(age(Time(0), Time(4 * 86_400_000)), "4d");
    }
}
