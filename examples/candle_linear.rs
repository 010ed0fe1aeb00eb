//! A candle-nn `Linear` layer from a PyTorch checkpoint, read lazily through
//! `ptfile::candle::var_builder`: the layer's shape comes from the checkpoint, its weight and
//! bias are read (any format ptfile reads, any dtype converted to float32) when candle asks,
//! and the layer runs on a row of ones. PREFIX is the key path the state dict sits under in
//! a training checkpoint (`state_dict`, `model_state_dict`); `-` for none.
//!
//! ```text
//! cargo run --example candle_linear --features candle -- tests/fixtures/seed_mymodule_state_dict.pt l0
//! cargo run --example candle_linear --features candle -- tests/fixtures/training_checkpoint.pt 0 model_state_dict
//! ```

use ptfile::candle::candle_core::{DType, Device, Module, Tensor};
use ptfile::candle::{candle_nn, Options};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: candle_linear FILE LAYER [PREFIX]";
    let (path, layer) = (args.next().ok_or(usage)?, args.next().ok_or(usage)?);
    let prefix = args.next().filter(|p| p != "-").unwrap_or_default();

    // The layer's sizes, from the checkpoint's metadata (nothing read yet).
    let ckpt = ptfile::Checkpoint::open(&path)?;
    let key = [prefix.as_str(), layer.as_str(), "weight"]
        .iter()
        .filter(|s| !s.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(".");
    let w = ckpt.tensor(&key)?;
    let [out_dim, in_dim] = w.shape() else {
        return Err(format!("{key} has shape {:?}, not a Linear weight", w.shape()).into());
    };
    let (out_dim, in_dim) = (*out_dim as usize, *in_dim as usize);
    println!("{key}: {} {:?}", w.dtype(), w.shape());

    let dev = Device::Cpu;
    let vb =
        ptfile::candle::var_builder_with(&path, DType::F32, &dev, Options::new().prefix(prefix))?;
    let linear = candle_nn::linear(in_dim, out_dim, vb.pp(&layer))?;
    let x = Tensor::ones((1, in_dim), DType::F32, &dev)?;
    let y = linear.forward(&x)?;
    println!("{layer}(ones(1, {in_dim})) = {:?}", y.to_vec2::<f32>()?);
    Ok(())
}
