//! Query parameters of the history and plot endpoints: each at most once, only the
//! known ones, and each checked with an error that names it.

use super::error::ApiError;
use crate::clock::{parse_duration, parse_time};
use telehub_protocol::ids::{valid_id, valid_metric};

/// The query parameters of a request: each at most once, and only the known ones.
pub(crate) struct Params(Vec<(String, String)>);

impl Params {
    pub(crate) fn new(raw: Vec<(String, String)>, known: &[&str]) -> Result<Params, ApiError> {
        for (i, (k, _)) in raw.iter().enumerate() {
            if !known.contains(&k.as_str()) {
                return Err(ApiError::param(
                    k,
                    format!("unknown; this endpoint takes {}", known.join(", ")),
                ));
            }
            if raw[..i].iter().any(|(p, _)| p == k) {
                return Err(ApiError::param(k, "given more than once"));
            }
        }
        Ok(Params(raw))
    }

    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn device(&self) -> Result<Option<String>, ApiError> {
        self.get("device")
            .map(|d| {
                if valid_id(d) {
                    Ok(d.to_string())
                } else {
                    Err(ApiError::param("device", "must be 1 to 64 of A-Za-z0-9_.-"))
                }
            })
            .transpose()
    }

    pub(crate) fn metric(&self) -> Result<Option<String>, ApiError> {
        self.get("metric")
            .map(|m| {
                if valid_metric(m) {
                    Ok(m.to_string())
                } else {
                    Err(ApiError::param(
                        "metric",
                        "must be 1 to 64 of A-Za-z0-9_.-/",
                    ))
                }
            })
            .transpose()
    }

    pub(crate) fn time(&self, name: &str, now: i64) -> Result<Option<i64>, ApiError> {
        self.get(name)
            .map(|v| {
                parse_time(v, now).ok_or_else(|| {
                    ApiError::param(
                        name,
                        "must be epoch milliseconds, RFC 3339 or a relative window like -15m",
                    )
                })
            })
            .transpose()
    }

    pub(crate) fn duration(&self, name: &str) -> Result<Option<i64>, ApiError> {
        self.get(name)
            .map(|v| {
                parse_duration(v).ok_or_else(|| {
                    ApiError::param(name, "must be a duration like 30s, 1m, 15m, 1h or 1d")
                })
            })
            .transpose()
    }

    pub(crate) fn number(
        &self,
        name: &str,
        range: std::ops::RangeInclusive<u64>,
    ) -> Result<Option<u64>, ApiError> {
        self.get(name)
            .map(|v| match v.parse::<u64>() {
                Ok(n) if range.contains(&n) => Ok(n),
                _ => Err(ApiError::param(
                    name,
                    format!(
                        "must be a whole number from {} to {}",
                        range.start(),
                        range.end()
                    ),
                )),
            })
            .transpose()
    }
}
