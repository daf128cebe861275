//! Route helpers both front ends use: durations as Istio and Gateway API write them,
//! and cloning a compiled route.

use std::time::Duration;

use crate::{route_table::Route, snapshot::RouteAction};

/// Durations as Istio accepts them: `1s`, `0.5s`, `250ms`, `1m30s`, `1h`.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration (e.g. 1s, 250ms, 1m30s)");
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let number: f64 = rest[..number_len].parse().map_err(|_| bad())?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return Err(bad()),
        };
        total += number * seconds;
        rest = &rest[unit_len..];
    }
    if total > MAX_DURATION_SECS {
        return Err(format!(
            "{text:?} is longer than the longest duration Istio accepts ({MAX_DURATION_SECS}s, \
             protobuf's Duration limit)"
        ));
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}

/// The longest `google.protobuf.Duration` (10 000 years), which is what Istio's API
/// takes: longer values are refused there, and here they would overflow clocks.
const MAX_DURATION_SECS: f64 = 315_576_000_000.0;

pub(super) fn clone_route(route: &Route<RouteAction>) -> Route<RouteAction> {
    route.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_as_istio_writes_them() {
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("0.5s"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("1 fortnight").is_err());
        assert_eq!(
            parse_duration("315576000000s"),
            Ok(Duration::from_secs(315_576_000_000))
        );
        assert!(parse_duration("99999999999999999s").is_err());
        assert!(parse_duration("1e300s").is_err());
    }
}
