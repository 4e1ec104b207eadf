//! Human-readable quantities used by the CLI and the config file.
//!
//! - [`BitRate`]: a rate in **bits** per second, written like `tc` does: `500mbit`, `2gbit`, `750kbit`,
//!   `1000000` (plain bits/s) or `1.5gbit`. Units are decimal (1 kbit = 1000 bit/s).
//! - [`ByteSize`]: a size in bytes: `32MiB`, `4KiB`, `1GiB` (binary), `10MB`, `5kB` (decimal) or plain
//!   bytes (`1048576`).
//!
//! Both parse with [`std::str::FromStr`] into a typed [`UnitError`] and deserialize from either a string or
//! an integer in TOML.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// Why a rate or size string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    /// The string holds no number.
    #[error("`{input}`: expected a number followed by an optional unit")]
    NoNumber {
        /// The refused input.
        input: String,
    },
    /// The unit is not one of the accepted ones.
    #[error("`{input}`: unknown unit `{unit}` (accepted: {accepted})")]
    UnknownUnit {
        /// The refused input.
        input: String,
        /// The unit as written.
        unit: String,
        /// The accepted units.
        accepted: &'static str,
    },
    /// The value is zero, negative, not finite or does not fit in 64 bits.
    #[error("`{input}`: value out of range")]
    OutOfRange {
        /// The refused input.
        input: String,
    },
}

/// Splits `"1.5gbit"` into `(1.5, "gbit")`.
fn split_number(input: &str) -> Result<(f64, String), UnitError> {
    let trimmed = input.trim();
    let end = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(end);
    let number: String = number.chars().filter(|&c| c != '_').collect();
    let value: f64 = number.parse().map_err(|_| UnitError::NoNumber {
        input: input.to_owned(),
    })?;
    Ok((value, unit.trim().to_owned()))
}

/// Multiplies and checks the result is a positive integer that fits `u64`.
fn scaled(input: &str, value: f64, factor: f64) -> Result<u64, UnitError> {
    let total = value * factor;
    if !total.is_finite() || total < 1.0 || total >= u64::MAX as f64 {
        return Err(UnitError::OutOfRange {
            input: input.to_owned(),
        });
    }
    Ok(total.round() as u64)
}

/// Parses `<number><unit>` into a positive integer: `factor` maps a unit to its multiplier
/// (`None`: unknown, listed in the error with `accepted`).
fn parse_quantity(
    input: &str,
    accepted: &'static str,
    factor: impl Fn(&str) -> Option<f64>,
) -> Result<u64, UnitError> {
    let (value, unit) = split_number(input)?;
    let Some(factor) = factor(&unit) else {
        return Err(UnitError::UnknownUnit {
            input: input.to_owned(),
            unit,
            accepted,
        });
    };
    scaled(input, value, factor)
}

/// A rate in bits per second (always > 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BitRate {
    bits_per_sec: u64,
}

impl BitRate {
    /// A rate of `bits_per_sec` bits per second; `None` for zero.
    pub fn from_bits_per_sec(bits_per_sec: u64) -> Option<Self> {
        (bits_per_sec > 0).then_some(Self { bits_per_sec })
    }

    /// The rate in bits per second.
    pub fn bits_per_sec(self) -> u64 {
        self.bits_per_sec
    }

    /// The rate in bytes per second.
    pub fn bytes_per_sec(self) -> f64 {
        self.bits_per_sec as f64 / 8.0
    }
}

impl FromStr for BitRate {
    type Err = UnitError;

    fn from_str(input: &str) -> Result<Self, UnitError> {
        let factor = |unit: &str| match unit.to_ascii_lowercase().trim_end_matches("/s") {
            "" | "bit" | "bps" => Some(1.0),
            "kbit" => Some(1e3),
            "mbit" => Some(1e6),
            "gbit" => Some(1e9),
            "tbit" => Some(1e12),
            _ => None,
        };
        let bits_per_sec = parse_quantity(
            input,
            "bit, kbit, mbit, gbit, tbit (bits per second)",
            factor,
        )?;
        Ok(Self { bits_per_sec })
    }
}

impl fmt::Display for BitRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bits = self.bits_per_sec;
        for (factor, unit) in [
            (1_000_000_000, "gbit"),
            (1_000_000, "mbit"),
            (1_000, "kbit"),
        ] {
            if bits >= factor && bits.is_multiple_of(factor) {
                return write!(f, "{}{unit}", bits / factor);
            }
        }
        write!(f, "{bits}bit")
    }
}

