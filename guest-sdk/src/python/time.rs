//! Wall-clock timestamps in the forms Python writes: `datetime.isoformat()` of an aware UTC
//! time, and `logging`'s default `asctime`. One implementation of the calendar arithmetic for
//! the host's stores and the native worker alike.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now as ISO-8601 UTC with microseconds always written (`2026-11-25T11:58:19.190912+00:00`):
/// the form the host's stores keep, which sorts as text.
pub fn now_iso() -> String {
    iso_from_system_time(SystemTime::now())
}

/// `t` as ISO-8601 UTC with microseconds.
pub fn iso_from_system_time(t: SystemTime) -> String {
    iso_from_unix_micros(unix_micros(t))
}

/// Microseconds since the Unix epoch as ISO-8601 UTC with microseconds.
pub fn iso_from_unix_micros(micros: i64) -> String {
    let (date, time, frac) = parts(micros);
    format!("{date}T{time}.{frac:06}+00:00")
}

/// Now as Python's `datetime.now(timezone.utc).isoformat()`: the fraction is left out when
/// it is zero, as Python does.
pub fn now_isoformat() -> String {
    let (date, time, frac) = parts(unix_micros(SystemTime::now()));
    if frac == 0 {
        format!("{date}T{time}+00:00")
    } else {
        format!("{date}T{time}.{frac:06}+00:00")
    }
}

/// Now as `logging`'s default `asctime` (in UTC): `2026-11-25 11:58:19,190`.
pub fn now_asctime() -> String {
    let (date, time, frac) = parts(unix_micros(SystemTime::now()));
    format!("{date} {time},{:03}", frac / 1000)
}

/// Seconds since the Unix epoch, as Python's `time.time()`.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn unix_micros(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX),
    }
}

/// (`YYYY-MM-DD`, `HH:MM:SS`, microseconds) of a Unix time in microseconds, UTC.
fn parts(micros: i64) -> (String, String, i64) {
    let secs = micros.div_euclid(1_000_000);
    let frac = micros.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    (
        format!("{y:04}-{m:02}-{d:02}"),
        format!("{:02}:{:02}:{:02}", rem / 3600, (rem % 3600) / 60, rem % 60),
        frac,
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let m = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_forms() {
        assert_eq!(iso_from_unix_micros(0), "1970-01-01T00:00:00.000000+00:00");
        assert_eq!(
            iso_from_unix_micros(951_782_400_000_000),
            "2000-02-29T00:00:00.000000+00:00"
        );
        assert_eq!(iso_from_unix_micros(-1), "1969-12-31T23:59:59.999999+00:00");
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert!(now_isoformat().ends_with("+00:00"));
        assert_eq!(now_asctime().len(), "2026-11-25 11:58:19,190".len());
    }
}
