//! What the appliance should know about a Service: pure functions from a Kubernetes Service
//! (and the nodes with ready endpoints) to the wire `ServiceSpec`, plus the few reads of a
//! Service's status the controller needs. No I/O here, so every rule is tested with tables.

use std::net::IpAddr;

use edgelb_api::{HealthOverrides, IpFamily, Protocol, ServicePort, ServiceSpec, SessionAffinity, TrafficPolicy};
use k8s_openapi::api::core::v1::{LoadBalancerIngress, Service};

/// Annotation naming the pool to allocate from.
pub const ANNOTATION_POOL: &str = "edgelb.io/pool";
/// Annotation with the addresses wanted, comma separated (one per family).
pub const ANNOTATION_IPS: &str = "edgelb.io/load-balancer-ips";
/// Annotation with a sharing key: Services with the same key share one address.
pub const ANNOTATION_SHARED: &str = "edgelb.io/allow-shared-ip";
/// Annotation with the IPVS scheduler.
pub const ANNOTATION_SCHEDULER: &str = "edgelb.io/scheduler";
/// Annotation with the forwarding method: `fullnat`, `nat`, `direct` or `tunnel`.
pub const ANNOTATION_FORWARDING: &str = "edgelb.io/forwarding";
/// Annotation with the time between two health probes of each node (`2s`, `500ms`, `1m`).
pub const ANNOTATION_HEALTH_INTERVAL: &str = "edgelb.io/health-interval";
/// Annotation with the time a health probe may take (`1s`, `300ms`).
pub const ANNOTATION_HEALTH_TIMEOUT: &str = "edgelb.io/health-timeout";
/// Annotation with the good probes in a row that put a node back (1 to 100).
pub const ANNOTATION_HEALTH_RISE: &str = "edgelb.io/health-rise";
/// Annotation with the failed probes in a row that drain a node (1 to 100).
pub const ANNOTATION_HEALTH_FALL: &str = "edgelb.io/health-fall";
/// Annotation with how much each probe interval is spread at random, in percent either way
/// (0 to 50).
pub const ANNOTATION_HEALTH_JITTER: &str = "edgelb.io/health-jitter-percent";
/// Our finalizer: the Service is not deleted before the appliance released its addresses.
pub const FINALIZER: &str = "edgelb.io/release";
/// The `ipMode` written into the status: traffic arrives with the VIP as destination.
pub const IP_MODE_VIP: &str = "VIP";

/// A Service we cannot describe to the appliance; the message is shown in an Event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SpecError(pub String);

/// Whether the Service is `type: LoadBalancer` of our class (or of no class, with
/// `--default-class`).
pub fn is_ours(svc: &Service, class: &str, default_class: bool) -> bool {
    let Some(spec) = &svc.spec else { return false };
    if spec.type_.as_deref() != Some("LoadBalancer") {
        return false;
    }
    match spec.load_balancer_class.as_deref() {
        Some(c) => c == class,
        None => default_class,
    }
}

/// Whether the Service carries our finalizer.
pub fn has_finalizer(svc: &Service) -> bool {
    svc.metadata
        .finalizers
        .as_ref()
        .is_some_and(|f| f.iter().any(|x| x == FINALIZER))
}

/// The addresses in `status.loadBalancer.ingress` (hostnames are not ours and are skipped).
pub fn status_ips(svc: &Service) -> Vec<IpAddr> {
    status_ingress(svc)
        .iter()
        .filter_map(|i| i.ip.as_deref()?.parse().ok())
        .collect()
}

/// The current `status.loadBalancer.ingress`.
pub fn status_ingress(svc: &Service) -> &[LoadBalancerIngress] {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_deref())
        .unwrap_or_default()
}

/// The ingress entries the status should carry for these addresses.
pub fn ingress_for(ips: &[IpAddr]) -> Vec<LoadBalancerIngress> {
    ips.iter()
        .map(|ip| LoadBalancerIngress {
            ip: Some(ip.to_string()),
            ip_mode: Some(IP_MODE_VIP.to_owned()),
            ..Default::default()
        })
        .collect()
}

/// The sharing key of a Service, if it has one.
pub fn sharing_key(svc: &Service) -> Option<String> {
    annotation(svc, ANNOTATION_SHARED).map(str::to_owned)
}

fn annotation<'a>(svc: &'a Service, key: &str) -> Option<&'a str> {
    svc.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
}

