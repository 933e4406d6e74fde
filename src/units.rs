//! Quantities a person types: byte sizes (`512m`, `1g`), CPU counts, process limits and
//! seconds. Each is parsed and bounded here once, the same whether it comes from a flag, an
//! environment variable, a tokens file or a tool argument, and then carried as its type.
//! Owns the rules and their error messages only: it applies no limit and reads no
//! configuration.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer};

/// A value outside its rule; the message says what is allowed and what was given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("expected a size such as 512m or 2g, got {got}")]
    Size { got: String },
    #[error("size {got} is out of range (at least 1m)")]
    SizeRange { got: String },
    #[error("expected a CPU count between 0.01 and 512, got {got}")]
    Cpus { got: String },
    #[error("expected a process limit between 16 and 65536, got {got}")]
    Pids { got: String },
    #[error("expected seconds between 0 and 86400, got {got}")]
    Seconds { got: String },
    #[error("expected seconds between 0 (no limit) and 31536000, got {got}")]
    OptionalSeconds { got: String },
}

/// A size in bytes, at least 1 MiB: a number of bytes or one with a binary unit, `k`, `m` or
/// `g`, case-insensitive, optionally followed by `b` or `ib` (`512m`, `1G`, `512MiB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(i64);

impl ByteSize {
    const MIN: i64 = 1 << 20;

    pub fn bytes(self) -> i64 {
        self.0
    }

    pub fn as_u64(self) -> u64 {
        self.0.unsigned_abs()
    }

    pub fn as_usize(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

impl FromStr for ByteSize {
    type Err = UnitError;

    fn from_str(value: &str) -> Result<Self, UnitError> {
        let got = format!("{value:?}");
        let lower = value.trim().to_ascii_lowercase();
        let trimmed = lower.trim_end_matches('b').trim_end_matches('i');
        let (digits, unit) = match trimmed.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
            Some((i, _)) => trimmed.split_at(i),
            None => (trimmed, ""),
        };
        let shift = match unit {
            "" => 0,
            "k" => 10,
            "m" => 20,
            "g" => 30,
            _ => return Err(UnitError::Size { got }),
        };
        let number: i64 = digits
            .parse()
            .map_err(|_| UnitError::Size { got: got.clone() })?;
        number
            .checked_mul(1 << shift)
            .filter(|bytes| *bytes >= Self::MIN)
            .map(Self)
            .ok_or(UnitError::SizeRange { got })
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for ByteSize {
    fn schema_name() -> Cow<'static, str> {
        "ByteSize".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": "string"})
    }
}

/// A CPU count from 0.01 to 512, held as the engine's nano-CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cpus(i64);

impl Cpus {
    const MIN: f64 = 0.01;
    const MAX: f64 = 512.0;

    pub fn nano(self) -> i64 {
        self.0
    }

    /// Accepts a decimal CPU count; `got` is how the value is shown in the error.
    fn new(cpus: f64, got: impl FnOnce() -> String) -> Result<Self, UnitError> {
        if cpus.is_finite() && (Self::MIN..=Self::MAX).contains(&cpus) {
            Ok(Self((cpus * 1e9).round() as i64))
        } else {
            Err(UnitError::Cpus { got: got() })
        }
    }
}

/// Decimal CPUs of an engine's nano-CPU figure, for showing a limit.
pub fn cpus_of_nano(nano_cpus: i64) -> f64 {
    nano_cpus as f64 / 1e9
}

impl TryFrom<f64> for Cpus {
    type Error = UnitError;

    fn try_from(cpus: f64) -> Result<Self, UnitError> {
        Self::new(cpus, || cpus.to_string())
    }
}

impl FromStr for Cpus {
    type Err = UnitError;

    fn from_str(value: &str) -> Result<Self, UnitError> {
        let got = || format!("{value:?}");
        match value.parse::<f64>() {
            Ok(cpus) => Self::new(cpus, got),
            Err(_) => Err(UnitError::Cpus { got: got() }),
        }
    }
}

impl<'de> Deserialize<'de> for Cpus {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Self::try_from(f64::deserialize(deserializer)?).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Cpus {
    fn schema_name() -> Cow<'static, str> {
        "Cpus".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": "number", "minimum": Self::MIN, "maximum": Self::MAX})
    }
}

/// A limit on a kernel's processes, from 16 to 65536.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pids(i64);

impl Pids {
    const MIN: i64 = 16;
    const MAX: i64 = 65536;

    pub fn get(self) -> i64 {
        self.0
    }
}

impl TryFrom<i64> for Pids {
    type Error = UnitError;

    fn try_from(pids: i64) -> Result<Self, UnitError> {
        if (Self::MIN..=Self::MAX).contains(&pids) {
            Ok(Self(pids))
        } else {
            Err(UnitError::Pids {
                got: pids.to_string(),
            })
        }
    }
}

impl FromStr for Pids {
    type Err = UnitError;

    fn from_str(value: &str) -> Result<Self, UnitError> {
        let pids = value.parse::<i64>().map_err(|_| UnitError::Pids {
            got: format!("{value:?}"),
        })?;
        Self::try_from(pids)
    }
}

impl<'de> Deserialize<'de> for Pids {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Self::try_from(i64::deserialize(deserializer)?).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Pids {
    fn schema_name() -> Cow<'static, str> {
        "Pids".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": "integer", "minimum": Self::MIN, "maximum": Self::MAX})
    }
}

/// A positive number of seconds up to a day: a timeout or a grace period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seconds(Duration);

impl Seconds {
    const MAX: f64 = 86_400.0;

    pub fn duration(self) -> Duration {
        self.0
    }
}

impl FromStr for Seconds {
    type Err = UnitError;

    fn from_str(value: &str) -> Result<Self, UnitError> {
        match value.parse::<f64>() {
            Ok(seconds) if seconds.is_finite() && seconds > 0.0 && seconds <= Self::MAX => {
                Ok(Self(Duration::from_secs_f64(seconds)))
            }
            _ => Err(UnitError::Seconds {
                got: format!("{value:?}"),
            }),
        }
    }
}

impl fmt::Display for Seconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.as_secs_f64())
    }
}

