//! The integration tests, as one test crate (one binary to build instead of twelve).
//!
//! Each module pins one area: golden values from the reference (`golden*`, `guidance`,
//! `torch_rng`, `pipeline`, `slerp`), the configuration (`config`), errors and hostile input
//! (`errors`, `hostile`), array layouts, element types and noise sources (`arrays`), properties
//! over generated inputs (`properties`), threads (`threads`), and what the crate does beyond the
//! reference (`beyond`, `paper_claim`). Helpers shared by several modules live in `common`, once.
//! The allocation-counting test is its own binary (`tests/allocations.rs`), because it installs
//! a global allocator.

#[allow(dead_code)]
mod common;
// Allows its own dead code (the examples use parts of it, the tests others).
#[path = "../../examples/shared/paper_experiment.rs"]
mod paper_experiment;

mod arrays;
mod beyond;
mod config;
mod errors;
mod golden;
mod golden_beyond;
mod guidance;
mod half;
mod hostile;
mod interop;
mod paper_claim;
#[cfg(feature = "parallel")]
mod parallel;
mod pipeline;
mod properties;
mod slerp;
mod threads;
mod torch_rng;
