//! Hand-offs to the frameworks that compute with tensors, each behind its own feature:
//! DLPack (`dlpack`), ndarray (`ndarray`), candle (`candle`).

#[cfg(feature = "candle")]
pub mod candle;
#[cfg(feature = "dlpack")]
pub mod dlpack;
#[cfg(feature = "ndarray")]
pub mod ndarray;
