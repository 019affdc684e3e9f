//! Benchmarks of the `ddim` crate; the code is in `benches/`.
