//! Times on the command line: `--since 24h`, `--since 2024-05-01`, `--older-than 30d`.
//!
//! Parsed without a date library: the formats are few, and the engine stores plain Unix
//! milliseconds.

use std::time::{SystemTime, UNIX_EPOCH};

const SECOND_MS: u64 = 1_000;
const MINUTE_MS: u64 = 60 * SECOND_MS;
const HOUR_MS: u64 = 60 * MINUTE_MS;
const DAY_MS: u64 = 24 * HOUR_MS;

/// A point in time as the user wrote it: relative to now, or absolute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// This long before now.
    Ago {
        /// The duration.
        ms: u64,
    },
    /// This Unix time.
    At {
        /// ms since the Unix epoch.
        ms: u64,
    },
}

impl When {
    /// The Unix time in ms, relative ones measured back from `now_ms`.
    pub fn resolve(self, now_ms: u64) -> u64 {
        match self {
            When::Ago { ms } => now_ms.saturating_sub(ms),
            When::At { ms } => ms,
        }
    }
}

/// The wall clock, in ms since the Unix epoch. The CLI is the edge where a clock may be read.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Parses `--since`: a duration (`90m`, `24h`, `7d`, `2w`) back from now, or a UTC date or
/// date-time (`2024-05-01`, `2024-05-01T12:30`, `2024-05-01T12:30:00Z`, with an optional
/// `+02:00`-style offset).
pub fn parse_when(s: &str) -> Result<When, String> {
    if let Ok(ms) = parse_duration_ms(s) {
        return Ok(When::Ago { ms });
    }
    parse_date_ms(s).map(|ms| When::At { ms }).ok_or_else(|| {
        format!("'{s}' is neither a duration (24h, 7d, 2w, 90m, 30s) nor a date (2024-05-01, 2024-05-01T12:30:00Z)")
    })
}

/// Parses a duration: a whole number and a unit, `s`, `m`, `h`, `d` or `w`.
pub fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let unit_ms = match unit {
        "s" => SECOND_MS,
        "m" => MINUTE_MS,
        "h" => HOUR_MS,
        "d" => DAY_MS,
        "w" => 7 * DAY_MS,
        _ => {
            return Err(format!(
                "'{s}' is not a duration: use a number and s, m, h, d or w (e.g. 30d)"
            ))
        }
    };
    let number: u64 = number
        .parse()
        .map_err(|_| format!("'{s}' is not a duration: use e.g. 30d"))?;
    number
        .checked_mul(unit_ms)
        .ok_or_else(|| format!("'{s}' is too long"))
}

/// Parses `YYYY-MM-DD[(T| )HH:MM[:SS[.fff]]][Z|±HH:MM]` (UTC unless an offset says
/// otherwise) into Unix ms; `None` if malformed or before 1970.
fn parse_date_ms(s: &str) -> Option<u64> {
    let s = s.trim();
    let b = s.as_bytes();
    let digits = |from: usize, len: usize| -> Option<i64> {
        let part = s.get(from..from + len)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (year, month, day) = (digits(0, 4)?, digits(5, 2)?, digits(8, 2)?);
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    let mut seconds = 0i64;
    let mut millis = 0i64;
    let mut rest = &s[10..];
    if let Some(time) = rest.strip_prefix('T').or_else(|| rest.strip_prefix(' ')) {
        let t = time.as_bytes();
        if t.len() < 5 || t[2] != b':' {
            return None;
        }
        let (hour, minute) = (digits(11, 2)?, digits(14, 2)?);
        let mut used = 5;
        let mut second = 0;
        if t.get(5) == Some(&b':') {
            second = digits(17, 2)?;
            used = 8;
            if t.get(8) == Some(&b'.') {
                let frac: String = time[9..]
                    .chars()
                    .take_while(|c| c.is_ascii_digit())
                    .collect();
                if frac.is_empty() {
                    return None;
                }
                // Milliseconds: the first three digits, padded.
                let padded = format!("{frac:0<3}");
                millis = padded[..3].parse().ok()?;
                used = 9 + frac.len();
            }
        }
        if hour > 23 || minute > 59 || second > 60 {
            return None;
        }
        seconds = hour * 3_600 + minute * 60 + second;
        rest = &time[used..];
    }
    let offset_s = match rest {
        "" | "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let o = &rest[1..];
            if o.len() != 5 || o.as_bytes()[2] != b':' {
                return None;
            }
            let hours: i64 = o[..2].parse().ok()?;
            let minutes: i64 = o[3..].parse().ok()?;
            sign * (hours * 3_600 + minutes * 60)
        }
    };
    let total_ms =
        (days_from_civil(year, month, day) * 86_400 + seconds - offset_s) * 1_000 + millis;
    u64::try_from(total_ms).ok()
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("30d"), Ok(30 * DAY_MS));
        assert_eq!(parse_duration_ms("24h"), Ok(DAY_MS));
        assert_eq!(parse_duration_ms("90m"), Ok(90 * MINUTE_MS));
        assert_eq!(parse_duration_ms("2w"), Ok(14 * DAY_MS));
        assert_eq!(parse_duration_ms("0s"), Ok(0));
        for bad in ["", "d", "30", "30x", "-1d", "1.5d", "99999999999999999999d"] {
            assert!(parse_duration_ms(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn dates() {
        assert_eq!(parse_when("1970-01-01"), Ok(When::At { ms: 0 }));
        assert_eq!(
            parse_when("2023-11-14T22:13:20Z"),
            Ok(When::At {
                ms: 1_700_000_000_000
            })
        );
        assert_eq!(
            parse_when("2023-11-14 22:13:20.5"),
            Ok(When::At {
                ms: 1_700_000_000_500
            })
        );
        assert_eq!(
            parse_when("2023-11-14T22:13"),
            Ok(When::At {
                ms: 1_700_000_000_000 - 20_000
            })
        );
        assert_eq!(
            parse_when("2023-11-15T00:13:20+02:00"),
            Ok(When::At {
                ms: 1_700_000_000_000
            })
        );
        assert_eq!(
            parse_when("2000-02-29"),
            Ok(When::At {
                ms: 951_782_400_000
            })
        );
        assert_eq!(parse_when("7d"), Ok(When::Ago { ms: 7 * DAY_MS }));
        for bad in [
            "2023-02-29",
            "2023-13-01",
            "2023-1-01",
            "1969-12-31",
            "2023-11-14T25:00",
            "2023-11-14X",
            "yesterday",
            "2023-11-14T22:13:20.Z",
            "é023-11-14",
        ] {
            assert!(parse_when(bad).is_err(), "{bad}");
        }
        assert_eq!(When::Ago { ms: 10 }.resolve(100), 90);
        assert_eq!(When::Ago { ms: 1_000 }.resolve(100), 0);
    }
}
