//! The trained noise-prediction network, run from its ONNX file by tract (pure Rust).
//!
//! [`OnnxUnet`] loads an ONNX export of a diffusers `UNet2DModel` whose interface is the one
//! `DDIMPipeline` uses when it calls the network:
//!
//! | name | direction | type | shape |
//! |---|---|---|---|
//! | `sample` | input | `f32` | `(batch, channels, height, width)` |
//! | `timestep` | input | `i64` | `()`, one timestep for the whole batch |
//! | `noise_pred` (any name) | first output | `f32` | `(batch, channels, height, width)` |
//!
//! `channels`, `height` and `width` are read from the shape the file declares for `sample`; the
//! batch size is free, so one loaded network serves any batch.
//! The committed model (`model/unet.onnx`, written by `scripts/train_digits.py`) has
//! `(channels, height, width) = (1, 8, 8)`.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use ndarray::{Array4, ArrayView4};
use tract_onnx::prelude::{
    tensor0, tvec, Datum, DatumType, Framework, InferenceFact, InferenceModelExt, IntoRunnable,
    IntoTValue, Symbol, TDim, Tensor, TractError, TractResult, TypedModel, TypedRunnableModel,
};
use tract_onnx::tract_hir::infer::{Factoid, ShapeFactoid};
use tract_onnx::tract_hir::internal::DimLike;

/// What went wrong while loading or running an [`OnnxUnet`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum UnetError {
    /// The file could not be read or parsed as ONNX, or tract could not type, optimise or plan
    /// the network (an operator it does not support, shapes that do not fit).
    Load {
        /// The file given to [`OnnxUnet::load`].
        path: PathBuf,
        /// tract's explanation, with its chain of causes.
        message: String,
    },
    /// The network's inputs or outputs are not the ones described in the [module
    /// documentation](self).
    Interface {
        /// The file given to [`OnnxUnet::load`].
        path: PathBuf,
        /// What differs.
        message: String,
    },
    /// The sample given to [`OnnxUnet::noise_pred`] is not `(batch, channels, height, width)`
    /// with the channels and size of the network.
    Shape {
        /// `[channels, height, width]` of the network.
        expected: [usize; 3],
        /// The shape given.
        found: [usize; 4],
    },
    /// tract failed while running the network, or it returned an output of an unexpected type
    /// or shape.
    Run {
        /// tract's explanation, with its chain of causes.
        message: String,
    },
}

impl fmt::Display for UnetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnetError::Load { path, message } => {
                write!(
                    f,
                    "cannot load the ONNX network {}: {message}",
                    path.display()
                )
            }
            UnetError::Interface { path, message } => write!(
                f,
                "the ONNX network {} does not have the expected interface: {message}",
                path.display()
            ),
            UnetError::Shape { expected, found } => write!(
                f,
                "sample of shape {found:?} given, expected (batch, {}, {}, {})",
                expected[0], expected[1], expected[2]
            ),
            UnetError::Run { message } => write!(f, "running the ONNX network failed: {message}"),
        }
    }
}

impl std::error::Error for UnetError {}

/// A diffusers UNet's noise prediction, `eps(x_t, t)`, evaluated by tract from an ONNX file.
///
/// Load it once with [`OnnxUnet::load`] and call [`OnnxUnet::noise_pred`] at every sampling
/// step. Each call runs the network on one thread. `OnnxUnet` is `Send` and `Sync`: calls from
/// several threads may share one value.
///
/// tract's network is kept typed with a symbolic batch size; the first call with a given batch
/// size fixes the symbol and optimises the network for tract's CPU kernels (about 0.1 s for the
/// digits model), and later calls with that batch size reuse the result. (tract 0.23.9 can
/// optimise the network with the batch left symbolic, but running that plan fails an internal
/// assertion in its matrix-product kernel, so the batch size is fixed first.)
///
/// ```no_run
/// use ddim_digits::OnnxUnet;
/// use ndarray::Array4;
///
/// let unet = OnnxUnet::load("digits/model/unet.onnx")?;
/// let [c, h, w] = unet.sample_shape();
/// let x = Array4::<f32>::zeros((2, c, h, w));
/// let eps = unet.noise_pred(x.view(), 999)?;
/// assert_eq!(eps.shape(), &[2, c, h, w]);
/// # Ok::<(), ddim_digits::UnetError>(())
/// ```
pub struct OnnxUnet {
    /// The typed, decluttered network, batch size still the symbol `batch`.
    typed: TypedModel,
    batch: Symbol,
    /// Optimised plans by batch size.
    plans: Mutex<HashMap<usize, Arc<TypedRunnableModel>>>,
    /// Position of `sample` and `timestep` among the network's inputs.
    sample_input: usize,
    timestep_input: usize,
    sample_shape: [usize; 3],
}

