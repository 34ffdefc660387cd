//! Durations as the CLI and `keyward serve` take them (`90s`, `15m`, `8h`,
//! `90d`, `2w`, or bare seconds).

/// The longest duration `keyward serve` takes (100 years): long enough to
/// mean "never", short enough that no deadline computed from it overflows.
const MAX_SERVE_SECS: u64 = 100 * 365 * 86_400;

/// Parses a duration such as `90d`, `12h`, `30m`, `45s`, `2w` or a bare
/// number of seconds into seconds.
///
/// # Errors
/// A message for clap when the text is not a positive duration.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() {
        return Err("expected a number followed by s, m, h, d or w (e.g. 90d)".to_owned());
    }
    let n: u64 = digits.parse().map_err(|_| "number too large".to_owned())?;
    let scale: u64 = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(format!("unknown unit {unit:?} (use s, m, h, d or w)")),
    };
    match n.checked_mul(scale) {
        Some(0) => Err("the duration must be positive".to_owned()),
        Some(secs) => Ok(secs),
        None => Err("duration too large".to_owned()),
    }
}

/// Parses a `keyward serve` duration as [`parse_duration`] does, up to 100
/// years.
///
/// # Errors
/// As [`parse_duration`], and for more than 100 years.
pub fn parse_serve_duration(text: &str) -> Result<u64, String> {
    let secs = parse_duration(text)?;
    if secs > MAX_SERVE_SECS {
        return Err("the duration must be at most 100 years".to_owned());
    }
    Ok(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serve_durations_parse_and_are_bounded() {
        assert_eq!(parse_serve_duration("90s"), Ok(90));
        assert_eq!(parse_serve_duration("15m"), Ok(900));
        assert_eq!(parse_serve_duration("8h"), Ok(28_800));
        assert!(parse_serve_duration("0s").is_err());
        assert!(parse_serve_duration("5300w").is_err());
    }
}