fn family(s: &str) -> Result<IpFamily, SpecError> {
    match s {
        "IPv4" => Ok(IpFamily::Ipv4),
        "IPv6" => Ok(IpFamily::Ipv6),
        other => Err(SpecError(format!("unknown IP family {other:?}"))),
    }
}

fn protocol(s: Option<&str>) -> Result<Protocol, SpecError> {
    match s.unwrap_or("TCP") {
        "TCP" => Ok(Protocol::Tcp),
        "UDP" => Ok(Protocol::Udp),
        "SCTP" => Ok(Protocol::Sctp),
        other => Err(SpecError(format!("unknown protocol {other:?}"))),
    }
}

fn port(v: i32, what: &str) -> Result<u16, SpecError> {
    u16::try_from(v)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| SpecError(format!("{what} {v} is not a port")))
}

/// A duration as Kubernetes and Go write them, in whole milliseconds: one or more numbers,
/// each with a unit (`ms`, `s`, `m`, `h`), e.g. `500ms`, `2s`, `1.5s`, `1m30s`. A bare number is
/// refused rather than guessed at: `2` could mean seconds or milliseconds, and a wrong guess is
/// a factor of 1000. The message says what to write.
pub fn parse_duration_ms(text: &str) -> Result<u32, String> {
    const EXAMPLE: &str = "write a number with a unit, e.g. \"500ms\", \"2s\" or \"1m\"";
    let t = text.trim();
    if t.is_empty() {
        return Err(format!("it is empty: {EXAMPLE}"));
    }
    if t.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(format!("{t:?} has no unit: {EXAMPLE}"));
    }
    let too_long = || format!("{t:?} is far too long");
    let mut rest = t;
    // Integer arithmetic: `1.1s` is exactly 1100 ms, which floating point does not promise.
    let mut total: u64 = 0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, after) = rest.split_at(num_len);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let scale: u64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ if num.is_empty() => return Err(format!("{t:?} is not a duration: {EXAMPLE}")),
            other => return Err(format!("{t:?} has the unknown unit {other:?}: use ms, s, m or h")),
        };
        let (whole, frac) = num.split_once('.').unwrap_or((num, ""));
        if (whole.is_empty() && frac.is_empty()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("{t:?} is not a duration: {EXAMPLE}"));
        }
        let whole: u64 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| too_long())?
        };
        let mut ms = whole.checked_mul(scale).ok_or_else(too_long)?;
        if !frac.is_empty() {
            let digits = u32::try_from(frac.len()).map_err(|_| too_long())?;
            let denom = 10u64.checked_pow(digits).ok_or_else(too_long)?;
            let numer = frac
                .parse::<u64>()
                .map_err(|_| too_long())?
                .checked_mul(scale)
                .ok_or_else(too_long)?;
            if numer % denom != 0 {
                return Err(format!("{t:?} is not a whole number of milliseconds"));
            }
            ms = ms.checked_add(numer / denom).ok_or_else(too_long)?;
        }
        total = total.checked_add(ms).ok_or_else(too_long)?;
        rest = next;
    }
    u32::try_from(total).map_err(|_| too_long())
}

/// A count annotation (`rise`, `fall`).
fn parse_count(text: &str) -> Result<u32, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a whole number: write e.g. \"3\""))
}

/// The Service's own health-check settings from the `edgelb.io/health-*` annotations; `None`
/// without any. Every bad annotation is reported at once, naming it and what to write, with
/// the appliance's limits checked here too so the message names the annotation rather than the
/// API field.
pub fn health_overrides(svc: &Service) -> Result<Option<HealthOverrides>, SpecError> {
    let mut problems: Vec<String> = Vec::new();
    let mut read = |key: &str, parse: fn(&str) -> Result<u32, String>| -> Option<u32> {
        let raw = annotation(svc, key)?;
        parse(raw)
            .map_err(|m| problems.push(format!("annotation {key}: {m}")))
            .ok()
    };
    let o = HealthOverrides {
        interval_ms: read(ANNOTATION_HEALTH_INTERVAL, parse_duration_ms),
        timeout_ms: read(ANNOTATION_HEALTH_TIMEOUT, parse_duration_ms),
        rise: read(ANNOTATION_HEALTH_RISE, parse_count),
        fall: read(ANNOTATION_HEALTH_FALL, parse_count),
        jitter_percent: read(ANNOTATION_HEALTH_JITTER, parse_count),
    };
    for (field, _) in o.problems() {
        let (key, message) = match field {
            "interval_ms" => (ANNOTATION_HEALTH_INTERVAL, "must be from 50ms to 1h".to_owned()),
            "timeout_ms" if o.timeout_ms.is_some_and(|t| (50..=3_600_000).contains(&t)) => (
                ANNOTATION_HEALTH_TIMEOUT,
                format!(
                    "must not be longer than {ANNOTATION_HEALTH_INTERVAL} ({:?})",
                    annotation(svc, ANNOTATION_HEALTH_INTERVAL).unwrap_or_default()
                ),
            ),
            "timeout_ms" => (ANNOTATION_HEALTH_TIMEOUT, "must be from 50ms to 1h".to_owned()),
            "rise" => (ANNOTATION_HEALTH_RISE, "must be from 1 to 100".to_owned()),
            "jitter_percent" => (
                ANNOTATION_HEALTH_JITTER,
                format!("must be from 0 to {}", edgelb_api::MAX_JITTER_PERCENT),
            ),
            _ => (ANNOTATION_HEALTH_FALL, "must be from 1 to 100".to_owned()),
        };
        let raw = annotation(svc, key).unwrap_or_default();
        let problem = format!("annotation {key}: {raw:?} {message}");
        // A timeout both out of range and longer than the interval is one thing to fix.
        if !problems.contains(&problem) {
            problems.push(problem);
        }
    }
    if !problems.is_empty() {
        return Err(SpecError(problems.join("; ")));
    }
    Ok((o != HealthOverrides::default()).then_some(o))
}

