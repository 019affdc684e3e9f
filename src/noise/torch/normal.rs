//! torch's Box-Muller block transform (`normal_fill_16` of its CPU `normal_kernel`): 16
//! uniforms of the tensor's precision become 16 normals, pairing element `j` with `j + 8`.

use std::f64::consts::PI;

use super::{cephes, TorchCpuKernel};

/// torch's Box-Muller block; below this many elements torch draws each normal on its own, in
/// double (with the cache).
pub(super) const BLOCK: usize = 16;

/// torch's `NormalFill16<double>`: Box-Muller on 8 pairs, in double.
pub(super) fn normal_16_f64(block: &mut [f64; BLOCK]) {
    let (firsts, seconds) = block.split_at_mut(BLOCK / 2);
    for (a, b) in firsts.iter_mut().zip(seconds.iter_mut()) {
        let u1 = 1.0 - *a; // [0, 1) -> (0, 1] for the log
        let u2 = *b;
        let radius = (-2.0 * u1.ln()).sqrt();
        let theta = 2.0 * PI * u2;
        // torch writes fma(value, std, mean) with std 1 and mean 0: `value + 0.0`.
        *a = radius * theta.cos() + 0.0;
        *b = radius * theta.sin() + 0.0;
    }
}

/// torch's `NormalFill16<float>`, in the given kernel: Box-Muller on 8 pairs, in float32.
pub(super) fn normal_16_f32(block: &mut [f32; BLOCK], kernel: TorchCpuKernel) {
    let (firsts, seconds) = block.split_at_mut(BLOCK / 2);
    for (a, b) in firsts.iter_mut().zip(seconds.iter_mut()) {
        let u1 = 1.0 - *a;
        let u2 = *b;
        let (radius, cos, sin) = match kernel {
            TorchCpuKernel::Scalar => {
                // `2.0f * c10::pi<double> * u2` is evaluated in double, then stored as float.
                let theta = (2.0 * PI * f64::from(u2)) as f32;
                ((-2.0 * u1.ln()).sqrt(), theta.cos(), theta.sin())
            }
            TorchCpuKernel::Avx2 => {
                let theta = cephes::TWO_PI * u2;
                let (sin, cos) = cephes::sincos(theta);
                ((-2.0 * cephes::log(u1)).sqrt(), cos, sin)
            }
        };
        *a = radius * cos + 0.0;
        *b = radius * sin + 0.0;
    }
}
