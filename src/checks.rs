//! The argument checks every array-taking call shares, each returning the [`DdimError`] that
//! names what was wrong.

use crate::DdimError;

/// Checks that the array called `name` has the shape of the one called `reference_name`.
pub(crate) fn same_shape(
    name: &'static str,
    found: &[usize],
    reference_name: &'static str,
    expected: &[usize],
) -> Result<(), DdimError> {
    if found == expected {
        Ok(())
    } else {
        Err(DdimError::ShapeMismatch {
            name,
            found: found.to_vec(),
            reference_name,
            expected: expected.to_vec(),
        })
    }
}

/// Checks that there is one timestep per batch item (axis 0 of `shape`).
pub(crate) fn one_timestep_per_item(count: usize, shape: &[usize]) -> Result<(), DdimError> {
    let Some(&batch_size) = shape.first() else {
        return Err(DdimError::TooFewAxes {
            operation: "per-batch-item timesteps (axis 0 is the batch)",
            found: 0,
            required: 1,
        });
    };
    if count == batch_size {
        Ok(())
    } else {
        Err(DdimError::BatchSizeMismatch { count, batch_size })
    }
}
