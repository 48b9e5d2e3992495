//! The one place that decides who the client is.
//!
//! The forwarding header the proxies write (`TRUSTED_PROXY_HEADER`:
//! `X-Forwarded-For`, or `Forwarded`; never the other, which a proxy passes through
//! as the client wrote it) is believed only when the TCP peer is one of
//! `TRUSTED_PROXIES`, and then read from the right: the first address that is not a
//! trusted proxy is the client (anything left of it was written by the client and
//! proves nothing). An entry that is no address (`unknown`, an obfuscated `_hidden`)
//! ends the walk: the client is then the nearest proxy, never an address further left.
//! Without trusted proxies, the TCP peer is the client. IPv4-mapped IPv6 addresses
//! (a dual-stack listener's view of an IPv4 peer) are read as IPv4. actix's
//! `realip_remote_addr()` and `connection_info()` are never used for this: they
//! believe the client.

use std::net::IpAddr;

use actix_web::HttpRequest;
use aia_settings::ForwardedHeader;
use ipnet::IpNet;

/// The proxies whose forwarding header is believed, and which header that is.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
    header: ForwardedHeader,
}

impl TrustedProxies {
    /// Parses CIDRs (a bare address is a /32 or /128).
    pub fn parse(items: &[String], header: ForwardedHeader) -> anyhow::Result<Self> {
        let nets = items
            .iter()
            .map(|item| {
                item.parse::<IpNet>()
                    .or_else(|_| item.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        anyhow::anyhow!("TRUSTED_PROXIES: {item} is not an address or CIDR")
                    })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self { nets, header })
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets.iter().any(|net| net.contains(&ip))
    }

    /// Whether the TCP peer of `req` is one of the trusted proxies.
    pub fn trusts_peer(&self, req: &HttpRequest) -> bool {
        req.peer_addr().is_some_and(|p| self.trusts(p.ip()))
    }

