//! The integration tests, as one test crate (one binary to build instead of twelve).
//!
//! Each module pins one area: golden values from the reference (`golden*`, `guidance`,
//! `torch_rng`), the configuration (`config`), errors and hostile input (`errors`, `hostile`),
//! array layouts and element types (`arrays`), properties over generated inputs (`properties`),
//! threads (`threads`), and what the crate does beyond the reference (`beyond`, `paper_claim`).
//! The allocation-counting test is its own binary (`tests/allocations.rs`), because it installs
//! a global allocator.

#[allow(dead_code)]
mod common;
#[allow(dead_code)]
#[path = "../../examples/shared/paper_experiment.rs"]
mod paper_experiment;

mod arrays;
mod beyond;
mod config;
mod errors;
mod golden;
mod golden_beyond;
mod guidance;
mod hostile;
mod paper_claim;
mod properties;
mod threads;
mod torch_rng;
