//! Request objects come as JSON objects only. serde's derived `Deserialize` of a struct also
//! takes an array of its fields in order (`"health": [100, 50]` as an `interval_ms` and a
//! `timeout_ms`), which no client means and the OpenAPI document does not allow; a typo like
//! that must be refused, not read by position. The appliance reads each request body as a JSON
//! object first ([`from_object`]); the fields holding request objects use these functions.

use serde::de::{DeserializeOwned, Error};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

/// A struct read from a JSON object (and nothing else); the error names the field's path
/// (`ports[0].node_port: invalid type ...`).
pub fn from_object<T: DeserializeOwned>(
    map: Map<String, Value>,
) -> Result<T, serde_path_to_error::Error<serde_json::Error>> {
    serde_path_to_error::deserialize(Value::Object(map))
}

struct Object<T>(T);

impl<'de, T: DeserializeOwned> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map = Map::<String, Value>::deserialize(d)?;
        from_object(map).map(Object).map_err(D::Error::custom)
    }
}

/// `null` or an object.
pub fn option<'de, D: Deserializer<'de>, T: DeserializeOwned>(d: D) -> Result<Option<T>, D::Error> {
    Ok(Option::<Object<T>>::deserialize(d)?.map(|o| o.0))
}

/// An array of objects.
pub fn vec<'de, D: Deserializer<'de>, T: DeserializeOwned>(d: D) -> Result<Vec<T>, D::Error> {
    Ok(Vec::<Object<T>>::deserialize(d)?.into_iter().map(|o| o.0).collect())
}

#[cfg(test)]
mod tests {
    use crate::{HealthOverrides, PoolPatch, PoolSpec, ServicePort, ServiceSpec};

    #[test]
    fn a_request_object_written_as_an_array_is_refused_at_every_depth() {
        let pool = r#"{"name": "p", "ranges": ["10.0.0.0/24"], "health": {"rise": 2}}"#;
        let spec: PoolSpec = serde_json::from_str(pool).expect("read");
        assert_eq!(
            spec.health,
            Some(HealthOverrides {
                rise: Some(2),
                ..Default::default()
            })
        );

        let nested = r#"{"name": "p", "ranges": ["10.0.0.0/24"], "health": [null, null]}"#;
        let e = serde_json::from_str::<PoolSpec>(nested)
            .expect_err("refused")
            .to_string();
        assert!(e.contains("expected a map"), "{e}");
        let e = serde_json::from_str::<PoolPatch>(r#"{"health": [100]}"#)
            .expect_err("refused")
            .to_string();
        assert!(e.contains("expected a map"), "{e}");
        let patch: PoolPatch = serde_json::from_str(r#"{"health": null}"#).expect("read");
        assert_eq!(patch.health, Some(None));

        let ports = r#"{"uid": "u", "ports": [["TCP", 80, 30080]]}"#;
        let e = serde_json::from_str::<ServiceSpec>(ports)
            .expect_err("refused")
            .to_string();
        assert!(e.contains("expected a map"), "{e}");
        let ok = r#"{"uid": "u", "ports": [{"protocol": "TCP", "port": 80, "node_port": 30080}]}"#;
        assert_eq!(
            serde_json::from_str::<ServiceSpec>(ok).expect("read").ports[0].node_port,
            30080
        );
    }

    #[test]
    fn a_built_spec_has_the_defaults_of_a_body_that_leaves_the_fields_out() {
        let body = r#"{"uid": "u", "ports": [{"protocol": "UDP", "port": 53, "node_port": 30053}]}"#;
        let read: ServiceSpec = serde_json::from_str(body).expect("read");
        let built = ServiceSpec::new("u", vec![ServicePort::new(crate::Protocol::Udp, 53, 30053)]);
        assert_eq!(built, read);
    }
}
