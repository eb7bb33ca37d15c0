//! Conversions between `google.protobuf.Struct`/`Value` (document metadata on the wire) and
//! `serde_json` (how services store and filter it). Numbers are f64 on the wire; integral
//! values within ±2^53 come back as JSON integers so integer filters keep working.

use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Value};
use serde_json::{Map, Number, Value as Json};

/// `Struct` → JSON object.
pub fn from_struct(s: Struct) -> Map<String, Json> {
    s.fields.into_iter().map(|(k, v)| (k, from_value(v))).collect()
}

/// JSON object → `Struct`.
pub fn to_struct(m: Map<String, Json>) -> Struct {
    Struct { fields: m.into_iter().map(|(k, v)| (k, to_value(v))).collect() }
}

pub fn from_value(v: Value) -> Json {
    match v.kind {
        None | Some(Kind::NullValue(_)) => Json::Null,
        Some(Kind::BoolValue(b)) => Json::Bool(b),
        Some(Kind::NumberValue(n)) => {
            if n.fract() == 0.0 && n.abs() <= 9_007_199_254_740_992.0 {
                Json::Number(Number::from(n as i64))
            } else {
                Number::from_f64(n).map_or(Json::Null, Json::Number)
            }
        }
        Some(Kind::StringValue(s)) => Json::String(s),
        Some(Kind::StructValue(s)) => Json::Object(from_struct(s)),
        Some(Kind::ListValue(l)) => Json::Array(l.values.into_iter().map(from_value).collect()),
    }
}

pub fn to_value(v: Json) -> Value {
    let kind = match v {
        Json::Null => Kind::NullValue(0),
        Json::Bool(b) => Kind::BoolValue(b),
        Json::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Json::String(s) => Kind::StringValue(s),
        Json::Array(a) => Kind::ListValue(ListValue { values: a.into_iter().map(to_value).collect() }),
        Json::Object(o) => Kind::StructValue(to_struct(o)),
    };
    Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trips_and_keeps_integers_integral() {
        let original = json!({"year": 2024, "ratio": 0.5, "tags": ["a", true, null], "nested": {"k": "v"}});
        let Json::Object(map) = original.clone() else { unreachable!() };
        let back = Json::Object(from_struct(to_struct(map)));
        assert_eq!(back, original);
        assert!(back["year"].is_i64());
    }
}
