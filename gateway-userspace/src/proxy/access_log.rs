//! One access log line per request on stdout, in Envoy's default format (what Istio users
//! grep for), or as JSON with the same fields.
//!
//! Lines go to stdout through `log_sink`, which never lets a request wait.

use std::{
    net::SocketAddr,
    time::{Duration, SystemTime},
};

use http::Version;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AccessLogFormat {
    /// Envoy's default text format.
    Text,
    Json,
    Off,
}

pub struct AccessLogEntry<'a> {
    pub start_time: SystemTime,
    pub method: &'a str,
    pub path: &'a str,
    pub version: Version,
    pub status: u16,
    pub flags: &'a str,
    /// Envoy's `%UPSTREAM_TRANSPORT_FAILURE_REASON%`.
    pub transport_failure: Option<&'a str>,
    pub response_bytes: Option<&'a str>,
    pub duration: Duration,
    pub forwarded_for: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    pub request_id: &'a str,
    pub authority: Option<&'a str>,
    pub upstream: Option<SocketAddr>,
    pub cluster: Option<&'a str>,
    pub downstream_local: SocketAddr,
    pub downstream_peer: SocketAddr,
}

impl AccessLogFormat {
    pub fn write(self, entry: &AccessLogEntry<'_>) {
        let line = match self {
            AccessLogFormat::Off => return,
            AccessLogFormat::Text => entry.text(),
            AccessLogFormat::Json => entry.json(),
        };
        super::log_sink::push(line.as_bytes());
    }
}

impl AccessLogEntry<'_> {
    fn protocol(&self) -> &'static str {
        match self.version {
            Version::HTTP_2 => "HTTP/2",
            Version::HTTP_10 => "HTTP/1.0",
            _ => "HTTP/1.1",
        }
    }

    /// `[START] "METHOD PATH PROTO" CODE FLAGS - "TRANSPORT_FAILURE" RX TX DURATION - "XFF" "UA" "ID"
    /// "AUTHORITY" "UPSTREAM" CLUSTER - LOCAL PEER - -`
    fn text(&self) -> String {
        let or_dash = |v: Option<&str>| v.unwrap_or("-").to_owned();
        format!(
            "[{}] \"{} {} {}\" {} {} - \"{}\" - {} {} - \"{}\" \"{}\" \"{}\" \"{}\" \"{}\" {} - {} {} - -\n",
            rfc3339_millis(self.start_time),
            self.method,
            self.path,
            self.protocol(),
            self.status,
            self.flags,
            or_dash(self.transport_failure),
            or_dash(self.response_bytes),
            self.duration.as_millis(),
            or_dash(self.forwarded_for),
            or_dash(self.user_agent),
            self.request_id,
            or_dash(self.authority),
            self.upstream
                .map_or_else(|| "-".to_owned(), |u| u.to_string()),
            or_dash(self.cluster),
            self.downstream_local,
            self.downstream_peer,
        )
    }

    fn json(&self) -> String {
        let value = serde_json::json!({
            "start_time": rfc3339_millis(self.start_time),
            "method": self.method,
            "path": self.path,
            "protocol": self.protocol(),
            "response_code": self.status,
            "response_flags": self.flags,
            "upstream_transport_failure_reason": self.transport_failure,
            "bytes_sent": self.response_bytes,
            "duration": self.duration.as_millis() as u64,
            "x_forwarded_for": self.forwarded_for,
            "user_agent": self.user_agent,
            "request_id": self.request_id,
            "authority": self.authority,
            "upstream_host": self.upstream.map(|u| u.to_string()),
            "upstream_cluster": self.cluster,
            "downstream_local_address": self.downstream_local.to_string(),
            "downstream_remote_address": self.downstream_peer.to_string(),
        });
        format!("{value}\n")
    }
}

/// `2026-11-22T10:00:00.123Z` without a date-time crate: days from the civil calendar.
fn rfc3339_millis(time: SystemTime) -> String {
    let since = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's days-to-civil.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let cases = [
            (0, "1970-01-01T00:00:00.000Z"),
            (951_782_400_123, "2000-02-29T00:00:00.123Z"),
            (1_795_350_896_007, "2026-11-22T12:34:56.007Z"),
        ];
        for (millis, want) in cases {
            let t = SystemTime::UNIX_EPOCH + Duration::from_millis(millis);
            assert_eq!(rfc3339_millis(t), want);
        }
    }
}
