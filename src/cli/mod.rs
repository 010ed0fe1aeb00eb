//! Subcommands of the `ptfile` binary.

pub mod bench;
pub mod convert;
pub mod guard;
pub mod load;
