//! Hand-offs to the frameworks that compute with tensors, each behind its own feature:
//! DLPack (`dlpack`).

#[cfg(feature = "dlpack")]
pub mod dlpack;
