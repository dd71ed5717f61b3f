//! A scheduler config as diffusers stores it (`scheduler_config.json`), read with per-class defaults.

use super::{Prediction, SchedulerError, config_err};
use serde_json::{Map, Value};

/// The raw key/value pairs of `scheduler_config.json`. Each scheduler reads the keys its diffusers class
/// takes, with that class's defaults for missing ones; other keys are ignored, as `from_config` does.
#[derive(Clone, Debug, Default)]
pub struct SchedulerConfig {
    values: Map<String, Value>,
}

impl SchedulerConfig {
    /// A scheduler_config.json object.
    pub fn from_json(value: Value) -> Result<Self, SchedulerError> {
        match value {
            Value::Object(values) => Ok(SchedulerConfig { values }),
            _ => Err(config_err("<root>", "expected a JSON object")),
        }
    }

    /// The class named by `_class_name`, if any.
    pub fn class_name(&self) -> Option<&str> {
        self.values.get("_class_name").and_then(Value::as_str)
    }

    /// Set a key (used for `--karras`, which is `use_karras_sigmas=True` in diffusers).
    pub fn set(&mut self, key: &str, value: Value) {
        self.values.insert(key.to_string(), value);
    }

    /// The keys as the file has them.
    pub fn raw(&self) -> &Map<String, Value> {
        &self.values
    }

    fn present(&self, key: &str) -> Option<&Value> {
        self.values.get(key).filter(|v| !v.is_null())
    }

    /// A number, `default` when absent or null.
    pub fn f64(&self, key: &str, default: f64) -> Result<f64, SchedulerError> {
        match self.present(key) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| config_err(key, format!("expected a number, found {v}"))),
        }
    }

    /// A number, `None` when absent or null.
    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>, SchedulerError> {
        self.present(key)
            .map(|v| {
                v.as_f64()
                    .ok_or_else(|| config_err(key, format!("expected a number, found {v}")))
            })
            .transpose()
    }

    /// A non-negative integer, `default` when absent or null.
    pub fn usize(&self, key: &str, default: usize) -> Result<usize, SchedulerError> {
        match self.present(key) {
            None => Ok(default),
            Some(v) => v.as_u64().map(|n| n as usize).ok_or_else(|| {
                config_err(key, format!("expected a non-negative integer, found {v}"))
            }),
        }
    }

    /// A boolean, `default` when absent or null.
    pub fn bool(&self, key: &str, default: bool) -> Result<bool, SchedulerError> {
        match self.present(key) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| config_err(key, format!("expected true or false, found {v}"))),
        }
    }

    /// A string, `default` when absent or null.
    pub fn str<'a>(&'a self, key: &str, default: &'a str) -> Result<&'a str, SchedulerError> {
        match self.present(key) {
            None => Ok(default),
            Some(v) => v
                .as_str()
                .ok_or_else(|| config_err(key, format!("expected a string, found {v}"))),
        }
    }

    /// A list of numbers (`trained_betas`), `None` when absent or null.
    pub fn opt_f64_list(&self, key: &str) -> Result<Option<Vec<f64>>, SchedulerError> {
        match self.present(key) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_f64()
                        .ok_or_else(|| config_err(key, "expected a list of numbers"))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(v) => Err(config_err(
                key,
                format!("expected a list of numbers, found {v}"),
            )),
        }
    }

    /// `prediction_type`, parsed.
    pub fn prediction(&self) -> Result<Prediction, SchedulerError> {
        let value = self.str("prediction_type", "epsilon")?;
        Prediction::parse(value).ok_or_else(|| {
            config_err(
                "prediction_type",
                format!("`{value}` is not one of epsilon, v_prediction, sample"),
            )
        })
    }

    /// A key that must hold its default because we do not port the alternative.
    pub fn require_default_bool(&self, key: &str, default: bool) -> Result<(), SchedulerError> {
        let v = self.bool(key, default)?;
        if v != default {
            return Err(config_err(
                key,
                format!("`{v}` is not supported by this port (only `{default}`)"),
            ));
        }
        Ok(())
    }
}
