//! The container and encoding layer: the byte source (one file map), the pickle machine and
//! the zip reader. Nothing here knows torch: it yields records and values.

pub mod pickle;
pub mod source;
pub mod zip;
