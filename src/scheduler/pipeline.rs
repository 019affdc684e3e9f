//! The arithmetic diffusers' pipelines do around the scheduler, which decides which timesteps
//! run: img2img's `strength`, SDXL's `denoising_end` (the base model stops early) and
//! `denoising_start` (the refiner starts late), and the inpainting blend of a 4-channel UNet.
//!
//! The reference keeps these lines in its pipelines (`get_timesteps` of
//! `StableDiffusionImg2ImgPipeline` and `StableDiffusionXLImg2ImgPipeline`, the cut-off in
//! `StableDiffusionXLPipeline.__call__`, the blend in `StableDiffusionInpaintPipeline.__call__`);
//! they are reproduced here with its double-precision arithmetic, so the same timesteps run. The
//! golden tests pin them against the pipelines' own code.

use ndarray::{ArrayRef, Dimension, Zip};

use super::DdimScheduler;
use crate::checks::same_shape;
use crate::float::Arithmetic;
use crate::{DdimError, DdimFloat};

/// The part of the schedule a partial denoising loop runs (see
/// [`DdimScheduler::img2img_timesteps`]): never empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartialSchedule<'a> {
    /// The timesteps to run, in order: a suffix (img2img, refiner) or prefix (SDXL base) of
    /// [`DdimScheduler::timesteps`].
    pub timesteps: &'a [usize],
    /// Where `timesteps` starts in [`DdimScheduler::timesteps`] (diffusers' `t_start`).
    pub start: usize,
}

impl PartialSchedule<'_> {
    /// The first timestep to run: for img2img, where
    /// [`add_noise`](DdimScheduler::add_noise) puts the image latents (diffusers'
    /// `latent_timestep`).
    pub fn first(&self) -> usize {
        // Never empty by construction; 0 keeps even a broken invariant panic-free.
        self.timesteps.first().copied().unwrap_or(0)
    }
}

