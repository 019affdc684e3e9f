//! The `ddim` crate on a real trained model (work in progress).
