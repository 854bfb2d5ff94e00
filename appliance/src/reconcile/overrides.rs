//! Which health-check settings a Service's real servers are probed with, as a pure function:
//! field by field, the Service's own value wins over its pool's, which wins over the appliance's
//! configured defaults (represented by `None`: [`crate::health::Settings::with`] fills them in).
//! Nothing here reads the store or the clock.

use edgelb_api::HealthOverrides;

/// The overrides that apply to a Service in a pool: each field from the Service if it sets it,
/// else from the pool, else `None` (the appliance's default). `None` overall when neither sets
/// anything, so a Service with no overrides anywhere is probed with the defaults exactly as
/// before pools had overrides.
///
/// Fields are taken one by one rather than as a whole: a pool that says `fall: 2` and a Service
/// that says `interval_ms: 500` get both. A merged `timeout_ms` may end up longer than a merged
/// `interval_ms` (each valid on its own); [`crate::health::Settings::with`] caps the timeout at
/// the interval, so a probe never outlasts its interval.
pub fn effective(service: Option<HealthOverrides>, pool: Option<HealthOverrides>) -> Option<HealthOverrides> {
    let (s, p) = match (service, pool) {
        (None, None) => return None,
        (Some(s), None) => return nonempty(s),
        (None, Some(p)) => return nonempty(p),
        (Some(s), Some(p)) => (s, p),
    };
    nonempty(HealthOverrides {
        interval_ms: s.interval_ms.or(p.interval_ms),
        timeout_ms: s.timeout_ms.or(p.timeout_ms),
        rise: s.rise.or(p.rise),
        fall: s.fall.or(p.fall),
        jitter_percent: s.jitter_percent.or(p.jitter_percent),
    })
}

/// `None` for overrides that override nothing (`{}`), so they are not told apart from none.
fn nonempty(o: HealthOverrides) -> Option<HealthOverrides> {
    (o != HealthOverrides::default()).then_some(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(interval_ms: Option<u32>, timeout_ms: Option<u32>, rise: Option<u32>, fall: Option<u32>) -> HealthOverrides {
        HealthOverrides {
            interval_ms,
            timeout_ms,
            rise,
            fall,
            jitter_percent: None,
        }
    }

    #[test]
    fn the_service_wins_over_the_pool_field_by_field() {
        // (case, the Service's, the pool's, effective)
        type H = Option<HealthOverrides>;
        let cases: &[(&str, H, H, H)] = &[
            ("neither: the appliance's defaults", None, None, None),
            (
                "only the Service",
                Some(o(Some(500), None, None, Some(2))),
                None,
                Some(o(Some(500), None, None, Some(2))),
            ),
            (
                "only the pool",
                None,
                Some(o(None, Some(300), Some(4), None)),
                Some(o(None, Some(300), Some(4), None)),
            ),
            (
                "disjoint fields combine",
                Some(o(Some(500), None, None, None)),
                Some(o(None, None, None, Some(2))),
                Some(o(Some(500), None, None, Some(2))),
            ),
            (
                "the same field: the Service's",
                Some(o(Some(500), Some(200), None, None)),
                Some(o(Some(1000), Some(900), Some(5), Some(5))),
                Some(o(Some(500), Some(200), Some(5), Some(5))),
            ),
            (
                "a Service setting everything leaves nothing of the pool",
                Some(o(Some(100), Some(50), Some(1), Some(1))),
                Some(o(Some(9000), Some(900), Some(9), Some(9))),
                Some(o(Some(100), Some(50), Some(1), Some(1))),
            ),
            (
                "an empty Service object takes the pool's",
                Some(HealthOverrides::default()),
                Some(o(None, None, Some(3), None)),
                Some(o(None, None, Some(3), None)),
            ),
            (
                "empty objects on both sides are no overrides",
                Some(HealthOverrides::default()),
                Some(HealthOverrides::default()),
                None,
            ),
            (
                "an empty pool object alone is none",
                None,
                Some(HealthOverrides::default()),
                None,
            ),
            (
                "fields unset on both stay unset (appliance default)",
                Some(o(None, Some(200), None, None)),
                Some(o(None, None, None, Some(4))),
                Some(o(None, Some(200), None, Some(4))),
            ),
        ];
        for (name, service, pool, want) in cases {
            assert_eq!(effective(*service, *pool), *want, "{name}");
        }
    }

    #[test]
    fn merged_settings_never_let_a_probe_outlast_its_interval() {
        // Pool: long timeout; Service: short interval. Each is valid; together the timeout is
        // capped by the interval when turned into settings.
        let merged = effective(
            Some(o(Some(200), None, None, None)),
            Some(o(None, Some(900), None, None)),
        );
        assert_eq!(merged, Some(o(Some(200), Some(900), None, None)));
        let settings = crate::health::Settings::default().with(&merged.expect("some"));
        assert_eq!(settings.interval, std::time::Duration::from_millis(200));
        assert_eq!(settings.timeout, std::time::Duration::from_millis(200));
    }
}