impl fmt::Debug for OnnxUnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut batches: Vec<usize> = self.plans_guard().keys().copied().collect();
        batches.sort_unstable();
        f.debug_struct("OnnxUnet")
            .field("sample_shape", &self.sample_shape)
            .field("nodes", &self.typed.nodes().len())
            .field("optimised_batch_sizes", &batches)
            .finish()
    }
}

impl OnnxUnet {
    /// Loads and types the ONNX network at `path`, and optimises it for a batch of one.
    ///
    /// The inputs are found by name (`sample`, `timestep`); a network whose two inputs have other
    /// names is taken to list `sample` first, as `DDIMPipeline` passes them. The shape stored for
    /// `sample` must give the channels, height and width as numbers; its batch dimension is
    /// replaced by a symbol. The intermediate shapes some exporters store in the file (ONNX
    /// `value_info`) are ignored: tract infers every shape from the inputs, which lets exports
    /// with stale or partial annotations (as the dynamo exporter can write) load as well.
    ///
    /// # Errors
    ///
    /// [`UnetError::Load`] when the file cannot be read, parsed or prepared by tract,
    /// [`UnetError::Interface`] when the inputs or outputs do not match the description above.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, UnetError> {
        let path = path.as_ref();
        let load_err = |e: TractError| UnetError::Load {
            path: path.to_path_buf(),
            message: format!("{e:#}"),
        };
        let interface = |message: String| UnetError::Interface {
            path: path.to_path_buf(),
            message,
        };

        let mut model = tract_onnx::onnx()
            .with_ignore_value_info(true)
            .model_for_path(path)
            .map_err(load_err)?;

        let inputs = model.input_outlets().map_err(load_err)?.to_vec();
        if inputs.len() != 2 {
            return Err(interface(format!(
                "{} inputs, expected 2 (sample, timestep)",
                inputs.len()
            )));
        }
        let names: Vec<String> = inputs
            .iter()
            .map(|outlet| model.node(outlet.node).name.clone())
            .collect();
        let (sample_input, timestep_input) = match (names[0].as_str(), names[1].as_str()) {
            (_, "sample") | ("timestep", _) => (1, 0),
            _ => (0, 1),
        };
        if model.output_outlets().map_err(load_err)?.is_empty() {
            return Err(interface("the network has no output".to_string()));
        }

        let declared = model
            .input_fact(sample_input)
            .map_err(load_err)?
            .shape
            .clone();
        let sample_shape = channels_height_width(&declared).ok_or_else(|| {
            interface(format!(
                "input {:?} is declared as {declared:?}; expected 4 dimensions, the last three \
                 of them numbers",
                names[sample_input]
            ))
        })?;

        let batch = model.sym("batch");
        let [c, h, w] = sample_shape;
        let sample_fact = InferenceFact::dt_shape(
            f32::datum_type(),
            [
                TDim::from(batch.clone()),
                TDim::from(c),
                TDim::from(h),
                TDim::from(w),
            ],
        );
        let no_dims: [TDim; 0] = [];
        let timestep_fact = InferenceFact::dt_shape(DatumType::I64, no_dims);
        model
            .set_input_fact(sample_input, sample_fact)
            .map_err(load_err)?;
        model
            .set_input_fact(timestep_input, timestep_fact)
            .map_err(load_err)?;

