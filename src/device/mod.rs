//! Devices: the priority-ordered registry of backends, `map_location`, the loader that puts
//! every storage on its device (with the CPU fallback and its report), CPU memory, and the
//! conformance suite backends run. Nothing here sees pickle.

#[cfg(feature = "conformance")]
pub mod conformance;
pub(crate) mod cpu;
pub mod device_map;
pub mod load;
pub mod map_location;
pub mod registry;
pub mod tensor;
