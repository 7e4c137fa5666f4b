//! Pod IPs from the runner's own range (`--pod-cidr`, e.g. `198.18.0.0/20`).
//!
//! EndpointSlices refuse loopback addresses (kube-apiserver's ValidateEndpointIP), so the
//! range is part of 198.18.0.0/15 (RFC 2544 benchmarking: neither routed on the internet
//! nor a private network); processes listen on each address's loopback twin
//! (`bridge_e2e::loopback_twin`), so no traffic leaves 127.0.0.0/8.

use std::collections::HashMap;
use std::net::Ipv4Addr;

#[derive(Debug, thiserror::Error)]
pub enum CidrError {
    #[error("{0:?} is not an IPv4 CIDR such as 127.2.0.0/16")]
    Syntax(String),
    #[error(
        "{0} overlaps a private network range (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16): pod traffic must stay on this machine"
    )]
    Private(String),
}

/// Hands out addresses round-robin (a replacement pod does not reuse the address of the
/// pod it replaces right away) and remembers which pod holds which.
#[derive(Debug)]
pub struct Ipam {
    base: u32,
    size: u32,
    next: u32,
    owners: HashMap<Ipv4Addr, String>,
}

impl Ipam {
    pub fn new(cidr: &str) -> Result<Self, CidrError> {
        let syntax = || CidrError::Syntax(cidr.to_owned());
        let (addr, prefix) = cidr.split_once('/').ok_or_else(syntax)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| syntax())?;
        let prefix: u32 = prefix.parse().map_err(|_| syntax())?;
        if !(8..=30).contains(&prefix) {
            return Err(syntax());
        }
        let size = 1u32 << (32 - prefix);
        let base = u32::from(addr) & !(size - 1);
        let private = [("10.0.0.0", 8), ("172.16.0.0", 12), ("192.168.0.0", 16)];
        let overlaps = private.iter().any(|(net, bits)| {
            let net = u32::from(net.parse::<Ipv4Addr>().expect("literal"));
            let bits = (*bits).min(prefix);
            let mask = u32::MAX << (32 - bits);
            base & mask == net & mask
        });
        if overlaps {
            return Err(CidrError::Private(cidr.to_owned()));
        }
        Ok(Self {
            base,
            size,
            next: 1,
            owners: HashMap::new(),
        })
    }

    /// The first address handed out: `local_check` binds it to see the range is local.
    pub fn first(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.base + 1)
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip).wrapping_sub(self.base) < self.size
    }

    /// Claims `ip` for `uid`; false when it is outside the range or another pod holds it.
    pub fn reserve(&mut self, ip: Ipv4Addr, uid: &str) -> bool {
        if !self.contains(ip) {
            return false;
        }
        match self.owners.get(&ip) {
            Some(owner) => owner == uid,
            None => {
                self.owners.insert(ip, uid.to_owned());
                true
            }
        }
    }

    /// The address `uid` holds, or a free one (neither the network nor the broadcast address).
    pub fn allocate(&mut self, uid: &str) -> Option<Ipv4Addr> {
        if let Some((ip, _)) = self.owners.iter().find(|(_, o)| *o == uid) {
            return Some(*ip);
        }
        for _ in 0..self.size {
            let offset = self.next;
            self.next = if self.next + 2 >= self.size {
                1
            } else {
                self.next + 1
            };
            let ip = Ipv4Addr::from(self.base + offset);
            if let std::collections::hash_map::Entry::Vacant(e) = self.owners.entry(ip) {
                e.insert(uid.to_owned());
                return Some(ip);
            }
        }
        None
    }

    pub fn release(&mut self, uid: &str) {
        self.owners.retain(|_, owner| owner != uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_round_robin_inside_the_range_and_respects_reservations() {
        let mut ipam = Ipam::new("127.2.0.0/30").unwrap();
        assert!(ipam.reserve("127.2.0.2".parse().unwrap(), "old"));
        assert!(!ipam.reserve("127.2.0.2".parse().unwrap(), "other"));
        assert_eq!(ipam.allocate("a"), Some("127.2.0.1".parse().unwrap()));
        assert_eq!(ipam.allocate("a"), Some("127.2.0.1".parse().unwrap()));
        assert_eq!(ipam.allocate("b"), None);
        ipam.release("old");
        assert_eq!(ipam.allocate("b"), Some("127.2.0.2".parse().unwrap()));
        assert!(!ipam.contains("127.1.0.2".parse().unwrap()));
    }

    #[test]
    fn refuses_private_network_ranges() {
        for cidr in [
            "10.0.0.0/16",
            "172.20.0.0/16",
            "192.168.1.0/24",
            "172.0.0.0/8",
        ] {
            assert!(
                matches!(Ipam::new(cidr), Err(CidrError::Private(_))),
                "{cidr}"
            );
        }
        assert!(Ipam::new("198.18.0.0/20").is_ok());
        assert!(Ipam::new("127.2.0.0/16").is_ok());
        assert!(Ipam::new("127.2.0.0").is_err());
    }
}
