//! The one place that decides who the client is.
//!
//! `X-Forwarded-For` and `Forwarded` are believed only when the TCP peer is one of
//! `TRUSTED_PROXIES`, and then read from the right: the first address that is not a
//! trusted proxy is the client (anything left of it was written by the client and
//! proves nothing). Without trusted proxies, the TCP peer is the client. actix's
//! `realip_remote_addr()` and `connection_info()` are never used for this: they
//! believe the client.

use std::net::IpAddr;

use actix_web::HttpRequest;
use ipnet::IpNet;

/// The proxies whose forwarding headers are believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Parses CIDRs (a bare address is a /32 or /128).
    pub fn parse(items: &[String]) -> anyhow::Result<Self> {
        items
            .iter()
            .map(|item| {
                item.parse::<IpNet>()
                    .or_else(|_| item.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        anyhow::anyhow!("TRUSTED_PROXIES: {item} is not an address or CIDR")
                    })
            })
            .collect::<anyhow::Result<Vec<_>>>()
            .map(Self)
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// Whether the TCP peer of `req` is one of the trusted proxies.
    pub fn trusts_peer(&self, req: &HttpRequest) -> bool {
        req.peer_addr().is_some_and(|p| self.trusts(p.ip()))
    }

    /// The client's address for `req`.
    pub fn client_ip(&self, req: &HttpRequest) -> Option<IpAddr> {
        let peer = req.peer_addr()?.ip();
        if !self.trusts(peer) {
            return Some(peer);
        }
        let chain = forwarded_chain(req);
        Some(
            chain
                .iter()
                .rev()
                .copied()
                .find(|ip| !self.trusts(*ip))
                .or_else(|| chain.first().copied())
                .unwrap_or(peer),
        )
    }
}

impl TrustedProxies {
    /// `https` if a trusted proxy says the client used it (`X-Forwarded-Proto`),
    /// else `http` (the gateway itself does not terminate TLS).
    pub fn scheme(&self, req: &HttpRequest) -> &'static str {
        let trusted = req.peer_addr().is_some_and(|p| self.trusts(p.ip()));
        let https = req
            .headers()
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"));
        if trusted && https { "https" } else { "http" }
    }
}

/// The addresses of `X-Forwarded-For` (all of its headers, in order), or else of the
/// `for=` parameters of `Forwarded`. Unparseable entries end the chain's usefulness:
/// they are dropped, never guessed at.
fn forwarded_chain(req: &HttpRequest) -> Vec<IpAddr> {
    let xff: Vec<IpAddr> = req
        .headers()
        .get_all("x-forwarded-for")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|entry| parse_ip(entry.trim()))
        .collect();
    if !xff.is_empty() {
        return xff;
    }
    req.headers()
        .get_all("forwarded")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .filter_map(|pair| {
            let (key, value) = pair.trim().split_once('=')?;
            key.trim()
                .eq_ignore_ascii_case("for")
                .then(|| parse_ip(value.trim().trim_matches('"')))?
        })
        .collect()
}

/// `1.2.3.4`, `1.2.3.4:567`, `::1`, `[::1]:567`.
fn parse_ip(text: &str) -> Option<IpAddr> {
    if let Ok(ip) = text.parse() {
        return Some(ip);
    }
    if let Some(rest) = text.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    text.rsplit_once(':').and_then(|(ip, _)| ip.parse().ok())
}

#[cfg(test)]
mod tests {
    use actix_web::test::TestRequest;

    use super::*;

