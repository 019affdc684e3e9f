//! Reading and writing `scheduler_config.json`.

use std::collections::BTreeMap;
use std::fs::{File, Metadata};
use std::io::Read;
use std::path::Path;

use serde::de::IgnoredAny;

use super::keys::{is_used, IgnoredKey};
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

    /// The keys of a `scheduler_config.json` text that [`DdimConfig::from_json_str`] does not
    /// use, in the order of the keys, so that a caller can warn about them or refuse them.
    ///
    /// Like diffusers, the loader ignores keys DDIM does not have: a config written for
    /// another scheduler (`PNDMScheduler`'s `"skip_prk_steps"`) loads as it does in Python.
    /// But a misspelled key (`"prediction_typ": "v_prediction"`) loads silently as the default,
    /// so each [`IgnoredKey`] says whether any diffusers scheduler knows the key and, if none
    /// does, which DDIM key it is probably a typo of. diffusers' private keys (`_class_name`,
    /// `_diffusers_version`, any key starting with `_`) are not reported.
    /// [`from_json_str_strict`](DdimConfig::from_json_str_strict) refuses unknown keys instead.
    ///
    /// # Errors
    ///
    /// [`DdimError::ConfigParse`] for text that is not a JSON object (the values are not
    /// checked: see [`from_json_str`](DdimConfig::from_json_str)).
    ///
    /// # Example
    ///
    /// ```
    /// use ddim::DdimConfig;
    ///
    /// let json = r#"{"_class_name": "PNDMScheduler", "skip_prk_steps": true, "prediction_typ": "v_prediction"}"#;
    /// let ignored = DdimConfig::ignored_keys(json)?;
    /// assert_eq!(ignored.len(), 2);
    /// assert_eq!(ignored[0].did_you_mean, Some("prediction_type")); // a typo
    /// assert!(ignored[1].known_to_diffusers); // skip_prk_steps: PNDM's, harmless
    /// # Ok::<(), ddim::DdimError>(())
    /// ```
    pub fn ignored_keys(json: &str) -> Result<Vec<IgnoredKey>, DdimError> {
        require_object(json)?;
        // Only the keys matter: the values are skipped unread, so any value `from_json_str`
        // accepts (deeply nested, out of f64's range, ...) is accepted here too.
        let object: BTreeMap<String, IgnoredAny> = serde_json::from_str(json)?;
        Ok(object
            .keys()
            .filter(|key| !is_used(key))
            .map(|key| IgnoredKey::new(key))
            .collect())
    }

    /// [`from_json_str`](DdimConfig::from_json_str) that refuses a key no diffusers scheduler
    /// knows (a typo such as `"prediction_typ"`, which the lenient loader would ignore, leaving
    /// the default in place). Keys of other diffusers schedulers and private keys are still
    /// ignored, so every config diffusers writes loads.
    ///
    /// # Errors
    ///
    /// [`DdimError::UnknownConfigKey`] naming an unknown key (the first in key order) and, when
    /// there is one, the
    /// DDIM key it was probably meant to be; then as
    /// [`from_json_str`](DdimConfig::from_json_str).
    ///
    /// # Example
    ///
    /// ```
    /// use ddim::DdimConfig;
    ///
    /// let err = DdimConfig::from_json_str_strict(r#"{"prediction_typ": "v_prediction"}"#).unwrap_err();
    /// assert!(err.to_string().contains("did you mean `prediction_type`?"));
    /// assert!(DdimConfig::from_json_str_strict(r#"{"skip_prk_steps": true}"#).is_ok());
    /// ```
    pub fn from_json_str_strict(json: &str) -> Result<Self, DdimError> {
        if let Some(unknown) = Self::ignored_keys(json)?
            .into_iter()
            .find(|key| !key.known_to_diffusers)
        {
            return Err(DdimError::UnknownConfigKey {
                key: unknown.key,
                did_you_mean: unknown.did_you_mean,
            });
        }
        Self::from_json_str(json)
    }

    /// Reads and validates a `scheduler_config.json` file.
    ///
    /// Safe on paths from untrusted input: anything that is not a regular file (a directory, a
    /// FIFO, `/dev/zero`) is refused before it is opened for reading, and at most
    /// [`MAX_CONFIG_FILE_BYTES`](crate::MAX_CONFIG_FILE_BYTES) are read (a file whose size is
    /// larger is refused without reading it).
    ///
    /// # Errors
    ///
    /// [`DdimError::NotAFile`] for a path that is not a regular file;
    /// [`DdimError::ConfigTooLarge`] for a file over the limit; [`DdimError::Io`] when the file
    /// cannot be read; then as [`DdimConfig::from_json_str`].
    ///
    /// # Example
    ///
    /// ```no_run
    /// let config = ddim::DdimConfig::from_file("model/scheduler/scheduler_config.json")?;
    /// # Ok::<(), ddim::DdimError>(())
    /// ```
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, DdimError> {
        Self::from_json_str(&read_config_file(path.as_ref())?)
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
            action: "write",
            path: path.to_path_buf(),
            source,
        })
    }
}

/// Reads a config file: a regular file of at most [`MAX_CONFIG_FILE_BYTES`] bytes.
fn read_config_file(path: &Path) -> Result<String, DdimError> {
    let io = |source| DdimError::Io {
        action: "read",
        path: path.to_path_buf(),
        source,
    };
    // `metadata` does not open the file, so a FIFO cannot block here; the opened file is
    // checked again, in case the path changed in between.
    check_regular_file(path, &std::fs::metadata(path).map_err(io)?)?;
    let file = File::open(path).map_err(io)?;
    let metadata = file.metadata().map_err(io)?;
    check_regular_file(path, &metadata)?;
    let too_large = |size| DdimError::ConfigTooLarge {
        path: path.to_path_buf(),
        size,
        limit: MAX_CONFIG_FILE_BYTES,
    };
    if metadata.len() > MAX_CONFIG_FILE_BYTES {
        return Err(too_large(metadata.len()));
    }
    let mut text = String::new();
    // One byte past the limit tells a file that grew since its size was read.
    file.take(MAX_CONFIG_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(io)?;
    if text.len() as u64 > MAX_CONFIG_FILE_BYTES {
        return Err(too_large(text.len() as u64));
    }
    Ok(text)
}

/// [`DdimError::NotAFile`] unless `metadata` is a regular file's.
fn check_regular_file(path: &Path, metadata: &Metadata) -> Result<(), DdimError> {
    let kind = metadata.file_type();
    if kind.is_file() {
        return Ok(());
    }
    let found = if kind.is_dir() {
        "a directory"
    } else {
        special_file_kind(&kind)
    };
    Err(DdimError::NotAFile {
        path: path.to_path_buf(),
        found,
    })
}

/// What a file that is neither a regular file nor a directory is.
#[cfg(unix)]
fn special_file_kind(kind: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "a special file"
    }
}

/// What a file that is neither a regular file nor a directory is.
#[cfg(not(unix))]
fn special_file_kind(_: &std::fs::FileType) -> &'static str {
    "a special file"
}

/// The largest config file [`DdimConfig::from_file`] reads: 32 MiB.
///
/// A scheduler config is about 1 KB; the limit leaves room for `trained_betas` of up to
/// [`MAX_TRAIN_TIMESTEPS`](crate::MAX_TRAIN_TIMESTEPS) entries, while keeping a hostile path
/// (a huge or endless file) from exhausting memory.
pub const MAX_CONFIG_FILE_BYTES: u64 = 32 << 20;

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
