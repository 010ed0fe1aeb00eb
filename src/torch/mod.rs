//! The torch data model: dtypes, the object tree, rebuild functions interpreted over pickle
//! values, storages and views, element access, nn.Module and TorchScript state dicts, and
//! the readers of each checkpoint format (zip, legacy stream and tar, TorchScript).

pub mod checkpoint;
pub(crate) mod dcp;
pub(crate) mod denylist;
pub mod dtype;
pub(crate) mod elements;
pub(crate) mod interpret;
pub(crate) mod legacy;
pub mod model;
pub(crate) mod nn_module;
mod open;
pub(crate) mod safetensors;
pub(crate) mod shards;
pub(crate) mod sparse;
pub mod tensor;
pub(crate) mod torchscript;
pub(crate) mod walk;
pub(crate) mod zip;