impl DdimScheduler {
    /// The timesteps an img2img loop runs at `strength` (after
    /// [`set_timesteps`](DdimScheduler::set_timesteps)), as
    /// `StableDiffusionImg2ImgPipeline.get_timesteps` keeps them: with `n` timesteps,
    /// `init = min(floor(n * strength), n)` (the product in double), `start = n - init`, and the
    /// schedule from `start` on. The image latents are noised to the first of them
    /// ([`PartialSchedule::first`]) with [`add_noise`](DdimScheduler::add_noise), and the loop
    /// steps from there; strength 1 runs the whole schedule from pure noise.
    ///
    /// # Errors
    ///
    /// [`DdimError::TimestepsNotSet`] before `set_timesteps`; [`DdimError::InvalidArgument`] for a
    /// strength outside `[0, 1]` or NaN; [`DdimError::NoStepsLeft`] when `n * strength < 1`, so
    /// that no step would run (diffusers then fails later, or runs an empty loop).
    ///
    /// # Example
    ///
    /// ```
    /// use ddim::{DdimConfig, DdimScheduler};
    ///
    /// let mut scheduler = DdimScheduler::new(DdimConfig { steps_offset: 1, ..Default::default() })?;
    /// scheduler.set_timesteps(50)?;
    /// let run = scheduler.img2img_timesteps(0.75)?;
    /// assert_eq!(run.timesteps.len(), 37);
    /// assert_eq!(run.first(), 721);
    /// // The product is in double, as in Python: 100 * 0.29 = 28.999..., so 28 steps.
    /// scheduler.set_timesteps(100)?;
    /// assert_eq!(scheduler.img2img_timesteps(0.29)?.timesteps.len(), 28);
    /// assert!(scheduler.img2img_timesteps(0.001).is_err()); // no step left
    /// # Ok::<(), ddim::DdimError>(())
    /// ```
    pub fn img2img_timesteps(&self, strength: f64) -> Result<PartialSchedule<'_>, DdimError> {
        let timesteps = self.set_schedule()?;
        if !(0.0..=1.0).contains(&strength) {
            return Err(DdimError::InvalidArgument {
                name: "strength",
                value: strength,
                allowed: "a number between 0 and 1 (1 starts from pure noise)",
            });
        }
        let n = timesteps.len();
        // `int(n * strength)`: a non-negative finite product, truncated.
        let init = ((n as f64 * strength) as usize).min(n);
        self.partial(timesteps, n - init, "strength", strength)
    }

    /// The timesteps SDXL's base model runs when it hands over to a refiner at
    /// `denoising_end` (the fraction of the denoising done here), as
    /// `StableDiffusionXLPipeline` cuts them: `cutoff = round(T - denoising_end * T)` (in double,
    /// half to even, `T = num_train_timesteps`), and the leading timesteps `>= cutoff`.
    ///
    /// # Errors
    ///
    /// [`DdimError::TimestepsNotSet`]; [`DdimError::InvalidArgument`] for a fraction outside
    /// `(0, 1)` or NaN (the pipeline silently ignores such a value); [`DdimError::NoStepsLeft`]
    /// when no timestep is at or above the cut-off.
    ///
    /// # Example
    ///
    /// ```
    /// use ddim::{DdimConfig, DdimScheduler};
    ///
    /// let mut scheduler = DdimScheduler::new(DdimConfig { steps_offset: 1, ..Default::default() })?;
    /// scheduler.set_timesteps(40)?;
    /// let base = scheduler.base_timesteps(0.8)?;
    /// let refiner = scheduler.refiner_timesteps(0.8)?;
    /// // The two halves split the schedule at timestep 200.
    /// assert_eq!(base.timesteps.last(), Some(&201));
    /// assert_eq!(refiner.first(), 176);
    /// assert_eq!(base.timesteps.len() + refiner.timesteps.len(), 40);
    /// # Ok::<(), ddim::DdimError>(())
    /// ```
    pub fn base_timesteps(&self, denoising_end: f64) -> Result<PartialSchedule<'_>, DdimError> {
        let timesteps = self.set_schedule()?;
        let cutoff = self.cutoff("denoising_end", denoising_end)?;
        let count = timesteps.iter().filter(|&&t| t as f64 >= cutoff).count();
        let run = PartialSchedule {
            timesteps: &timesteps[..count],
            start: 0,
        };
        if run.timesteps.is_empty() {
            return Err(DdimError::NoStepsLeft {
                name: "denoising_end",
                value: denoising_end,
            });
        }
        Ok(run)
    }

    /// The timesteps SDXL's refiner runs when it takes over at `denoising_start`, as
    /// `StableDiffusionXLImg2ImgPipeline.get_timesteps` keeps them: the same cut-off as
    /// [`base_timesteps`](DdimScheduler::base_timesteps), and the trailing timesteps below it,
    /// so that base and refiner together run the schedule once.
    ///
    /// # Errors
    ///
    /// As [`base_timesteps`](DdimScheduler::base_timesteps), for `denoising_start`.
    pub fn refiner_timesteps(
        &self,
        denoising_start: f64,
    ) -> Result<PartialSchedule<'_>, DdimError> {
        let timesteps = self.set_schedule()?;
        let cutoff = self.cutoff("denoising_start", denoising_start)?;
        let count = timesteps.iter().filter(|&&t| (t as f64) < cutoff).count();
        let start = timesteps.len() - count;
        self.partial(timesteps, start, "denoising_start", denoising_start)
    }

    /// The inpainting blend of a 4-channel UNet (`StableDiffusionInpaintPipeline`), after the
    /// step to `next_timestep`: the known region (`mask = 0`) is put back from the image
    /// latents, noised to the level the loop has reached, and the region to paint (`mask = 1`)
    /// keeps the step's result,
    ///
    /// ```text
    /// latents = (1 - mask) * add_noise(image_latents, noise, next_timestep) + mask * latents
    /// ```
    ///
    /// with `next_timestep` the timestep the next step starts from, and `None` after the last
    /// step, where the image latents are put back without noise. One pass over the arrays,
    /// without allocation; `mask` is broadcast to the latents' shape as numpy broadcasts (the
    /// pipeline's mask has one channel, `(batch, 1, height, width)`). The arithmetic is the
    /// pipeline's, in the element type (in `f32` for 16-bit elements, each result rounded once),
    /// with `add_noise`'s square roots taken as [`add_noise`](DdimScheduler::add_noise) takes
    /// them.
    ///
    /// # Errors
    ///
    /// [`DdimError::ShapeMismatch`] when `image_latents` or `noise` differ in shape from
    /// `latents`, or `mask` does not broadcast to it; [`DdimError::TimestepOutOfRange`] for a
    /// timestep `>= num_train_timesteps`. On error `latents` is untouched.
    ///
    /// # Example
    ///
    /// ```
    /// use ddim::ndarray::{Array4, s};
    /// use ddim::{DdimConfig, DdimScheduler};
    ///
    /// let mut scheduler = DdimScheduler::new(DdimConfig::default())?;
    /// scheduler.set_timesteps(10)?;
    /// let image_latents = Array4::<f32>::from_elem((1, 4, 8, 8), 0.7);
    /// let noise = Array4::<f32>::from_elem((1, 4, 8, 8), -0.2);
    /// let mut mask = Array4::<f32>::zeros((1, 1, 8, 8));
    /// mask.slice_mut(s![.., .., 2..6, 2..6]).fill(1.0); // paint the middle
    ///
    /// let timesteps = scheduler.timesteps().to_vec();
    /// let mut latents = Array4::<f32>::from_elem((1, 4, 8, 8), 0.1);
    /// for (i, &t) in timesteps.iter().enumerate() {
    ///     let eps = &latents * 0.1; // the network
    ///     latents = scheduler.step(&eps, t, &latents)?.prev_sample;
    ///     let next = timesteps.get(i + 1).copied();
    ///     scheduler.blend_inpainting(&mut latents, &image_latents, &noise, &mask, next)?;
    /// }
    /// assert_eq!(latents[[0, 0, 0, 0]], 0.7); // the known region is the image
    /// # Ok::<(), ddim::DdimError>(())
    /// ```
    pub fn blend_inpainting<T: DdimFloat, D: Dimension, E: Dimension>(
        &self,
        latents: &mut ArrayRef<T, D>,
        image_latents: &ArrayRef<T, D>,
        noise: &ArrayRef<T, D>,
        mask: &ArrayRef<T, E>,
        next_timestep: Option<usize>,
    ) -> Result<(), DdimError> {
        let shape = latents.shape();
        same_shape("image_latents", image_latents.shape(), "latents", shape)?;
        same_shape("noise", noise.shape(), "latents", shape)?;
        let Some(mask) = mask.broadcast(latents.raw_dim()) else {
            return Err(DdimError::ShapeMismatch {
                name: "mask (broadcast)",
                found: mask.shape().to_vec(),
                reference_name: "latents",
                expected: shape.to_vec(),
            });
        };
        // `(1 - mask) * known + mask * latents`, in the compute type, rounded once.
        let one = T::Compute::ONE;
        let Some(t) = next_timestep else {
            Zip::from(latents)
                .and(image_latents)
                .and(&mask)
                .for_each(|x, &image, &m| {
                    let m = m.widen();
                    *x = T::narrow((one - m) * image.widen() + m * x.widen());
                });
            return Ok(());
        };
        let alpha = T::Compute::from_f32(self.alpha_bar(t)?);
        let (sa, sb) = (alpha.sqrt(), (one - alpha).sqrt());
        Zip::from(latents)
            .and(image_latents)
            .and(noise)
            .and(&mask)
            .for_each(|x, &image, &z, &m| {
                let (m, known) = (m.widen(), sa * image.widen() + sb * z.widen());
                *x = T::narrow((one - m) * known + m * x.widen());
            });
        Ok(())
    }

    /// The timesteps, or [`DdimError::TimestepsNotSet`].
    fn set_schedule(&self) -> Result<&[usize], DdimError> {
        match self.num_inference_steps() {
            Some(_) => Ok(self.timesteps()),
            None => Err(DdimError::TimestepsNotSet),
        }
    }

    /// `round(T - fraction * T)` for a fraction in `(0, 1)`, in double, half to even.
    fn cutoff(&self, name: &'static str, fraction: f64) -> Result<f64, DdimError> {
        if !(fraction > 0.0 && fraction < 1.0) {
            return Err(DdimError::InvalidArgument {
                name,
                value: fraction,
                allowed: "a number strictly between 0 and 1 (the fraction of the denoising \
                          done by the base model)",
            });
        }
        let t = self.config().num_train_timesteps as f64;
        Ok((t - fraction * t).round_ties_even())
    }

    /// The schedule from `start` on, or [`DdimError::NoStepsLeft`] when that is empty.
    fn partial<'a>(
        &self,
        timesteps: &'a [usize],
        start: usize,
        name: &'static str,
        value: f64,
    ) -> Result<PartialSchedule<'a>, DdimError> {
        match timesteps.get(start..) {
            Some(rest) if !rest.is_empty() => Ok(PartialSchedule {
                timesteps: rest,
                start,
            }),
            _ => Err(DdimError::NoStepsLeft { name, value }),
        }
    }
}
