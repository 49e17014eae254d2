//! Which IP addresses `http.get` may connect to: public (global unicast)
//! ones only, unless the node allows private addresses.
//!
//! A host name on the allow-list is no promise about where it points: its
//! DNS answer can name 127.0.0.1, a cloud metadata service on
//! 169.254.169.254 or a machine of the internal network, and change between
//! two lookups. So [`GuardedResolver`] is the client's resolver: it looks a
//! name up, classifies every address with [`non_global`] and refuses the
//! name if any of them is not public, and the connector connects only to
//! the addresses it returned. What is checked is what is connected to; no
//! second lookup can rebind the name in between.
//!
//! A URL whose host is an IP address is never looked up (hyper connects to
//! it directly); it is fetched only when an allow-list entry names that
//! very address, which is an explicit allowance by the operator.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use thiserror::Error;
use tower_service::Service;

/// Why an address is not a public one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressClass {
    /// `0.0.0.0`, `::`: Linux connects these to the local machine.
    Unspecified,
    /// `0.0.0.0/8` other than `0.0.0.0`.
    ThisNetwork,
    /// `127.0.0.0/8`, `::1`.
    Loopback,
    /// `10.0.0.0/8`, `172.16.0.0/12`, `192.168.0.0/16` (RFC 1918).
    Private,
    /// `100.64.0.0/10`, carrier-grade NAT (RFC 6598).
    SharedAddressSpace,
    /// `169.254.0.0/16` (cloud metadata services live here), `fe80::/10`.
    LinkLocal,
    /// `fc00::/7` (RFC 4193).
    UniqueLocal,
    /// `fec0::/10`, deprecated but still routed inside some networks.
    SiteLocal,
    /// `224.0.0.0/4`, `ff00::/8`.
    Multicast,
    /// `255.255.255.255`.
    Broadcast,
    /// `192.0.2.0/24`, `198.51.100.0/24`, `203.0.113.0/24`,
    /// `2001:db8::/32`, `3fff::/20`.
    Documentation,
    /// `198.18.0.0/15` (RFC 2544).
    Benchmarking,
    /// Anything else set aside by IANA: `192.0.0.0/24`, `192.88.99.0/24`,
    /// `240.0.0.0/4`, IPv4-compatible IPv6, `64:ff9b:1::/48`, `100::/64`,
    /// `2001::/23`, and IPv6 outside `2000::/3`.
    Reserved,
}

impl AddressClass {
    fn describe(self) -> &'static str {
        match self {
            AddressClass::Unspecified => "an unspecified address",
            AddressClass::ThisNetwork => "a 'this network' address",
            AddressClass::Loopback => "a loopback address",
            AddressClass::Private => "a private address",
            AddressClass::SharedAddressSpace => "a carrier-grade NAT address",
            AddressClass::LinkLocal => "a link-local address",
            AddressClass::UniqueLocal => "a unique-local address",
            AddressClass::SiteLocal => "a site-local address",
            AddressClass::Multicast => "a multicast address",
            AddressClass::Broadcast => "a broadcast address",
            AddressClass::Documentation => "a documentation address",
            AddressClass::Benchmarking => "a benchmarking address",
            AddressClass::Reserved => "a reserved address",
        }
    }
}

impl fmt::Display for AddressClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// Why `ip` is not a public address, or `None` when it is one.
///
/// IPv6 addresses that carry an IPv4 address a router or the kernel
/// reaches (IPv4-mapped `::ffff:0:0/96`, NAT64 `64:ff9b::/96`, 6to4
/// `2002::/16`) are classified by that IPv4 address.
pub fn non_global(ip: IpAddr) -> Option<AddressClass> {
    match ip {
        IpAddr::V4(v4) => non_global_v4(v4),
        IpAddr::V6(v6) => non_global_v6(v6),
    }
}

fn non_global_v4(ip: Ipv4Addr) -> Option<AddressClass> {
    use AddressClass::*;
    let [a, b, c, _] = ip.octets();
    let class = match (a, b, c) {
        _ if ip.is_unspecified() => Unspecified,
        (0, ..) => ThisNetwork,
        (10, ..) => Private,
        (100, 64..=127, _) => SharedAddressSpace,
        (127, ..) => Loopback,
        (169, 254, _) => LinkLocal,
        (172, 16..=31, _) => Private,
        (192, 0, 0) | (192, 88, 99) => Reserved,
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => Documentation,
        (192, 168, _) => Private,
        (198, 18..=19, _) => Benchmarking,
        (224..=239, ..) => Multicast,
        _ if ip.is_broadcast() => Broadcast,
        (240..=255, ..) => Reserved,
        _ => return None,
    };
    Some(class)
}

