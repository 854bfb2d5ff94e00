//! Schemas of the strings the API takes, for the OpenAPI document only: the wire types keep
//! plain `String`s and `IpAddr`s, and name these with `#[schema(value_type = ...)]`. Each states
//! what the appliance accepts, no more and no less, so a client (or a fuzzer) that follows the
//! document is neither surprised by a refusal of the value's shape nor lets through one that
//! the appliance refuses. What a schema cannot say (a range that overlaps another, a prefix
//! with host bits set) the appliance still answers with a 400 naming the field.

use std::borrow::Cow;

use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{AnyOfBuilder, KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type};
use utoipa::{PartialSchema, ToSchema};

/// A name of a pool, cluster or token, and a Kubernetes namespace or Service name: a DNS label
/// (RFC 1123), 1 to 63 lowercase letters, digits and `-`, starting and ending with a letter or
/// digit. Used as the `pattern` of every such field and path parameter.
pub const NAME_PATTERN: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// The IPVS schedulers the appliance accepts by name (those of Linux IPVS).
pub const SCHEDULERS: &[&str] = &[
    "rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf", "mh", "twos",
];

/// A string schema: a marker type named by `value_type` that implements utoipa's traits by hand
/// (utoipa takes no `pattern` on a newtype's field).
macro_rules! string_schema {
    ($(#[$doc:meta])* $ty:ident, pattern = $pattern:expr, max_length = $max:expr, description = $text:expr) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $ty;

        impl PartialSchema for $ty {
            fn schema() -> RefOr<Schema> {
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some($pattern))
                    .min_length(Some(1))
                    .max_length($max)
                    .description(Some($text))
                    .into()
            }
        }

        impl ToSchema for $ty {
            fn name() -> Cow<'static, str> {
                Cow::Borrowed(stringify!($ty))
            }
        }
    };
}

string_schema!(
    /// A DNS-label name (see [`NAME_PATTERN`]).
    Name,
    pattern = NAME_PATTERN,
    max_length = Some(63),
    description = "A DNS label (RFC 1123): 1 to 63 lowercase letters, digits and '-', starting and ending with a letter or digit"
);

string_schema!(
    /// A pool range: a CIDR (`203.0.113.0/26`), an inclusive range `start-end`, or one address,
    /// IPv4 or IPv6, spaces around its parts allowed.
    PoolRange,
    pattern = format!(r"^\s*{a}\s*(/[0-9]{{1,3}}|-\s*{a})?\s*$", a = address()),
    max_length = None,
    description = "A CIDR (203.0.113.0/26, 2001:db8:1::/64), an inclusive range (203.0.113.100-203.0.113.120) or one address"
);

string_schema!(
    /// A CIDR, IPv4 or IPv6 (`198.51.100.0/24`, `2001:db8::/32`).
    Cidr,
    pattern = format!("^{}/[0-9]{{1,3}}$", address()),
    max_length = Some(43),
    description = "A CIDR (198.51.100.0/24, 2001:db8::/32)"
);

/// An IPv4 or IPv6 address in the text forms Rust's parser takes, as a regular expression for
/// the patterns above: IPv4 as four decimal octets without leading zeros; IPv6 in full,
/// compressed with `::`, or ending in an IPv4 address. Where a prefix or a range is involved the
/// appliance checks more (host bits, order, family) and answers 400 naming the field.
fn address() -> String {
    let v4 = r"((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])";
    let h = "[0-9A-Fa-f]{1,4}";
    let v6 = [
        format!("({h}:){{7}}{h}"),
        format!("({h}:){{1,7}}:"),
        format!("({h}:){{1,6}}:{h}"),
        format!("({h}:){{1,5}}(:{h}){{1,2}}"),
        format!("({h}:){{1,4}}(:{h}){{1,3}}"),
        format!("({h}:){{1,3}}(:{h}){{1,4}}"),
        format!("({h}:){{1,2}}(:{h}){{1,5}}"),
        format!("{h}:(:{h}){{1,6}}"),
        format!(":((:{h}){{1,7}}|:)"),
        format!("({h}:){{6}}{v4}"),
        format!("({h}(:{h}){{0,4}})?::({h}:){{0,4}}{v4}"),
    ];
    format!("({v4}|{})", v6.join("|"))
}

/// An IPv4 or IPv6 address.
#[derive(Debug)]
pub struct IpAddress;

impl PartialSchema for IpAddress {
    fn schema() -> RefOr<Schema> {
        let of = |f| {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(SchemaFormat::KnownFormat(f)))
        };
        AnyOfBuilder::new()
            .item(of(KnownFormat::Ipv4))
            .item(of(KnownFormat::Ipv6))
            .description(Some("An IPv4 or IPv6 address"))
            .into()
    }
}

impl ToSchema for IpAddress {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("IpAddress")
    }
}

/// An IPVS scheduler, one of [`SCHEDULERS`].
#[derive(Debug)]
pub struct Scheduler;

impl PartialSchema for Scheduler {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(SCHEDULERS.iter().copied()))
            .description(Some("An IPVS scheduler (see ipvsadm(8))"))
            .into()
    }
}

impl ToSchema for Scheduler {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Scheduler")
    }
}

/// The shortest and longest console password, in characters (Unicode scalar values, as JSON
/// Schema counts them). The longest bounds the work of hashing one.
pub const PASSWORD_CHARS: std::ops::RangeInclusive<usize> = 12..=1024;

/// A console user's password.
#[derive(Debug)]
pub struct Password;

impl PartialSchema for Password {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Password)))
            .min_length(Some(*PASSWORD_CHARS.start()))
            .max_length(Some(*PASSWORD_CHARS.end()))
            .description(Some(
                "12 to 1024 characters; never shown again, never logged or audited",
            ))
            .into()
    }
}

impl ToSchema for Password {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Password")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_schema_carries_the_name_pattern() {
        let json = serde_json::to_value(Name::schema()).expect("read");
        assert_eq!(json["pattern"], NAME_PATTERN, "{json}");
        assert_eq!(json["maxLength"], 63, "{json}");
    }
}
