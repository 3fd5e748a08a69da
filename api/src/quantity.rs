//! Resource quantities as Kubernetes writes them: CPU in cores or millicores
//! (`2`, `0.5`, `250m`) and memory in bytes with decimal or binary suffixes
//! (`128974848`, `129M`, `123Mi`, `1Gi`).

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// A quantity as the user wrote it; validation guarantees it parses.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Quantity(pub String);

/// Why a string is not a quantity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a quantity (use e.g. 500m or 2 for CPU, 64Mi or 1Gi for memory)")]
pub struct QuantityError(pub String);

impl Quantity {
    /// Wraps a string without checking it (see [`Quantity::bytes`], [`Quantity::millicores`]).
    pub fn new(s: impl Into<String>) -> Quantity {
        Quantity(s.into())
    }

    /// The quantity as a number of bytes (memory).
    pub fn bytes(&self) -> Result<u64, QuantityError> {
        parse_bytes(&self.0)
    }

    /// The quantity as millicores (CPU).
    pub fn millicores(&self) -> Result<u64, QuantityError> {
        parse_millicores(&self.0)
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses a memory quantity into bytes.
pub fn parse_bytes(s: &str) -> Result<u64, QuantityError> {
    let err = || QuantityError(s.to_string());
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, suffix) = t.split_at(split);
    let mult: u64 = match suffix {
        "" => 1,
        "k" | "K" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        _ => return Err(err()),
    };
    let value = decimal(num).ok_or_else(err)?;
    let bytes = value * mult as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(err());
    }
    Ok(bytes.ceil() as u64)
}

/// Parses a CPU quantity into millicores.
pub fn parse_millicores(s: &str) -> Result<u64, QuantityError> {
    let err = || QuantityError(s.to_string());
    let t = s.trim();
    if let Some(m) = t.strip_suffix('m') {
        if m.is_empty() || !m.bytes().all(|c| c.is_ascii_digit()) {
            return Err(err());
        }
        return m.parse().map_err(|_| err());
    }
    let cores = decimal(t).ok_or_else(err)?;
    let m = (cores * 1000.0).ceil();
    if !m.is_finite() || m > u64::MAX as f64 {
        return Err(err());
    }
    Ok(m as u64)
}

fn decimal(s: &str) -> Option<f64> {
    if s.is_empty() || s.starts_with('.') || s.ends_with('.') || s.matches('.').count() > 1 {
        return None;
    }
    if !s.bytes().all(|c| c.is_ascii_digit() || c == b'.') {
        return None;
    }
    s.parse().ok()
}

/// Formats bytes the short way: `64Mi`, `1.5Gi`, `512`.
pub fn format_bytes(b: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("Ti", 1 << 40),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
    ];
    for (name, size) in UNITS {
        if b >= size {
            let v = b as f64 / size as f64;
            return if b.is_multiple_of(size) {
                format!("{}{name}", b / size)
            } else {
                format!("{v:.1}{name}")
            };
        }
    }
    b.to_string()
}

impl schemars::JsonSchema for Quantity {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Quantity".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "An amount, as Kubernetes writes them: CPU as 500m or 2, memory and sizes as 64Mi, 1Gi or bytes."
        })
    }
}

impl Serialize for Quantity {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Quantity, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Quantity;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a quantity such as 500m, 2, 64Mi or 1Gi")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Quantity, E> {
                Ok(Quantity(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Quantity, E> {
                Ok(Quantity(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Quantity, E> {
                Ok(Quantity(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Quantity, E> {
                Ok(Quantity(v.to_string()))
            }
        }
        if d.is_human_readable() {
            // YAML writes `cpu: 2` as a number; accept it as the user meant it.
            d.deserialize_any(V)
        } else {
            d.deserialize_str(V)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_quantities() {
        let cases = [
            ("64Mi", 64 << 20),
            ("1Gi", 1 << 30),
            ("129M", 129_000_000),
            ("512", 512),
            ("1.5Ki", 1536),
            ("0", 0),
        ];
        for (s, want) in cases {
            assert_eq!(parse_bytes(s), Ok(want), "{s}");
        }
        for bad in [
            "",
            "12Q",
            "Mi",
            "-1",
            "1..2Mi",
            "1e9",
            "99999999999999999999999Ti",
            ".5Mi",
        ] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cpu_quantities() {
        let cases = [("100m", 100), ("2", 2000), ("0.5", 500), ("1.0005", 1001)];
        for (s, want) in cases {
            assert_eq!(parse_millicores(s), Ok(want), "{s}");
        }
        for bad in ["", "m", "1.5m", "abc", "-1", "1Mi"] {
            assert!(parse_millicores(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn formats_bytes() {
        assert_eq!(format_bytes(64 << 20), "64Mi");
        assert_eq!(format_bytes(1536), "1.5Ki");
        assert_eq!(format_bytes(100), "100");
    }
}