    /// The client's address for `req`.
    pub fn client_ip(&self, req: &HttpRequest) -> Option<IpAddr> {
        let peer = req.peer_addr()?.ip().to_canonical();
        if !self.trusts(peer) {
            return Some(peer);
        }
        // From the right: past the trusted proxies, to the first address that is not
        // one; an entry that is no address ends the walk at the proxy that wrote it.
        let mut nearest = peer;
        let chain = forwarded_chain(req, self.header);
        for entry in chain.iter().rev() {
            match entry {
                Some(ip) if self.trusts(*ip) => nearest = *ip,
                Some(ip) => return Some(*ip),
                None => return Some(nearest),
            }
        }
        // Only proxies: the leftmost is as close to the client as anyone knows.
        Some(nearest)
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

/// The entries of `header` (all of its fields, in order): each an address, or `None`
/// where it is something else (`unknown`, `_hidden`, junk), never guessed at.
fn forwarded_chain(req: &HttpRequest, header: ForwardedHeader) -> Vec<Option<IpAddr>> {
    let fields = |name: &'static str| {
        req.headers()
            .get_all(name)
            .map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
    };
    match header {
        ForwardedHeader::XForwardedFor => fields("x-forwarded-for")
            .into_iter()
            .flat_map(|v| match v {
                Some(v) => v.split(',').map(|entry| parse_ip(entry.trim())).collect(),
                None => vec![None],
            })
            .collect(),
        ForwardedHeader::Forwarded => fields("forwarded")
            .into_iter()
            .flat_map(|v| match v {
                // One element per proxy, `;`-separated pairs within it.
                Some(v) => v
                    .split(',')
                    .map(|element| {
                        element.split(';').find_map(|pair| {
                            let (key, value) = pair.trim().split_once('=')?;
                            key.trim()
                                .eq_ignore_ascii_case("for")
                                .then(|| parse_ip(value.trim().trim_matches('"')))
                        })?
                    })
                    .collect(),
                None => vec![None],
            })
            .collect(),
    }
}

/// `1.2.3.4`, `1.2.3.4:567`, `::1`, `[::1]:567` (IPv4-mapped addresses as IPv4).
fn parse_ip(text: &str) -> Option<IpAddr> {
    let ip: Option<IpAddr> = if let Ok(ip) = text.parse() {
        Some(ip)
    } else if let Some(rest) = text.strip_prefix('[') {
        rest.split(']').next().and_then(|ip| ip.parse().ok())
    } else {
        text.rsplit_once(':').and_then(|(ip, _)| ip.parse().ok())
    };
    ip.map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use actix_web::test::TestRequest;

    use super::*;

    fn proxies(items: &[&str]) -> TrustedProxies {
        writing(items, ForwardedHeader::XForwardedFor)
    }

    fn writing(items: &[&str], header: ForwardedHeader) -> TrustedProxies {
        TrustedProxies::parse(
            &items.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>(),
            header,
        )
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
        let forwarded = writing(&["10.0.0.0/8"], ForwardedHeader::Forwarded);
        assert_eq!(forwarded.client_ip(&req), ip("2001:db8::1"));
        let req = from("10.0.0.2:4000", &[("x-forwarded-for", "junk, 10.0.0.1")]);
        assert_eq!(proxies(&["10.0.0.0/8"]).client_ip(&req), ip("10.0.0.1"));
        let req = from("10.0.0.2:4000", &[]);
        assert_eq!(proxies(&["10.0.0.0/8"]).client_ip(&req), ip("10.0.0.2"));
    }

    #[test]
    fn only_the_header_the_proxies_write_is_read() {
        // A proxy that writes `Forwarded` passes the client's `X-Forwarded-For` on
        // as it came, and the other way round.
        let req = from(
            "10.0.0.2:4000",
            &[
                ("x-forwarded-for", "6.6.6.6"),
                ("forwarded", "for=203.0.113.9"),
            ],
        );
        let forwarded = writing(&["10.0.0.0/8"], ForwardedHeader::Forwarded);
        assert_eq!(forwarded.client_ip(&req), ip("203.0.113.9"));
        let req = from(
            "10.0.0.2:4000",
            &[
                ("x-forwarded-for", "203.0.113.9"),
                ("forwarded", "for=6.6.6.6"),
            ],
        );
        assert_eq!(proxies(&["10.0.0.0/8"]).client_ip(&req), ip("203.0.113.9"));
        // Only the other header: the proxy is all anyone knows.
        let req = from("10.0.0.2:4000", &[("x-forwarded-for", "6.6.6.6")]);
        assert_eq!(forwarded.client_ip(&req), ip("10.0.0.2"));
    }

    #[test]
    fn an_entry_that_is_no_address_ends_the_walk() {
        // The proxy wrote `unknown` for its client; what the client put left of it
        // proves nothing.
        let list = proxies(&["10.0.0.0/8"]);
        let req = from("10.0.0.2:4000", &[("x-forwarded-for", "6.6.6.6, unknown")]);
        assert_eq!(list.client_ip(&req), ip("10.0.0.2"));
        let req = from(
            "10.0.0.2:4000",
            &[("x-forwarded-for", "6.6.6.6, _hidden, 10.0.0.1")],
        );
        assert_eq!(list.client_ip(&req), ip("10.0.0.1"));
        let req = from(
            "10.0.0.2:4000",
            &[("forwarded", "for=6.6.6.6, for=unknown;proto=https")],
        );
        let forwarded = writing(&["10.0.0.0/8"], ForwardedHeader::Forwarded);
        assert_eq!(forwarded.client_ip(&req), ip("10.0.0.2"));
    }

    #[test]
    fn ipv4_mapped_addresses_are_ipv4() {
        // A dual-stack listener sees an IPv4 proxy as ::ffff:10.0.0.2.
        let list = proxies(&["10.0.0.0/8"]);
        let req = from(
            "[::ffff:10.0.0.2]:4000",
            &[("x-forwarded-for", "203.0.113.9")],
        );
        assert_eq!(list.client_ip(&req), ip("203.0.113.9"));
        let req = from("[::ffff:198.51.100.7]:4000", &[]);
        assert_eq!(list.client_ip(&req), ip("198.51.100.7"));
    }

    #[test]
    fn bad_cidrs_are_refused() {
        let parse =
            |item: &str| TrustedProxies::parse(&[item.to_owned()], ForwardedHeader::default());
        assert!(parse("10.0.0.0/33").is_err());
        assert!(parse("everyone").is_err());
        assert!(parse("10.1.2.3").is_ok());
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
                let header = if xff.len() % 2 == 0 {
                    ForwardedHeader::XForwardedFor
                } else {
                    ForwardedHeader::Forwarded
                };
                let list = writing(&["10.0.0.0/8"], header);
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
