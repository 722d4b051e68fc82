//! What Gregor's components take from the operating system, in one small crate below all of
//! them: the time ([`Clock`], so that time is an input a test or a simulation can control)
//! and durable replacement of small files ([`fs::replace_file`]).
//!
//! Components never read the wall clock themselves: they are handed a [`SharedClock`]
//! ([`SystemClock`] in production, [`ManualClock`] in tests) or, in the sans-I/O
//! coordinators, the current time as an argument.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod clock;
pub mod fs;

pub use clock::{Clock, ManualClock, SharedClock, SystemClock};
