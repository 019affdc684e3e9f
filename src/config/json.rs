//! Reading and writing `scheduler_config.json`.

use std::path::Path;

use super::DdimConfig;
use crate::DdimError;

/// The class name written by [`DdimConfig::to_json_string`], so that diffusers picks the right
/// scheduler when it loads the file.
const CLASS_NAME: &str = "DDIMScheduler";
/// The diffusers version whose behaviour this crate reproduces.
const REFERENCE_VERSION: &str = "0.42.1";

impl DdimConfig {
    /// Parses a `scheduler_config.json` text and validates it.
    ///
    /// # Errors
    ///
    /// [`DdimError::ConfigParse`] for text that is not JSON, a key of the wrong type or an unknown
    /// enum string (the message gives the line, the column and the allowed strings);
    /// [`DdimError::InvalidConfig`] for a value out of range (see [`DdimConfig::validate`]).
    pub fn from_json_str(json: &str) -> Result<Self, DdimError> {
        require_object(json)?;
        let config: DdimConfig = serde_json::from_str(json)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads and validates a `scheduler_config.json` file.
    ///
    /// # Errors
    ///
    /// [`DdimError::Io`] when the file cannot be read, then as [`DdimConfig::from_json_str`].
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, DdimError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| DdimError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json_str(&text)
    }

    /// Writes the configuration as pretty-printed JSON with every key, plus
    /// `"_class_name": "DDIMScheduler"` and the diffusers version it matches, so that
    /// `diffusers.DDIMScheduler.from_pretrained` loads it. Reading it back with
    /// [`DdimConfig::from_json_str`] gives an equal config.
    ///
    /// # Errors
    ///
    /// [`DdimError::InvalidConfig`] if the config does not pass [`DdimConfig::validate`] (JSON
    /// cannot hold the NaN or infinite values such a config may contain).
    pub fn to_json_string(&self) -> Result<String, DdimError> {
        self.validate()?;
        let mut value = serde_json::to_value(self)?;
        if let serde_json::Value::Object(map) = &mut value {
            map.insert("_class_name".into(), CLASS_NAME.into());
            map.insert("_diffusers_version".into(), REFERENCE_VERSION.into());
        }
        Ok(serde_json::to_string_pretty(&value)?)
    }

    /// Writes [`DdimConfig::to_json_string`] to a file.
    ///
    /// # Errors
    ///
    /// As [`DdimConfig::to_json_string`], and [`DdimError::Io`] when the file cannot be written.
    pub fn to_file(&self, path: impl AsRef<Path>) -> Result<(), DdimError> {
        let path = path.as_ref();
        let text = self.to_json_string()?;
        std::fs::write(path, text + "\n").map_err(|source| DdimError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// Refuses JSON text that is not an object before serde sees it: serde would also read a struct
/// from an array, by position, which no `scheduler_config.json` is.
fn require_object(json: &str) -> Result<(), DdimError> {
    let Some((offset, first)) = json.char_indices().find(|(_, c)| !c.is_whitespace()) else {
        return Ok(()); // empty text: serde reports the missing value with its position
    };
    if first == '{' {
        return Ok(());
    }
    let before = &json[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    Err(DdimError::ConfigParse {
        line,
        column,
        message: format!("expected a JSON object of scheduler settings, found `{first}`"),
    })
}
