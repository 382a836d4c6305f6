//! Wall-clock timestamps in the forms the Python worker writes: `datetime.isoformat()` of an
//! aware UTC time for `occurred_at` and diagnostics records, `logging`'s `asctime` for stderr.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now as Python's `datetime.now(timezone.utc).isoformat()`:
/// `2026-11-25T11:58:19.190912+00:00`, the fraction left out when it is zero.
pub fn now_iso() -> String {
    let (date, time, micros) = parts(SystemTime::now());
    if micros == 0 {
        format!("{date}T{time}+00:00")
    } else {
        format!("{date}T{time}.{micros:06}+00:00")
    }
}

/// Now as `logging`'s default `asctime` (in UTC): `2026-11-25 11:58:19,190`.
pub fn now_asctime() -> String {
    let (date, time, micros) = parts(SystemTime::now());
    format!("{date} {time},{:03}", micros / 1000)
}

/// (`YYYY-MM-DD`, `HH:MM:SS`, microseconds) of `t` in UTC.
fn parts(t: SystemTime) -> (String, String, u32) {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = i64::try_from(since.as_secs()).unwrap_or(i64::MAX);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    (
        format!("{y:04}-{m:02}-{d:02}"),
        format!("{:02}:{:02}:{:02}", rem / 3600, (rem % 3600) / 60, rem % 60),
        since.subsec_micros(),
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn civil_dates_and_shapes() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_665), (2026, 7, 31));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        let t = UNIX_EPOCH + Duration::from_micros(1_795_089_499_190_912);
        let (date, time, micros) = parts(t);
        assert_eq!(
            (date.as_str(), time.as_str(), micros),
            ("2026-11-19", "11:58:19", 190_912)
        );
        let iso = now_iso();
        assert!(
            iso.ends_with("+00:00") && iso.as_bytes()[10] == b'T',
            "{iso}"
        );
        assert_eq!(now_asctime().len(), "2026-11-25 11:58:19,190".len());
    }
}