/// Seconds up to a year where 0 means "no limit": a lifetime or a retention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionalSeconds(Option<Duration>);

impl OptionalSeconds {
    const MAX: f64 = 31_536_000.0;

    /// The duration, or `None` when the limit is off.
    pub fn duration(self) -> Option<Duration> {
        self.0
    }
}

impl FromStr for OptionalSeconds {
    type Err = UnitError;

    fn from_str(value: &str) -> Result<Self, UnitError> {
        match value.parse::<f64>() {
            Ok(seconds) if seconds.is_finite() && (0.0..=Self::MAX).contains(&seconds) => Ok(Self(
                (seconds > 0.0).then(|| Duration::from_secs_f64(seconds)),
            )),
            _ => Err(UnitError::OptionalSeconds {
                got: format!("{value:?}"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size(value: &str) -> Result<i64, UnitError> {
        value.parse::<ByteSize>().map(ByteSize::bytes)
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(size("1g"), Ok(1 << 30));
        assert_eq!(size("512m"), Ok(512 << 20));
        assert_eq!(size("512MiB"), Ok(512 << 20));
        assert_eq!(size("1024k"), Ok(1 << 20));
        assert_eq!(size(" 2G "), Ok(2 << 30));
        assert_eq!(size("2097152"), Ok(2 << 20));
    }

    #[test]
    fn sizes_below_a_mebibyte_or_past_i64_are_out_of_range() {
        assert_eq!(
            size("1k"),
            Err(UnitError::SizeRange {
                got: "\"1k\"".into()
            })
        );
        assert!(matches!(size("1048575"), Err(UnitError::SizeRange { .. })));
        assert!(matches!(
            size("99999999999g"),
            Err(UnitError::SizeRange { .. })
        ));
        assert!(matches!(
            size("99999999999999999999"),
            Err(UnitError::Size { .. })
        ));
    }

    #[test]
    fn sizes_without_a_number_or_with_another_unit_are_refused() {
        for bad in ["lots", "", "m", "1t", "1.5g", "-1g", "1 g"] {
            let error = size(bad).unwrap_err();
            assert!(matches!(error, UnitError::Size { .. }), "{bad}: {error}");
            assert!(error.to_string().contains("512m or 2g"), "{error}");
        }
    }

    #[test]
    fn cpus_become_nano_cpus_within_bounds() {
        assert_eq!("1.5".parse::<Cpus>().map(Cpus::nano), Ok(1_500_000_000));
        assert_eq!(Cpus::try_from(0.5).map(Cpus::nano), Ok(500_000_000));
        assert_eq!(Cpus::try_from(0.29).map(Cpus::nano), Ok(290_000_000));
        assert_eq!(Cpus::try_from(0.01).map(Cpus::nano), Ok(10_000_000));
        assert_eq!(Cpus::try_from(512.0).map(Cpus::nano), Ok(512_000_000_000));
        assert_eq!(cpus_of_nano(250_000_000), 0.25);
    }

    #[test]
    fn cpus_out_of_bounds_say_what_is_allowed() {
        for bad in [0.0, -1.0, 0.009, 512.5, f64::NAN, f64::INFINITY] {
            assert!(Cpus::try_from(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Cpus::try_from(-1.0).unwrap_err().to_string(),
            "expected a CPU count between 0.01 and 512, got -1"
        );
        assert_eq!(
            "many".parse::<Cpus>().unwrap_err().to_string(),
            "expected a CPU count between 0.01 and 512, got \"many\""
        );
    }

    #[test]
    fn pids_are_bounded() {
        assert_eq!("256".parse::<Pids>().map(Pids::get), Ok(256));
        assert_eq!(Pids::try_from(16).map(Pids::get), Ok(16));
        assert_eq!(Pids::try_from(65536).map(Pids::get), Ok(65536));
        for bad in [15, 65537, 0, -1] {
            assert!(Pids::try_from(bad).is_err(), "{bad}");
        }
        assert!("1e3".parse::<Pids>().is_err());
    }

    #[test]
    fn seconds_are_positive_and_at_most_a_day() {
        assert_eq!(
            "2.5".parse::<Seconds>().map(Seconds::duration),
            Ok(Duration::from_millis(2500))
        );
        assert_eq!("86400".parse::<Seconds>().unwrap().to_string(), "86400");
        for bad in ["0", "-1", "86401", "nan", "inf", "soon"] {
            assert!(bad.parse::<Seconds>().is_err(), "{bad}");
        }
    }

    #[test]
    fn optional_seconds_take_zero_as_off() {
        let off = "0".parse::<OptionalSeconds>().unwrap();
        assert_eq!(off.duration(), None);
        assert_eq!(
            "3600".parse::<OptionalSeconds>().unwrap().duration(),
            Some(Duration::from_secs(3600))
        );
        assert!("31536000".parse::<OptionalSeconds>().is_ok());
        for bad in ["-1", "31536001", "nan", "forever"] {
            assert!(bad.parse::<OptionalSeconds>().is_err(), "{bad}");
        }
    }

    #[test]
    fn tool_arguments_deserialize_through_the_same_rules() {
        let memory: ByteSize = serde_json::from_value(serde_json::json!("256m")).unwrap();
        assert_eq!(memory.bytes(), 256 << 20);
        assert!(serde_json::from_value::<ByteSize>(serde_json::json!("1k")).is_err());
        assert!(serde_json::from_value::<ByteSize>(serde_json::json!(1048576)).is_err());
        let cpus: Cpus = serde_json::from_value(serde_json::json!(2)).unwrap();
        assert_eq!(cpus.nano(), 2_000_000_000);
        let error = serde_json::from_value::<Cpus>(serde_json::json!(-1)).unwrap_err();
        assert!(
            error.to_string().contains("between 0.01 and 512"),
            "{error}"
        );
        let pids: Pids = serde_json::from_value(serde_json::json!(64)).unwrap();
        assert_eq!(pids.get(), 64);
        assert!(serde_json::from_value::<Pids>(serde_json::json!(8)).is_err());
        assert!(serde_json::from_value::<Pids>(serde_json::json!(64.5)).is_err());
    }
}
