//! Durations as users write them in the CRDs (`200ms`, `10s`, `90m`, `12h`, `30d`) and the
//! topic retention (`30d` or `infinite`): kept as written, checked by the schema, parsed here.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// The grammar both the CEL rule and [`parse_duration`] accept: at most nine digits keep
/// every value, even in days, far inside the milliseconds an `i64` holds.
pub const DURATION_PATTERN: &str = "^[0-9]{1,9}(ms|s|m|h|d)$";

const DURATION_MESSAGE: &str = "must be a duration: a whole number and one unit of ms, s, m, h or d, for example 200ms, 10s, 90m, 12h or 30d";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{0}` is not a duration: write a whole number and one unit of ms, s, m, h or d, for example 200ms, 10s, 90m, 12h or 30d"
)]
pub struct DurationError(pub String);

/// Parses `200ms`, `10s`, `90m`, `12h`, `30d` (one unit, no fractions, no sign).
pub fn parse_duration(text: &str) -> Result<std::time::Duration, DurationError> {
    let invalid = || DurationError(text.to_owned());
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(invalid)?;
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() || digits.len() > 9 {
        return Err(invalid());
    }
    let n: u64 = digits.parse().map_err(|_| invalid())?;
    let millis_per_unit = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(invalid()),
    };
    Ok(std::time::Duration::from_millis(n * millis_per_unit))
}

/// A duration as written in an object, such as `10s`; the API server refuses any other form.
///
/// The text is kept as written (not normalised) so that applying the same object twice
/// never shows a difference.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Duration(String);

impl Duration {
    /// The duration of `text`, checked.
    pub fn parse(text: &str) -> Result<Self, DurationError> {
        parse_duration(text)?;
        Ok(Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The value as a std duration; fails only on text the schema would have refused.
    pub fn to_std(&self) -> Result<std::time::Duration, DurationError> {
        parse_duration(&self.0)
    }
}

impl FromStr for Duration {
    type Err = DurationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "maxLength": 16,
            "x-kubernetes-validations": [{
                "rule": format!("self.matches('{DURATION_PATTERN}')"),
                "message": DURATION_MESSAGE,
            }],
        })
    }
}

/// How long Kafka keeps records: a [`Duration`] or `infinite`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Retention(String);

impl Retention {
    pub const INFINITE: &str = "infinite";

    pub fn parse(text: &str) -> Result<Self, DurationError> {
        if text != Self::INFINITE {
            parse_duration(text)?;
        }
        Ok(Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The value of Kafka's `retention.ms`: milliseconds, or `-1` for `infinite`.
    pub fn retention_ms(&self) -> Result<i64, DurationError> {
        if self.0 == Self::INFINITE {
            return Ok(-1);
        }
        let duration = parse_duration(&self.0)?;
        i64::try_from(duration.as_millis()).map_err(|_| DurationError(self.0.clone()))
    }
}

impl Default for Retention {
    /// Thirty days, the retention the design promises when none is given.
    fn default() -> Self {
        Self("30d".into())
    }
}

impl FromStr for Retention {
    type Err = DurationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for Retention {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl JsonSchema for Retention {
    fn schema_name() -> Cow<'static, str> {
        "Retention".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "maxLength": 16,
            "x-kubernetes-validations": [{
                "rule": format!("self == 'infinite' || self.matches('{DURATION_PATTERN}')"),
                "message": "retention must be a duration such as 30d, 12h or 90m (a whole number and one unit of ms, s, m, h or d), or `infinite` to keep records forever",
            }],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration as StdDuration;

    #[test]
    fn every_unit_parses_to_its_length() {
        assert_eq!(parse_duration("200ms"), Ok(StdDuration::from_millis(200)));
        assert_eq!(parse_duration("10s"), Ok(StdDuration::from_secs(10)));
        assert_eq!(parse_duration("90m"), Ok(StdDuration::from_secs(90 * 60)));
        assert_eq!(parse_duration("12h"), Ok(StdDuration::from_secs(12 * 3600)));
        assert_eq!(
            parse_duration("30d"),
            Ok(StdDuration::from_secs(30 * 86_400))
        );
        assert_eq!(parse_duration("0s"), Ok(StdDuration::ZERO));
    }

    #[test]
    fn anything_but_digits_and_one_unit_is_refused() {
        for text in [
            "",
            "10",
            "s",
            "1.5s",
            "-1s",
            "+1s",
            "10 s",
            " 10s",
            "10S",
            "1h30m",
            "10sec",
            "10us",
            "1y",
            "infinite",
            "1000000000s",
        ] {
            let error = parse_duration(text).unwrap_err();
            assert!(
                error.to_string().contains("for example 200ms"),
                "{text}: {error}"
            );
        }
    }

    #[test]
    fn the_largest_duration_fits_in_milliseconds() {
        let largest = parse_duration("999999999d").unwrap();
        assert!(i64::try_from(largest.as_millis()).is_ok());
    }

    #[test]
    fn duration_keeps_its_text_and_serializes_as_a_string() {
        let d: Duration = "90m".parse().unwrap();
        assert_eq!(d.as_str(), "90m");
        assert_eq!(serde_json::to_value(&d).unwrap(), "90m");
        let back: Duration = serde_json::from_value("60s".into()).unwrap();
        assert_eq!(back.to_std(), Ok(StdDuration::from_secs(60)));
        assert!("1x".parse::<Duration>().is_err());
    }

    #[test]
    fn default_retention_is_thirty_days_in_milliseconds() {
        assert_eq!(Retention::default().retention_ms(), Ok(2_592_000_000));
    }

    #[test]
    fn infinite_retention_is_minus_one() {
        assert_eq!(Retention::parse("infinite").unwrap().retention_ms(), Ok(-1));
        assert_eq!(
            Retention::parse("12h").unwrap().retention_ms(),
            Ok(43_200_000)
        );
        assert!(Retention::parse("forever").is_err());
    }

    #[test]
    fn schema_rule_uses_the_same_grammar_as_the_parser() {
        let schema =
            serde_json::to_value(Duration::json_schema(&mut SchemaGenerator::default())).unwrap();
        assert_eq!(
            schema["x-kubernetes-validations"][0]["rule"],
            format!("self.matches('{DURATION_PATTERN}')")
        );
    }
}
