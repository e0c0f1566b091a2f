//! Durations as people type them: `30m`, `2h`, `1d`, `1h30m`, `45s`, `90`.

/// Seconds in a duration such as `30m`, `2h`, `1d`, `1w`, `1h30m` or a bare
/// number of seconds. Zero and overflowing values are refused.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let bad = || format!("invalid duration {s:?}: expected e.g. 30m, 2h, 1d, 1h30m");
    let t = s.trim();
    if t.is_empty() {
        return Err(bad());
    }
    if t.bytes().all(|b| b.is_ascii_digit()) {
        let n: u64 = t.parse().map_err(|_| bad())?;
        return if n == 0 {
            Err(format!("duration {s:?} must be longer than zero"))
        } else {
            Ok(n)
        };
    }
    let mut total: u64 = 0;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = match rest[..unit_len].to_ascii_lowercase().as_str() {
            "s" | "sec" | "secs" | "second" | "seconds" => 1,
            "m" | "min" | "mins" | "minute" | "minutes" => 60,
            "h" | "hr" | "hrs" | "hour" | "hours" => 3600,
            "d" | "day" | "days" => 86_400,
            "w" | "week" | "weeks" => 7 * 86_400,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("duration {s:?} is too long"))?;
    }
    if total == 0 {
        return Err(format!("duration {s:?} must be longer than zero"));
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse_duration("30m"), Ok(1800));
        assert_eq!(parse_duration("2h"), Ok(7200));
        assert_eq!(parse_duration("1d"), Ok(86_400));
        assert_eq!(parse_duration("1w"), Ok(604_800));
        assert_eq!(parse_duration("45s"), Ok(45));
        assert_eq!(parse_duration("90"), Ok(90));
        assert_eq!(parse_duration("1h30m"), Ok(5400));
        assert_eq!(parse_duration("2H"), Ok(7200));
        assert_eq!(parse_duration(" 10min "), Ok(600));
        assert_eq!(parse_duration("1d2h3m4s"), Ok(93_784));
    }

    #[test]
    fn refusals() {
        for s in [
            "", "m", "30x", "1.5h", "-1h", "h30", "0", "0m", "30 m", "1h-",
        ] {
            assert!(parse_duration(s).is_err(), "{s:?} was accepted");
        }
        assert!(parse_duration("99999999999999999999d").is_err());
        assert!(parse_duration("999999999999999w")
            .unwrap_err()
            .contains("too long"));
    }
}
