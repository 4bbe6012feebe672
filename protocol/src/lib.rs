//! The types that cross cogward's crates, defined once and serde-versioned: what a pipeline
//! submits and gets back ([`spec`]), approvals ([`approval`]), the activities' contracts
//! ([`activities`]), and the runner's file protocol ([`runner`]).
//!
//! Everything here is plain data (serde, a few pure functions): no I/O, no Temporal client, no
//! sandbox. `workflows` depends on this crate and the Temporal SDK alone.

pub mod activities;
pub mod approval;
pub mod audit;
pub mod runner;
pub mod spec;