/// The addresses asked for: `edgelb.io/load-balancer-ips` wins over `spec.loadBalancerIP`;
/// at most one per family.
fn requested_ips(svc: &Service) -> Result<Vec<IpAddr>, SpecError> {
    let raw = match annotation(svc, ANNOTATION_IPS) {
        Some(list) => list.to_owned(),
        None => svc
            .spec
            .as_ref()
            .and_then(|s| s.load_balancer_ip.clone())
            .unwrap_or_default(),
    };
    let mut ips: Vec<IpAddr> = Vec::new();
    for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let ip: IpAddr = part
            .parse()
            .map_err(|_| SpecError(format!("{ANNOTATION_IPS}: {part:?} is not an IP address")))?;
        if ips.iter().any(|o| IpFamily::of(o) == IpFamily::of(&ip)) {
            return Err(SpecError(format!(
                "{ANNOTATION_IPS}: at most one {} address may be requested",
                IpFamily::of(&ip)
            )));
        }
        ips.push(ip);
    }
    Ok(ips)
}

/// Families per `ipFamilies` and `ipFamilyPolicy`: `SingleStack` takes the first; the dual-stack
/// policies take what the API server filled in. Without `ipFamilies` the requested addresses
/// decide, else IPv4.
fn ip_families(svc: &Service, requested: &[IpAddr]) -> Result<Vec<IpFamily>, SpecError> {
    let spec = svc.spec.as_ref();
    let mut families = Vec::new();
    for f in spec.and_then(|s| s.ip_families.as_deref()).unwrap_or_default() {
        let f = family(f)?;
        if !families.contains(&f) {
            families.push(f);
        }
    }
    if families.is_empty() {
        families = requested.iter().map(IpFamily::of).collect();
    }
    if families.is_empty() {
        families.push(IpFamily::Ipv4);
    }
    let policy = spec
        .and_then(|s| s.ip_family_policy.as_deref())
        .unwrap_or("SingleStack");
    if policy == "SingleStack" {
        families.truncate(1);
    } else if policy == "RequireDualStack" && families.len() < 2 {
        return Err(SpecError(
            "ipFamilyPolicy RequireDualStack needs two ipFamilies".to_owned(),
        ));
    }
    Ok(families)
}