    fn proxies(items: &[&str]) -> TrustedProxies {
        TrustedProxies::parse(&items.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
            .unwrap_or_default()
    }

    fn from(peer: &str, headers: &[(&str, &str)]) -> HttpRequest {
        let mut req = TestRequest::default()
            .peer_addr(peer.parse().unwrap_or_else(|_| ([0, 0, 0, 0], 0).into()));
        for (k, v) in headers {
            req = req.insert_header((*k, *v));
        }
        req.to_http_request()
    }

    fn ip(s: &str) -> Option<IpAddr> {
        s.parse().ok()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        let req = from(
            "198.51.100.7:4000",
            &[("x-forwarded-for", "1.1.1.1"), ("forwarded", "for=2.2.2.2")],
        );
        assert_eq!(proxies(&["10.0.0.0/8"]).client_ip(&req), ip("198.51.100.7"));
        assert_eq!(proxies(&[]).client_ip(&req), ip("198.51.100.7"));
    }

    #[test]
    fn behind_trusted_proxies_the_rightmost_untrusted_address_is_the_client() {
        // The client prepended a lie; the edge proxy appended the real address.
        let req = from(
            "10.0.0.2:4000",
            &[("x-forwarded-for", "6.6.6.6, 203.0.113.9, 10.0.0.1")],
        );
        assert_eq!(proxies(&["10.0.0.0/8"]).client_ip(&req), ip("203.0.113.9"));
        let req = from(
            "10.0.0.2:4000",
            &[(
                "forwarded",
                "for=6.6.6.6, for=\"[2001:db8::1]:443\";proto=https",
            )],
        );
        assert_eq!(proxies(&["10.0.0.0/8"]).client_ip(&req), ip("2001:db8::1"));
        let req = from("10.0.0.2:4000", &[("x-forwarded-for", "junk, 10.0.0.1")]);
        assert_eq!(proxies(&["10.0.0.0/8"]).client_ip(&req), ip("10.0.0.1"));
        let req = from("10.0.0.2:4000", &[]);
        assert_eq!(proxies(&["10.0.0.0/8"]).client_ip(&req), ip("10.0.0.2"));
    }

    #[test]
    fn bad_cidrs_are_refused() {
        assert!(TrustedProxies::parse(&["10.0.0.0/33".to_owned()]).is_err());
        assert!(TrustedProxies::parse(&["everyone".to_owned()]).is_err());
        assert!(TrustedProxies::parse(&["10.1.2.3".to_owned()]).is_ok());
    }

    mod properties {
        //! Whatever the forwarding headers say (issue #8): an untrusted peer is the
        //! client, and behind a trusted proxy the answer is the peer or an address the
        //! headers named; nothing panics.
        use super::*;
        use proptest::prelude::*;

        fn header_value() -> impl Strategy<Value = String> {
            prop_oneof![
                "[ -~]{0,200}",
                proptest::collection::vec(
                    prop_oneof![
                        any::<std::net::Ipv4Addr>().prop_map(|a| a.to_string()),
                        any::<std::net::Ipv6Addr>().prop_map(|a| format!("\"[{a}]:443\"")),
                        "[ -~]{0,20}",
                    ],
                    0..8
                )
                .prop_map(|parts| parts.join(", ")),
            ]
        }

        proptest! {

            #[test]
            fn forwarding_headers_never_move_the_client_past_what_they_name(
                xff in header_value(),
                forwarded in header_value(),
                trusted in any::<bool>(),
            ) {
                let list = proxies(&["10.0.0.0/8"]);
                let peer = if trusted { "10.1.2.3:5000" } else { "203.0.113.9:5000" };
                let req = from(peer, &[
                    ("x-forwarded-for", xff.as_str()),
                    ("forwarded", &format!("for={forwarded}")),
                ]);
                let client = list.client_ip(&req);
                let peer_ip = ip(peer.split(':').next().unwrap_or_default());
                if trusted {
                    let named = format!("{xff} {forwarded}");
                    prop_assert!(
                        client == peer_ip
                            || client.is_some_and(|c| named.contains(&c.to_string())
                                || named.contains(&format!("{c:?}"))),
                        "{client:?} from {xff:?} / {forwarded:?}"
                    );
                } else {
                    prop_assert_eq!(client, peer_ip);
                }
            }
        }
    }
}