/// A size in bytes (always > 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize {
    bytes: u64,
}

impl ByteSize {
    /// A size of `bytes` bytes; `None` for zero.
    pub fn from_bytes(bytes: u64) -> Option<Self> {
        (bytes > 0).then_some(Self { bytes })
    }

    /// The size in bytes.
    pub fn bytes(self) -> u64 {
        self.bytes
    }
}

impl FromStr for ByteSize {
    type Err = UnitError;

    fn from_str(input: &str) -> Result<Self, UnitError> {
        let factor = |unit: &str| match unit {
            "" | "B" | "b" => Some(1.0),
            "KiB" | "K" | "k" => Some(1024.0),
            "MiB" | "M" | "m" => Some(1024.0 * 1024.0),
            "GiB" | "G" | "g" => Some(1024.0 * 1024.0 * 1024.0),
            "TiB" | "T" | "t" => Some(1024.0 * 1024.0 * 1024.0 * 1024.0),
            "kB" | "KB" => Some(1e3),
            "MB" => Some(1e6),
            "GB" => Some(1e9),
            "TB" => Some(1e12),
            _ => None,
        };
        let bytes = parse_quantity(input, "B, KiB, MiB, GiB, TiB, kB, MB, GB, TB", factor)?;
        Ok(Self { bytes })
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.bytes;
        for (factor, unit) in [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")] {
            if bytes >= factor && bytes.is_multiple_of(factor) {
                return write!(f, "{}{unit}", bytes / factor);
            }
        }
        write!(f, "{bytes}B")
    }
}

/// Deserializes a `FromStr` quantity from a TOML string or a positive integer.
struct QuantityVisitor<T>(std::marker::PhantomData<T>);

impl<T> Visitor<'_> for QuantityVisitor<T>
where
    T: FromStr<Err = UnitError>,
{
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a positive integer or a string such as \"500mbit\" or \"32MiB\"")
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<T, E> {
        value.parse().map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<T, E> {
        value.to_string().parse().map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<T, E> {
        value.to_string().parse().map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for BitRate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(QuantityVisitor(std::marker::PhantomData))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(QuantityVisitor(std::marker::PhantomData))
    }
}

/// A duration written like `30s`, `500ms` or `2m` (humantime syntax) in the config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub std::time::Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(&text)
            .map(HumanDuration)
            .map_err(|e| {
                de::Error::custom(format!("`{text}`: {e} (write e.g. \"30s\", \"500ms\")"))
            })
    }
}

impl FromStr for HumanDuration {
    type Err = humantime::DurationError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(input).map(HumanDuration)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_in_bits_per_second() {
        let cases = [
            ("500mbit", 500_000_000),
            ("2gbit", 2_000_000_000),
            ("1.5Gbit", 1_500_000_000),
            ("750kbit", 750_000),
            ("1000", 1000),
            ("100 mbit/s", 100_000_000),
        ];
        for (text, bits) in cases {
            assert_eq!(
                text.parse::<BitRate>().unwrap().bits_per_sec(),
                bits,
                "{text}"
            );
        }
        assert_eq!(
            BitRate::from_bits_per_sec(500_000_000).unwrap().to_string(),
            "500mbit"
        );
    }

    #[test]
    fn bad_rates_are_typed_errors() {
        assert!(matches!(
            "fast".parse::<BitRate>(),
            Err(UnitError::NoNumber { .. })
        ));
        assert!(matches!(
            "5mb".parse::<BitRate>(),
            Err(UnitError::UnknownUnit { .. })
        ));
        assert!(matches!(
            "0mbit".parse::<BitRate>(),
            Err(UnitError::OutOfRange { .. })
        ));
        assert!(matches!(
            "1e400".parse::<BitRate>(),
            Err(UnitError::UnknownUnit { .. })
        ));
    }

    #[test]
    fn sizes_parse_binary_and_decimal() {
        assert_eq!("32MiB".parse::<ByteSize>().unwrap().bytes(), 32 << 20);
        assert_eq!("4KiB".parse::<ByteSize>().unwrap().bytes(), 4096);
        assert_eq!("10MB".parse::<ByteSize>().unwrap().bytes(), 10_000_000);
        assert_eq!("1280".parse::<ByteSize>().unwrap().bytes(), 1280);
        assert!(matches!(
            "3 parsecs".parse::<ByteSize>(),
            Err(UnitError::UnknownUnit { .. })
        ));
        assert_eq!(ByteSize::from_bytes(32 << 20).unwrap().to_string(), "32MiB");
    }
}