/// What the appliance should know about a Service. `local_nodes` are the nodes with ready
/// endpoints; they are sent only for `externalTrafficPolicy: Local`.
pub fn desired_spec(svc: &Service, local_nodes: &[String]) -> Result<ServiceSpec, SpecError> {
    let uid = svc
        .metadata
        .uid
        .clone()
        .ok_or_else(|| SpecError("the Service has no uid".to_owned()))?;
    let spec = svc
        .spec
        .as_ref()
        .ok_or_else(|| SpecError("the Service has no spec".to_owned()))?;
    let mut ports = Vec::new();
    for p in spec.ports.as_deref().unwrap_or_default() {
        let node_port = p.node_port.ok_or_else(|| {
            SpecError(format!(
                "port {} has no nodePort (allocateLoadBalancerNodePorts must not be false)",
                p.port
            ))
        })?;
        ports.push(ServicePort {
            name: p.name.clone().filter(|n| !n.is_empty()),
            protocol: protocol(p.protocol.as_deref())?,
            port: port(p.port, "port")?,
            node_port: port(node_port, "nodePort")?,
        });
    }
    if ports.is_empty() {
        return Err(SpecError("the Service has no ports".to_owned()));
    }
    let local = spec.external_traffic_policy.as_deref() == Some("Local");
    let client_ip = spec.session_affinity.as_deref() == Some("ClientIP");
    let requested = requested_ips(svc)?;
    Ok(ServiceSpec {
        uid,
        ports,
        external_traffic_policy: if local {
            TrafficPolicy::Local
        } else {
            TrafficPolicy::Cluster
        },
        health_check_node_port: match spec.health_check_node_port {
            Some(p) if local => Some(port(p, "healthCheckNodePort")?),
            _ => None,
        },
        session_affinity: if client_ip {
            SessionAffinity::ClientIp
        } else {
            SessionAffinity::None
        },
        session_affinity_timeout_seconds: if client_ip {
            spec.session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .and_then(|t| u32::try_from(t).ok())
        } else {
            None
        },
        source_ranges: spec.load_balancer_source_ranges.clone().unwrap_or_default(),
        pool: annotation(svc, ANNOTATION_POOL).map(str::to_owned),
        ip_families: ip_families(svc, &requested)?,
        requested_ips: requested,
        sharing_key: sharing_key(svc),
        scheduler: annotation(svc, ANNOTATION_SCHEDULER).map(str::to_owned),
        local_nodes: local.then(|| local_nodes.to_vec()),
        health: health_overrides(svc)?,
        forwarding: annotation(svc, ANNOTATION_FORWARDING)
            .map(|v| {
                v.parse()
                    .map_err(|e| SpecError(format!("{ANNOTATION_FORWARDING}: {e}")))
            })
            .transpose()?,
    })
}

#[cfg(test)]
mod tests;

/// The `edgelb.io/health-*` annotations. (Beside `spec/tests.rs` rather than in it only because
/// they were written while that file had another owner; they belong there.)
#[cfg(test)]
mod health_tests {
    use super::*;
    use crate::fixtures::{annotate, service};

    #[test]
    fn durations_parse_like_kubernetes_writes_them() {
        let ok: &[(&str, u32)] = &[
            ("500ms", 500),
            ("2s", 2_000),
            ("1m", 60_000),
            ("1h", 3_600_000),
            ("1.5s", 1_500),
            ("1.1s", 1_100),
            ("0.25s", 250),
            (".5s", 500),
            ("1m30s", 90_000),
            ("1s500ms", 1_500),
            (" 2s ", 2_000),
            ("0ms", 0),
        ];
        for (text, want) in ok {
            assert_eq!(parse_duration_ms(text), Ok(*want), "{text}");
        }
        let bad: &[(&str, &str)] = &[
            ("2", "has no unit"),
            ("500", "has no unit"),
            ("", "empty"),
            ("2x", "unknown unit \"x\""),
            ("2 s", "unknown unit \" s\""),
            ("2sec", "unknown unit \"sec\""),
            ("-1s", "not a duration"),
            ("ms", "not a duration"),
            ("1.2.3s", "not a duration"),
            ("1.5ms", "not a whole number of milliseconds"),
            ("2000h", "far too long"),
            ("99999999999999999999999s", "far too long"),
        ];
        for (text, want) in bad {
            let err = parse_duration_ms(text).expect_err(text);
            assert!(err.contains(want), "{text}: {err}");
        }
        assert!(
            parse_duration_ms("2").expect_err("bare").contains("\"2s\""),
            "the message says what to write"
        );
    }

    fn with(annotations: &[(&str, &str)]) -> Service {
        annotations
            .iter()
            .fold(service("d", "a"), |svc, (k, v)| annotate(svc, k, v))
    }

