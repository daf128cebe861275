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
    /// Envoy's `%REQUESTED_SERVER_NAME%`: the SNI of a TLS connection.
    pub requested_server_name: Option<&'a str>,
    /// What the client's certificate counts for (JSON only: Envoy's text format has no
    /// field for it).
    pub client_certificate: ClientCertificate,
}

/// The client certificate of the request's connection, as the access log reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClientCertificate {
    /// Plaintext, or TLS without a client certificate.
    #[default]
    None,
    /// Verified against the server's CAs: an identity (`x-forwarded-client-cert`,
    /// AuthorizationPolicy principals).
    Verified,
    /// Presented, did not verify, and served anyway (Gateway API `AllowInsecureFallback`):
    /// no identity. Logged so that an operator can see who relies on the fallback.
    Unverified,
}

impl ClientCertificate {
    fn as_json(self) -> Option<&'static str> {
        match self {
            ClientCertificate::None => None,
            ClientCertificate::Verified => Some("verified"),
            ClientCertificate::Unverified => Some("unverified"),
        }
    }
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
    /// "AUTHORITY" "UPSTREAM" CLUSTER - LOCAL PEER SNI -` (Istio's default format)
    fn text(&self) -> String {
        let or_dash = |v: Option<&str>| v.unwrap_or("-").to_owned();
        format!(
            "[{}] \"{} {} {}\" {} {} - \"{}\" - {} {} - \"{}\" \"{}\" \"{}\" \"{}\" \"{}\" {} - {} {} {} -\n",
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
            or_dash(self.requested_server_name),
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
            "requested_server_name": self.requested_server_name,
            "downstream_peer_certificate": self.client_certificate.as_json(),
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

    fn entry(sni: Option<&str>) -> AccessLogEntry<'_> {
        AccessLogEntry {
            start_time: SystemTime::UNIX_EPOCH,
            method: "GET",
            path: "/a",
            version: Version::HTTP_11,
            status: 200,
            flags: "-",
            transport_failure: None,
            response_bytes: Some("2"),
            duration: Duration::from_millis(3),
            forwarded_for: None,
            user_agent: Some("curl/8"),
            request_id: "id",
            authority: Some("example.org"),
            upstream: Some(([10, 0, 0, 1], 8080).into()),
            cluster: Some("outbound|80||web.default.svc.cluster.local"),
            downstream_local: ([10, 0, 0, 2], 443).into(),
            downstream_peer: ([10, 0, 0, 3], 5555).into(),
            requested_server_name: sni,
            client_certificate: ClientCertificate::None,
        }
    }

    #[test]
    fn text_lines_follow_istios_default_format_with_the_sni() {
        let tail = "\"10.0.0.1:8080\" outbound|80||web.default.svc.cluster.local - 10.0.0.2:443 10.0.0.3:5555";
        assert!(
            entry(Some("example.org"))
                .text()
                .ends_with(&format!("{tail} example.org -\n"))
        );
        assert!(entry(None).text().ends_with(&format!("{tail} - -\n")));
    }

    #[test]
    fn json_lines_mark_the_client_certificate() {
        for (mark, want) in [
            (ClientCertificate::None, serde_json::Value::Null),
            (ClientCertificate::Verified, "verified".into()),
            (ClientCertificate::Unverified, "unverified".into()),
        ] {
            let line = AccessLogEntry {
                client_certificate: mark,
                ..entry(Some("example.org"))
            }
            .json();
            let value: serde_json::Value = serde_json::from_str(&line).expect("JSON");
            assert_eq!(value["downstream_peer_certificate"], want);
            assert_eq!(value["requested_server_name"], "example.org");
        }
    }

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
