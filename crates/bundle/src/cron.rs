//! The manifest's cron schedules: standard 5-field syntax (minute, hour, day of month, month,
//! day of week), in UTC, checked against one minute at a time.
//!
//! Owns: parsing a schedule and saying whether a UTC minute matches it. Must not touch:
//! scheduling (the runner's jobs fire what matches), the clock (callers pass unix minutes).
//! Hand-written: about a hundred lines with the calendar arithmetic, where the cron crates parse
//! 6- or 7-field Quartz syntax with seconds, or bring a date library for one conversion.
//!
//! Syntax per field: `*`, a number, a range `a-b`, a step `*/n` or `a-b/n` or `a/n` (from `a` to
//! the field's end), and comma lists of those. Months and week days also take English names
//! (`jan`…`dec`, `sun`…`sat`). Day of week is 0–7, 0 and 7 both Sunday. As in Vixie cron, when
//! both day fields are restricted a day matches if either does.

/// A parsed schedule: the allowed values of each field as bit sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    /// Whether day of month / day of week were `*` (for the either-or rule).
    any_day: bool,
    any_weekday: bool,
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

impl Schedule {
    /// Parses `s`; the error says which field is wrong and how.
    pub fn parse(s: &str) -> Result<Self, String> {
        let fields: Vec<&str> = s.split_whitespace().collect();
        let [min, hour, dom, mon, dow] = fields[..] else {
            return Err(format!(
                "'{s}' has {} fields; a schedule has 5: minute hour day-of-month month day-of-week (e.g. '*/15 * * * *')",
                fields.len()
            ));
        };
        let weekdays = field(dow, "day of week", 0, 7, &WEEKDAYS, 0)?;
        Ok(Schedule {
            minutes: field(min, "minute", 0, 59, &[], 0)?,
            hours: field(hour, "hour", 0, 23, &[], 0)?,
            days: field(dom, "day of month", 1, 31, &[], 0)?,
            months: field(mon, "month", 1, 12, &MONTHS, 1)?,
            // 7 is Sunday too.
            weekdays: (weekdays | (weekdays >> 7)) & 0x7f,
            any_day: dom == "*",
            any_weekday: dow == "*",
        })
    }

    /// Whether the UTC minute `unix_minute` (seconds since the epoch / 60) matches.
    pub fn matches(&self, unix_minute: u64) -> bool {
        let minute = unix_minute % 60;
        let hour = (unix_minute / 60) % 24;
        let days = unix_minute / 1440;
        let (_, month, day) = civil_from_days(days);
        // 1970-01-01 was a Thursday (4).
        let weekday = (days + 4) % 7;
        let bit = |set: u64, v: u64| set & (1 << v) != 0;
        let day_ok = match (self.any_day, self.any_weekday) {
            (true, true) => true,
            (false, true) => bit(self.days, day),
            (true, false) => bit(self.weekdays, weekday),
            (false, false) => bit(self.days, day) || bit(self.weekdays, weekday),
        };
        bit(self.minutes, minute) && bit(self.hours, hour) && bit(self.months, month) && day_ok
    }
}

/// One field as a bit set of its allowed values `lo..=hi`. `names[i]` stands for `i + base`.
fn field(s: &str, what: &str, lo: u64, hi: u64, names: &[&str], base: u64) -> Result<u64, String> {
    let err = |m: String| format!("{what} '{s}': {m}");
    let value = |v: &str| -> Result<u64, String> {
        if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(v)) {
            return Ok(i as u64 + base);
        }
        let n: u64 = v.parse().map_err(|_| {
            err(format!(
                "'{v}' is not a number{}",
                if names.is_empty() { "" } else { " or a name" }
            ))
        })?;
        if n < lo || n > hi {
            return Err(err(format!("{n} is outside {lo}-{hi}")));
        }
        Ok(n)
    };
    let mut set = 0u64;
    for part in s.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, st)) => {
                let st: u64 = st
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| err(format!("step '{st}' must be a number above 0")))?;
                (r, st)
            }
            None => (part, 1),
        };
        let (from, to) = if range == "*" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a)?, value(b)?)
        } else {
            let a = value(range)?;
            // `a/n` runs from a to the end of the field.
            (a, if part.contains('/') { hi } else { a })
        };
        if from > to {
            return Err(err(format!("range {from}-{to} runs backwards")));
        }
        let mut v = from;
        while v <= to {
            set |= 1 << v;
            v += step;
        }
    }
    Ok(set)
}