fn non_global_v6(ip: Ipv6Addr) -> Option<AddressClass> {
    use AddressClass::*;
    if let Some(v4) = ip.to_ipv4_mapped() {
        return non_global_v4(v4);
    }
    let segments = ip.segments();
    let embedded_v4 = |hi: u16, lo: u16| {
        let [a, b] = hi.to_be_bytes();
        let [c, d] = lo.to_be_bytes();
        Ipv4Addr::new(a, b, c, d)
    };
    let class = match segments {
        _ if ip.is_unspecified() => Unspecified,
        _ if ip.is_loopback() => Loopback,
        // NAT64 (RFC 6052): the gateway connects to the IPv4 address inside.
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => return non_global_v4(embedded_v4(hi, lo)),
        // IPv4-compatible (deprecated), and every other address in ::/8.
        [0, ..] => Reserved,
        [0x64, 0xff9b, 1, ..] => Reserved,
        [0x100, 0, 0, 0, ..] => Reserved,
        [0x2001, 0xdb8, ..] => Documentation,
        [0x3fff, s, ..] if s & 0xf000 == 0 => Documentation,
        [0x2001, s, ..] if s < 0x200 => Reserved,
        // 6to4 (RFC 3056): the relay connects to the IPv4 address inside.
        [0x2002, hi, lo, ..] => return non_global_v4(embedded_v4(hi, lo)),
        [s, ..] if s & 0xfe00 == 0xfc00 => UniqueLocal,
        [s, ..] if s & 0xffc0 == 0xfe80 => LinkLocal,
        [s, ..] if s & 0xffc0 == 0xfec0 => SiteLocal,
        [s, ..] if s & 0xff00 == 0xff00 => Multicast,
        // Global unicast is 2000::/3; IANA has assigned nothing else.
        [s, ..] if s & 0xe000 != 0x2000 => Reserved,
        _ => return None,
    };
    Some(class)
}

/// A name refused because it resolves to an address that is not public.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "{host} resolves to {addr}, {class}; private addresses are refused unless --http-allow-private"
)]
pub struct AddressRefused {
    pub host: String,
    pub addr: IpAddr,
    pub class: AddressClass,
}

/// Refuses `host` when any of `addrs` (its DNS answer) is not public.
///
/// One private address refuses the name, not only that address: a name
/// whose answer mixes public and private addresses is either misconfigured
/// or pointing inward on purpose, and connecting to the public half would
/// hide that.
pub fn check_resolved(host: &str, addrs: &[SocketAddr]) -> Result<(), AddressRefused> {
    match addrs
        .iter()
        .find_map(|a| non_global(a.ip()).map(|class| (a.ip(), class)))
    {
        Some((addr, class)) => Err(AddressRefused {
            host: host.to_owned(),
            addr,
            class,
        }),
        None => Ok(()),
    }
}

/// Why a lookup by [`GuardedResolver`] gave no address to connect to.
#[derive(Debug, Error)]
pub enum ResolveError {
    #[error("{host} could not be resolved: {source}")]
    Lookup {
        host: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Refused(#[from] AddressRefused),
}

/// The system resolver (`getaddrinfo` on blocking threads, hyper's own),
/// followed by [`check_resolved`] unless private addresses are allowed.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    inner: GaiResolver,
    allow_private: bool,
}

impl GuardedResolver {
    pub fn new(allow_private: bool) -> Self {
        Self {
            inner: GaiResolver::new(),
            allow_private,
        }
    }
}

type Resolving =
    Pin<Box<dyn Future<Output = Result<std::vec::IntoIter<SocketAddr>, ResolveError>> + Send>>;

impl Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = ResolveError;
    type Future = Resolving;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // GaiResolver is always ready: each lookup is its own blocking task.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let host = name.as_str().to_owned();
        let lookup = self.inner.call(name);
        let allow_private = self.allow_private;
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = lookup
                .await
                .map_err(|source| ResolveError::Lookup {
                    host: host.clone(),
                    source,
                })?
                .collect();
            if !allow_private {
                check_resolved(&host, &addrs)?;
            }
            Ok(addrs.into_iter())
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use AddressClass::*;

    fn class(text: &str) -> Option<AddressClass> {
        non_global(text.parse().unwrap())
    }

