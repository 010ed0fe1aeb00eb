//! Tensors of a checkpoint as ndarray arrays: borrowed in place with torch's strides where the
//! layout allows (`as_array_view`, zero-copy over the file map), copied row-major otherwise
//! (`to_ndarray`: unaligned legacy storages, big-endian files, conj/neg views). Prints each
//! float32 tensor's shape, strides, how it was read and its column means.
//!
//! ```text
//! cargo run --example ndarray_view --features ndarray -- tests/fixtures/layouts.pt
//! cargo run --example ndarray_view --features ndarray -- tests/fixtures/training_checkpoint_legacy.pt model_state_dict.0.weight
//! ```

use ptfile::ndarray::{ArrayViewD, Axis, CowArray, IxDyn};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args.next().ok_or("usage: ndarray_view FILE [NAME]")?;
    let only = args.next();
    let ckpt = ptfile::Checkpoint::open(&path)?;
    let mut shown = 0;
    for (name, t) in ckpt.tensors() {
        if only.as_ref().is_some_and(|n| *n != name) || t.dtype() != ptfile::DType::FLOAT32 {
            continue;
        }
        if t.tensor().storage.is_none() {
            println!("{name}: no storage ({:?})", t.tensor().device);
            continue;
        }
        // Borrow where possible; the error says why not (and to use to_ndarray).
        let (a, how): (CowArray<'_, f32, IxDyn>, String) = match t.as_array_view::<f32>() {
            Ok(v) => {
                let v: ArrayViewD<'_, f32> = v;
                (v.into(), "borrowed".into())
            }
            Err(why) => (t.to_ndarray::<f32>()?.into(), format!("copied ({why})")),
        };
        let means = if a.ndim() >= 1 && a.len_of(Axis(0)) > 0 {
            format!(
                "{:?}",
                a.mean_axis(Axis(0))
                    .map(|m| m.iter().copied().collect::<Vec<f32>>())
            )
        } else {
            "-".into()
        };
        println!(
            "{name}: shape {:?} strides {:?}, {how}; mean over axis 0: {means}",
            a.shape(),
            a.strides()
        );
        shown += 1;
    }
    if shown == 0 {
        return Err(format!(
            "no float32 tensor{} in {path}",
            only.map(|n| format!(" {n}")).unwrap_or_default()
        )
        .into());
    }
    Ok(())
}
