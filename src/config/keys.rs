//! Which keys of a `scheduler_config.json` the config uses, and what the others are: keys of
//! other diffusers schedulers (ignored, as diffusers ignores them), or unknown keys, most likely
//! misspellings of a DDIM key (`"prediction_typ"`), which would otherwise load silently as the
//! default.

use super::diffusers_keys::DIFFUSERS_SCHEDULER_KEYS;

/// The keys [`DdimConfig`](super::DdimConfig) reads, in the order of its fields.
pub(crate) const DDIM_KEYS: [&str; 16] = [
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "trained_betas",
    "clip_sample",
    "set_alpha_to_one",
    "steps_offset",
    "prediction_type",
    "thresholding",
    "dynamic_thresholding_ratio",
    "clip_sample_range",
    "sample_max_value",
    "timestep_spacing",
    "rescale_betas_zero_snr",
    "step_along_schedule",
];

/// A key of a scheduler config that [`DdimConfig`](super::DdimConfig) did not use (see
/// [`DdimConfig::ignored_keys`](super::DdimConfig::ignored_keys)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IgnoredKey {
    /// The key as written in the file.
    pub key: String,
    /// Whether some diffusers scheduler takes this key (`"skip_prk_steps"` of
    /// `PNDMScheduler`, `"use_karras_sigmas"`, ...): a config written for another scheduler,
    /// safe to ignore. `false` means no diffusers scheduler knows it: most likely a typo.
    pub known_to_diffusers: bool,
    /// For an unknown key, the DDIM key it is most likely a misspelling of: one at most two
    /// edits away, ignoring case.
    pub did_you_mean: Option<&'static str>,
}

impl IgnoredKey {
    /// Describes an unused key: whether diffusers knows it, and what it may be a typo of.
    pub(crate) fn new(key: &str) -> Self {
        let known_to_diffusers = DIFFUSERS_SCHEDULER_KEYS.binary_search(&key).is_ok();
        IgnoredKey {
            key: key.to_string(),
            known_to_diffusers,
            did_you_mean: if known_to_diffusers {
                None
            } else {
                closest_ddim_key(key)
            },
        }
    }
}

/// Whether the config reads `key`; keys starting with `_` (`_class_name`,
/// `_diffusers_version`) are diffusers' own bookkeeping and count as used.
pub(crate) fn is_used(key: &str) -> bool {
    key.starts_with('_') || DDIM_KEYS.contains(&key)
}

/// The DDIM key closest to `key`, if it is at most two edits away (ignoring case).
fn closest_ddim_key(key: &str) -> Option<&'static str> {
    // Keys far longer than any real one are not typos worth the quadratic distance.
    if key.len() > 64 {
        return None;
    }
    let key = key.to_lowercase();
    DDIM_KEYS
        .iter()
        .map(|&k| (edit_distance(&key, k), k))
        .filter(|&(d, _)| d <= 2)
        .min_by_key(|&(d, _)| d)
        .map(|(_, k)| k)
}

/// The Levenshtein distance between two strings, by characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generated_list_is_sorted_and_holds_every_ddim_key_but_ours() {
        assert!(DIFFUSERS_SCHEDULER_KEYS.windows(2).all(|w| w[0] < w[1]));
        for key in DDIM_KEYS {
            let ours = key == "step_along_schedule";
            assert_eq!(DIFFUSERS_SCHEDULER_KEYS.contains(&key), !ours, "{key}");
        }
    }

    #[test]
    fn misspellings_get_the_ddim_key_they_meant() {
        assert_eq!(closest_ddim_key("prediction_typ"), Some("prediction_type"));
        assert_eq!(closest_ddim_key("Beta_Schedule"), Some("beta_schedule"));
        assert_eq!(
            closest_ddim_key("timestep_spcing"),
            Some("timestep_spacing")
        );
        assert_eq!(closest_ddim_key("guidance_scale"), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
    }
}