        let typed = model
            .into_typed()
            .and_then(|typed| typed.into_decluttered())
            .map_err(load_err)?;
        let unet = OnnxUnet {
            typed,
            batch,
            plans: Mutex::new(HashMap::new()),
            sample_input,
            timestep_input,
            sample_shape,
        };
        unet.plan(1).map_err(load_err)?;
        Ok(unet)
    }

    /// `[channels, height, width]` of the samples the network takes (and returns).
    pub fn sample_shape(&self) -> [usize; 3] {
        self.sample_shape
    }

    /// The network's noise prediction for the noisy samples `sample` (shape `(batch, channels,
    /// height, width)`, any batch size, any memory layout) at training timestep `timestep`
    /// (`0..num_train_timesteps`, the same for every item, as `DDIMPipeline` passes it).
    ///
    /// Returns a new array of the same shape. An empty batch returns an empty array without
    /// running the network. The first call with a new batch size also optimises the network for
    /// it (see [`OnnxUnet`]).
    ///
    /// # Errors
    ///
    /// [`UnetError::Shape`] when `sample` is not `(batch, channels, height, width)` for the
    /// network's channels and size, [`UnetError::Run`] when tract fails.
    pub fn noise_pred(
        &self,
        sample: ArrayView4<f32>,
        timestep: i64,
    ) -> Result<Array4<f32>, UnetError> {
        let found: [usize; 4] = sample.dim().into();
        let [c, h, w] = self.sample_shape;
        if found[1..] != self.sample_shape {
            return Err(UnetError::Shape {
                expected: self.sample_shape,
                found,
            });
        }
        let batch = found[0];
        if batch == 0 {
            return Ok(Array4::zeros((0, c, h, w)));
        }
        let run_err = |e: TractError| UnetError::Run {
            message: format!("{e:#}"),
        };
        let plan = self.plan(batch).map_err(run_err)?;

        // Logical (row-major) order whatever the view's strides, which is what tract expects.
        let data: Vec<f32> = match sample.as_slice() {
            Some(slice) => slice.to_vec(),
            None => sample.iter().copied().collect(),
        };
        let input = Tensor::from_shape(&found, &data).map_err(run_err)?;
        let mut values = tvec!(tensor0(0i64).into_tvalue(), tensor0(0i64).into_tvalue());
        values[self.sample_input] = input.into_tvalue();
        values[self.timestep_input] = tensor0(timestep).into_tvalue();

        let outputs = plan.run(values).map_err(run_err)?;
        let out = outputs.first().ok_or_else(|| UnetError::Run {
            message: "the network returned no output".to_string(),
        })?;
        if out.shape() != found {
            return Err(UnetError::Run {
                message: format!(
                    "the network returned shape {:?} for a sample of shape {found:?}",
                    out.shape()
                ),
            });
        }
        let plain = out.try_as_plain_ram().map_err(run_err)?;
        let values = plain.as_slice::<f32>().map_err(run_err)?;
        Array4::from_shape_vec((batch, c, h, w), values.to_vec()).map_err(|e| UnetError::Run {
            message: e.to_string(),
        })
    }

    /// The optimised plan for `batch` items, made on first use.
    fn plan(&self, batch: usize) -> TractResult<Arc<TypedRunnableModel>> {
        let mut plans = self.plans_guard();
        if let Some(plan) = plans.get(&batch) {
            return Ok(Arc::clone(plan));
        }
        let size = i64::try_from(batch)?;
        let fixed = HashMap::from([(self.batch.clone(), TDim::from(size))]);
        let plan = self
            .typed
            .set_symbols(&fixed)?
            .into_optimized()?
            .into_runnable()?;
        plans.insert(batch, Arc::clone(&plan));
        Ok(plan)
    }

    /// The plan cache; a panic in another thread while it held the lock leaves the cache
    /// consistent (plans are inserted whole), so a poisoned lock is used as is.
    fn plans_guard(&self) -> MutexGuard<'_, HashMap<usize, Arc<TypedRunnableModel>>> {
        self.plans.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The last three dimensions of a declared 4-D shape, when all three are numbers.
fn channels_height_width(shape: &ShapeFactoid) -> Option<[usize; 3]> {
    let dims: Vec<_> = shape.dims().collect();
    if shape.is_open() || dims.len() != 4 {
        return None;
    }
    let mut out = [0usize; 3];
    for (slot, dim) in out.iter_mut().zip(&dims[1..]) {
        *slot = dim.concretize()?.to_usize().ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn onnx_unet_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<OnnxUnet>();
    }

    #[test]
    fn missing_file_is_a_load_error() {
        let err = OnnxUnet::load("no/such/network.onnx").unwrap_err();
        assert!(matches!(err, UnetError::Load { .. }), "{err}");
    }
}
