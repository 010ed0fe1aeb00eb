//! Subcommands of the `ptfile` binary.

pub mod convert;
