//! The seed programs (../shared/seed-examples.md), shared by their own
//! examples and by `tour`.

pub mod processes;

/// What a seed program reports for the tour's summary.
// Single-seed examples only run the program; `tour` reads the summary.
#[allow(dead_code)]
#[derive(Debug)]
pub struct Summary {
    pub detail: String,
}
