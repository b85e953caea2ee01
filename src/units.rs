//! Numbers for people: byte sizes in binary units, rates and durations, as every command
//! prints them.

/// Bytes in binary units, e.g. "1.5 GiB".
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Parses a size as people write it: `123`, `64M`, `10G`, `1.5TiB`, `500MB`. K, M, G, T
/// (and KiB, MiB, ...) are binary; KB, MB, GB, TB are decimal. The error says what is wrong.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = unit.trim();
    let value: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (expected e.g. 500M, 10G, 1.5T)"))?;
    let mult: f64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024f64.powi(2),
        "g" | "gib" => 1024f64.powi(3),
        "t" | "tib" => 1024f64.powi(4),
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        _ => {
            return Err(format!(
                "{s:?}: unknown size unit {unit:?} (use K, M, G, T)"
            ));
        }
    };
    let bytes = value * mult;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(format!("{s:?} is too large"));
    }
    Ok(bytes as u64)
}

/// A duration in seconds, e.g. "42 s", "3 min 05 s", "1 h 02 min".
pub fn duration(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs} s"),
        60..3600 => format!("{} min {:02} s", secs / 60, secs % 60),
        _ => format!("{} h {:02} min", secs / 3600, secs % 3600 / 60),
    }
}

/// How long ago a time (seconds since the epoch) was, e.g. "3 min 05 s ago" ("in the
/// future" for a clock that went back).
pub fn ago(at_secs: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    match now.checked_sub(at_secs) {
        Some(d) => format!("{} ago", duration(d)),
        None => "in the future (clock skew)".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_bytes("123").unwrap(), 123);
        assert_eq!(parse_bytes("64M").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("1.5 GiB").unwrap(), 3 << 29);
        assert_eq!(parse_bytes("10GB").unwrap(), 10_000_000_000);
        assert!(parse_bytes("ten").unwrap_err().contains("not a size"));
        assert!(parse_bytes("5X").unwrap_err().contains("unknown size unit"));
        assert!(parse_bytes("").is_err());
    }

    #[test]
    fn byte_units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(5 << 30), "5.0 GiB");
    }

    #[test]
    fn durations() {
        assert_eq!(duration(7), "7 s");
        assert_eq!(duration(185), "3 min 05 s");
        assert_eq!(duration(3720), "1 h 02 min");
    }
}