    #[test]
    fn health_annotations_become_the_services_overrides() {
        let o = |interval_ms, timeout_ms, rise, fall| {
            Some(HealthOverrides {
                interval_ms,
                timeout_ms,
                rise,
                fall,
                jitter_percent: None,
            })
        };
        let cases: Vec<(&str, Service, Option<HealthOverrides>)> = vec![
            ("none", with(&[]), None),
            (
                "blank values are absent",
                with(&[(ANNOTATION_HEALTH_INTERVAL, " ")]),
                None,
            ),
            (
                "interval only",
                with(&[(ANNOTATION_HEALTH_INTERVAL, "500ms")]),
                o(Some(500), None, None, None),
            ),
            (
                "all four",
                with(&[
                    (ANNOTATION_HEALTH_INTERVAL, "5s"),
                    (ANNOTATION_HEALTH_TIMEOUT, "1500ms"),
                    (ANNOTATION_HEALTH_RISE, "3"),
                    (ANNOTATION_HEALTH_FALL, " 2 "),
                ]),
                o(Some(5_000), Some(1_500), Some(3), Some(2)),
            ),
            (
                "timeout alone may exceed the default interval: the appliance caps it",
                with(&[(ANNOTATION_HEALTH_TIMEOUT, "3s")]),
                o(None, Some(3_000), None, None),
            ),
            (
                "jitter, none at all",
                with(&[(ANNOTATION_HEALTH_JITTER, "0")]),
                Some(HealthOverrides {
                    jitter_percent: Some(0),
                    ..HealthOverrides::default()
                }),
            ),
            (
                "jitter beside an interval",
                with(&[(ANNOTATION_HEALTH_INTERVAL, "1s"), (ANNOTATION_HEALTH_JITTER, "25")]),
                Some(HealthOverrides {
                    interval_ms: Some(1_000),
                    jitter_percent: Some(25),
                    ..HealthOverrides::default()
                }),
            ),
        ];
        for (name, svc, want) in cases {
            assert_eq!(health_overrides(&svc), Ok(want), "{name}");
            assert_eq!(desired_spec(&svc, &[]).expect(name).health, want, "{name}");
        }
    }

    #[test]
    fn bad_health_annotations_name_the_annotation_and_what_to_write() {
        let cases: Vec<(&str, Service, Vec<&str>)> = vec![
            (
                "bare number",
                with(&[(ANNOTATION_HEALTH_INTERVAL, "2")]),
                vec!["annotation edgelb.io/health-interval: \"2\" has no unit"],
            ),
            (
                "below the minimum",
                with(&[(ANNOTATION_HEALTH_INTERVAL, "10ms")]),
                vec!["annotation edgelb.io/health-interval: \"10ms\" must be from 50ms to 1h"],
            ),
            (
                "above the maximum",
                with(&[(ANNOTATION_HEALTH_TIMEOUT, "2h")]),
                vec!["annotation edgelb.io/health-timeout: \"2h\" must be from 50ms to 1h"],
            ),
            (
                "timeout longer than interval",
                with(&[(ANNOTATION_HEALTH_INTERVAL, "1s"), (ANNOTATION_HEALTH_TIMEOUT, "2s")]),
                vec![
                    "annotation edgelb.io/health-timeout: \"2s\" must not be longer than edgelb.io/health-interval (\"1s\")",
                ],
            ),
            (
                "counts",
                with(&[(ANNOTATION_HEALTH_RISE, "0"), (ANNOTATION_HEALTH_FALL, "three")]),
                vec![
                    "annotation edgelb.io/health-fall: \"three\" is not a whole number",
                    "annotation edgelb.io/health-rise: \"0\" must be from 1 to 100",
                ],
            ),
            (
                "jitter past half the interval",
                with(&[(ANNOTATION_HEALTH_JITTER, "60")]),
                vec!["annotation edgelb.io/health-jitter-percent: \"60\" must be from 0 to 50"],
            ),
            (
                "jitter with a percent sign",
                with(&[(ANNOTATION_HEALTH_JITTER, "10%")]),
                vec!["annotation edgelb.io/health-jitter-percent: \"10%\" is not a whole number"],
            ),
            (
                "every problem at once",
                with(&[
                    (ANNOTATION_HEALTH_INTERVAL, "fast"),
                    (ANNOTATION_HEALTH_TIMEOUT, "30ms"),
                    (ANNOTATION_HEALTH_FALL, "101"),
                ]),
                vec![
                    "annotation edgelb.io/health-interval: \"fast\" is not a duration",
                    "annotation edgelb.io/health-timeout: \"30ms\" must be from 50ms to 1h",
                    "annotation edgelb.io/health-fall: \"101\" must be from 1 to 100",
                ],
            ),
        ];
        for (name, svc, wants) in cases {
            let SpecError(message) = health_overrides(&svc).expect_err(name);
            for want in &wants {
                assert!(message.contains(want), "{name}: {message:?} lacks {want:?}");
            }
            assert_eq!(message.matches("annotation ").count(), wants.len(), "{name}: {message}");
            let SpecError(from_spec) = desired_spec(&svc, &[]).expect_err(name);
            assert_eq!(from_spec, message, "{name}: the Service is refused as a whole");
        }
    }
}
