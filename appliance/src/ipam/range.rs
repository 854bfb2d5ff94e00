//! Address ranges of a pool: parsing (`CIDR`, `start-end`, single address) and arithmetic on
//! addresses as `u128`, IPv4 mapped into `::ffff:0:0/96` so both families share one number line.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use edgelb_api::IpFamily;

const V4_MAPPED: u128 = 0xffff_0000_0000;

/// An address as a number: IPv6 as itself, IPv4 as its IPv4-mapped IPv6 form.
pub fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => V4_MAPPED | u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The inverse of [`to_u128`].
pub fn from_u128(n: u128) -> IpAddr {
    if n >> 32 == V4_MAPPED >> 32 {
        IpAddr::V4(Ipv4Addr::from((n & 0xffff_ffff) as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(n))
    }
}

/// An inclusive range of addresses of one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    pub start: u128,
    pub end: u128,
    pub family: IpFamily,
}

impl IpRange {
    /// Parses `203.0.113.0/26`, `203.0.113.100-203.0.113.120`, `2001:db8::/64` or one address.
    /// The message of an error says how to write it right.
    pub fn parse(text: &str) -> Result<IpRange, String> {
        let text = text.trim();
        if let Some((addr, len)) = text.split_once('/') {
            let ip = parse_addr(addr)?;
            let max = match ip {
                IpAddr::V4(_) => 32,
                IpAddr::V6(_) => 128,
            };
            let len: u32 = Some(len)
                .filter(|l| !l.is_empty() && l.len() <= 3 && l.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|l| l.parse().ok())
                .filter(|l| *l <= max)
                .ok_or_else(|| format!("'{text}': prefix length must be a number from 0 to {max}"))?;
            let host_bits = max - len;
            let mask: u128 = if host_bits == 128 {
                u128::MAX
            } else {
                (1u128 << host_bits) - 1
            };
            let n = to_u128(ip);
            if n & mask != 0 {
                let base = from_u128(n & !mask);
                return Err(format!("'{text}' has host bits set: did you mean '{base}/{len}'?"));
            }
            return outside_mapped(
                text,
                IpRange {
                    start: n,
                    end: n | mask,
                    family: IpFamily::of(&ip),
                },
            );
        }
        if let Some((a, b)) = text.split_once('-') {
            let (a, b) = (parse_addr(a)?, parse_addr(b)?);
            if IpFamily::of(&a) != IpFamily::of(&b) {
                return Err(format!("'{text}': both ends of a range must be of the same family"));
            }
            let (s, e) = (to_u128(a), to_u128(b));
            if s > e {
                return Err(format!("'{text}': the range starts after it ends: write '{b}-{a}'"));
            }
            return outside_mapped(
                text,
                IpRange {
                    start: s,
                    end: e,
                    family: IpFamily::of(&a),
                },
            );
        }
        let ip = parse_addr(text)?;
        let n = to_u128(ip);
        Ok(IpRange {
            start: n,
            end: n,
            family: IpFamily::of(&ip),
        })
    }

    pub fn contains(&self, n: u128) -> bool {
        self.start <= n && n <= self.end
    }

    pub fn overlaps(&self, other: &IpRange) -> bool {
        self.start <= other.end && other.start <= self.end
    }

    /// Number of addresses in the range, less the `.0` / `.255` ones when they are avoided.
    pub fn usable(&self, avoid_buggy: bool) -> u128 {
        let all = self.end - self.start + 1;
        if avoid_buggy && self.family == IpFamily::Ipv4 {
            all - count_residue(self.start, self.end, 0) - count_residue(self.start, self.end, 255)
        } else {
            all
        }
    }
}

impl std::fmt::Display for IpRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.start == self.end {
            write!(f, "{}", from_u128(self.start))
        } else {
            write!(f, "{}-{}", from_u128(self.start), from_u128(self.end))
        }
    }
}

fn parse_addr(s: &str) -> Result<IpAddr, String> {
    let s = s.trim();
    let ip: IpAddr = s
        .parse()
        .map_err(|_| format!("'{s}' is not an IP address (write e.g. 203.0.113.10 or 2001:db8::10)"))?;
    if let IpAddr::V6(v6) = ip
        && v6.to_ipv4_mapped().is_some()
    {
        return Err(format!("'{s}' is an IPv4-mapped IPv6 address: write the IPv4 form"));
    }
    Ok(ip)
}

/// Refuses an IPv6 range reaching into `::ffff:0:0/96`: there IPv4 addresses live on the
/// shared number line, so such a range would hand out IPv4 addresses as IPv6 ones and overlap
/// every IPv4 pool (and `::/0` would overflow [`IpRange::usable`]).
fn outside_mapped(text: &str, r: IpRange) -> Result<IpRange, String> {
    let mapped = IpRange {
        start: V4_MAPPED,
        end: V4_MAPPED | 0xffff_ffff,
        family: IpFamily::Ipv6,
    };
    if r.family == IpFamily::Ipv6 && r.overlaps(&mapped) {
        return Err(format!(
            "'{text}' includes the IPv4-mapped addresses ::ffff:0:0/96: write IPv4 ranges in IPv4 form"
        ));
    }
    Ok(r)
}

/// True for IPv4 addresses ending in `.0` or `.255`.
pub fn is_buggy(n: u128) -> bool {
    n >> 32 == V4_MAPPED >> 32 && matches!(n & 0xff, 0 | 255)
}

/// How many `x` in `[start, end]` have `x % 256 == r`. `V4_MAPPED` is a multiple of 256, so
/// the residue of a mapped address is that of the IPv4 address.
fn count_residue(start: u128, end: u128, r: u128) -> u128 {
    let upto = |n: u128| if n < r { 0 } else { (n - r) / 256 + 1 };
    upto(end) - if start == 0 { 0 } else { upto(start - 1) }
}