    #[test]
    fn addresses_are_classified() {
        for (addr, expected) in [
            ("0.0.0.0", Some(Unspecified)),
            ("0.1.2.3", Some(ThisNetwork)),
            ("10.1.2.3", Some(Private)),
            ("100.64.0.1", Some(SharedAddressSpace)),
            ("100.128.0.1", None),
            ("127.0.0.1", Some(Loopback)),
            ("127.255.255.254", Some(Loopback)),
            ("169.254.169.254", Some(LinkLocal)),
            ("172.15.255.255", None),
            ("172.16.0.1", Some(Private)),
            ("172.31.255.255", Some(Private)),
            ("172.32.0.0", None),
            ("192.0.0.8", Some(Reserved)),
            ("192.0.2.1", Some(Documentation)),
            ("192.88.99.1", Some(Reserved)),
            ("192.168.1.1", Some(Private)),
            ("198.18.0.1", Some(Benchmarking)),
            ("198.20.0.1", None),
            ("198.51.100.7", Some(Documentation)),
            ("203.0.113.9", Some(Documentation)),
            ("224.0.0.1", Some(Multicast)),
            ("239.255.255.250", Some(Multicast)),
            ("240.0.0.1", Some(Reserved)),
            ("255.255.255.255", Some(Broadcast)),
            ("1.1.1.1", None),
            ("8.8.8.8", None),
            ("93.184.216.34", None),
            ("::", Some(Unspecified)),
            ("::1", Some(Loopback)),
            ("::ffff:127.0.0.1", Some(Loopback)),
            ("::ffff:10.0.0.1", Some(Private)),
            ("::ffff:169.254.169.254", Some(LinkLocal)),
            ("::ffff:8.8.8.8", None),
            ("::127.0.0.1", Some(Reserved)),
            ("::8.8.8.8", Some(Reserved)),
            ("64:ff9b::127.0.0.1", Some(Loopback)),
            ("64:ff9b::a00:1", Some(Private)),
            ("64:ff9b::8.8.8.8", None),
            ("64:ff9b:1::1", Some(Reserved)),
            ("100::1", Some(Reserved)),
            ("2001::1", Some(Reserved)),
            ("2001:db8::1", Some(Documentation)),
            ("3fff::1", Some(Documentation)),
            ("2002:7f00:1::", Some(Loopback)),
            ("2002:a9fe:a9fe::1", Some(LinkLocal)),
            ("2002:808:808::1", None),
            ("fc00::1", Some(UniqueLocal)),
            ("fd12:3456::1", Some(UniqueLocal)),
            ("fe80::1", Some(LinkLocal)),
            ("febf::1", Some(LinkLocal)),
            ("fec0::1", Some(SiteLocal)),
            ("ff02::1", Some(Multicast)),
            ("4000::1", Some(Reserved)),
            ("2606:4700:4700::1111", None),
            ("2a00:1450:4001::200e", None),
        ] {
            assert_eq!(class(addr), expected, "{addr}");
        }
    }

    #[test]
    fn a_name_is_refused_for_any_address_that_is_not_public() {
        let public: SocketAddr = "8.8.8.8:0".parse().unwrap();
        let loopback: SocketAddr = "[::1]:0".parse().unwrap();
        assert_eq!(check_resolved("dns.example", &[public]), Ok(()));
        let refused = check_resolved("mixed.example", &[public, loopback]).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "mixed.example resolves to ::1, a loopback address; \
             private addresses are refused unless --http-allow-private"
        );
    }

    #[tokio::test]
    async fn the_resolver_refuses_localhost_unless_private_addresses_are_allowed() {
        let name: Name = "localhost".parse().unwrap();
        let err = GuardedResolver::new(false)
            .call(name.clone())
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ResolveError::Refused(r) if r.host == "localhost" && r.class == Loopback),
            "{err}"
        );
        let addrs: Vec<SocketAddr> = GuardedResolver::new(true)
            .call(name)
            .await
            .unwrap()
            .collect();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()), "{addrs:?}");
    }

    proptest! {
        /// An IPv4 address and its IPv4-mapped IPv6 form are one address to
        /// the kernel, so they must be classified alike.
        #[test]
        fn mapped_addresses_are_classified_as_their_ipv4(bits: u32) {
            let v4 = Ipv4Addr::from(bits);
            prop_assert_eq!(non_global(v4.to_ipv6_mapped().into()), non_global(v4.into()));
            let nat64 = Ipv6Addr::from((0x64_ff9b_u128 << 96) | u128::from(bits));
            prop_assert_eq!(non_global(nat64.into()), non_global(v4.into()));
        }

        /// Every address std already knows is not public is refused.
        #[test]
        fn std_non_public_ipv4_is_refused(bits: u32) {
            let ip = Ipv4Addr::from(bits);
            if ip.is_private() || ip.is_loopback() || ip.is_link_local() || ip.is_multicast()
                || ip.is_broadcast() || ip.is_documentation() || ip.is_unspecified()
            {
                prop_assert!(non_global(ip.into()).is_some(), "{}", ip);
            }
        }

        #[test]
        fn std_non_public_ipv6_is_refused(bits: u128) {
            let ip = Ipv6Addr::from(bits);
            if ip.is_loopback() || ip.is_unspecified() || ip.is_multicast()
                || ip.is_unique_local() || ip.is_unicast_link_local()
            {
                prop_assert!(non_global(ip.into()).is_some(), "{}", ip);
            }
        }

        /// Only global unicast (2000::/3) can be public.
        #[test]
        fn ipv6_outside_global_unicast_is_refused(bits: u128) {
            let ip = Ipv6Addr::from(bits);
            if ip.segments()[0] & 0xe000 != 0x2000 && ip.to_ipv4_mapped().is_none()
                && ip.segments()[..6] != [0x64, 0xff9b, 0, 0, 0, 0]
            {
                prop_assert!(non_global(ip.into()).is_some(), "{}", ip);
            }
        }
    }
}
