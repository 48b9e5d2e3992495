//! Client addresses as the platform counts them.

use std::net::IpAddr;

/// The network a client address stands for when counting what it does: an IPv4
/// address alone (IPv4-mapped IPv6 included), an IPv6 address by its /64. A /64 is
/// what one subscriber is usually given; counted per address, its holder would have
/// 2^64 counters, which is no limit at all. The gateway's rate limiter and rejection
/// counts and auth's login throttle all key by it.
pub fn bucket_of(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let [a, b, c, d, ..] = v6.segments();
            format!("{a:x}:{b:x}:{c:x}:{d:x}::/64")
        }
    }
}

/// [`bucket_of`] an address given as text; text that is no address is its own key.
pub fn bucket_of_text(ip: &str) -> String {
    ip.parse().map_or_else(|_| ip.to_owned(), bucket_of)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_share_the_bucket_of_their_64() {
        assert_eq!(bucket_of_text("192.0.2.7"), "192.0.2.7");
        assert_eq!(bucket_of_text("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(bucket_of_text("2001:db8:1:2::1"), "2001:db8:1:2::/64");
        assert_eq!(
            bucket_of_text("2001:db8:1:2:ffff:ffff:ffff:ffff"),
            "2001:db8:1:2::/64"
        );
        assert_ne!(bucket_of_text("2001:db8:1:3::1"), "2001:db8:1:2::/64");
        assert_eq!(bucket_of_text(""), "");
    }
}