/// (year, month 1–12, day 1–31) of a day count since 1970-01-01, proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year as u64, month as u64, day as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unix minute of a UTC date and time.
    fn at(y: i64, mo: u64, d: u64, h: u64, mi: u64) -> u64 {
        // Days from civil (inverse of civil_from_days), for the tests only.
        let y = if mo <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let m = mo as i64;
        let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = (era * 146_097 + doe - 719_468) as u64;
        days * 1440 + h * 60 + mi
    }

    #[test]
    fn calendar_arithmetic() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(at(2026, 12, 5, 4, 30) / 1440, 20_792);
        assert_eq!(civil_from_days(20_792), (2026, 12, 5));
    }

    #[test]
    fn fields_steps_ranges_lists_and_names() {
        let s = Schedule::parse("*/15 9-17 * * mon-fri").unwrap();
        // 2026-12-07 is a Monday.
        assert!(s.matches(at(2026, 12, 7, 9, 0)));
        assert!(s.matches(at(2026, 12, 7, 17, 45)));
        assert!(!s.matches(at(2026, 12, 7, 17, 50)));
        assert!(!s.matches(at(2026, 12, 7, 18, 0)));
        assert!(!s.matches(at(2026, 12, 6, 10, 0)), "a Sunday");
        let every = Schedule::parse("* * * * *").unwrap();
        assert!(every.matches(at(2026, 12, 5, 4, 31)));
        let list = Schedule::parse("0,30 0 1 jan,JUL *").unwrap();
        assert!(list.matches(at(2027, 7, 1, 0, 30)));
        assert!(!list.matches(at(2027, 6, 1, 0, 30)));
        let from = Schedule::parse("10/20 * * * *").unwrap();
        assert!(from.matches(at(2026, 1, 1, 0, 50)) && !from.matches(at(2026, 1, 1, 0, 0)));
    }

    #[test]
    fn sunday_is_0_and_7_and_restricted_days_match_either() {
        for s in ["0 12 * * 0", "0 12 * * 7", "0 12 * * sun"] {
            assert!(
                Schedule::parse(s).unwrap().matches(at(2026, 12, 6, 12, 0)),
                "{s}"
            );
        }
        // The 13th, or any Friday.
        let s = Schedule::parse("0 0 13 * 5").unwrap();
        assert!(s.matches(at(2026, 12, 13, 0, 0)), "a Sunday the 13th");
        assert!(s.matches(at(2026, 12, 11, 0, 0)), "a Friday the 11th");
        assert!(!s.matches(at(2026, 12, 12, 0, 0)));
    }

    #[test]
    fn bad_schedules_say_what_is_wrong() {
        for (s, want) in [
            ("* * * *", "has 4 fields"),
            ("60 * * * *", "minute '60': 60 is outside 0-59"),
            ("* 24 * * *", "hour"),
            ("* * 0 * *", "day of month '0'"),
            ("* * * 13 *", "month '13'"),
            ("* * * * 8", "day of week '8'"),
            ("*/0 * * * *", "step '0'"),
            ("5-1 * * * *", "runs backwards"),
            ("x * * * *", "'x' is not a number"),
            ("* * * foo *", "not a number or a name"),
        ] {
            let e = Schedule::parse(s).unwrap_err();
            assert!(e.contains(want), "{s}: {e}");
        }
    }
}
