//! Sum one tensor of a checkpoint: open, name, read. Works on every layout (legacy files with
//! unaligned storages, views, big-endian files, conj/neg views).
//!
//! ```text
//! cargo run --example read_tensor -- tests/fixtures/seed_mymodule_state_dict.pt l0.weight
//! ```

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (path, name) = (args.next().ok_or("FILE")?, args.next().ok_or("NAME")?);
    let ckpt = ptfile::Checkpoint::open(&path)?;
    let t = ckpt.tensor(&name)?;
    let sum: f64 = match t.dtype().name() {
        "float32" => t.to_vec::<f32>()?.iter().map(|&x| x as f64).sum(),
        "float64" => t.to_vec::<f64>()?.iter().sum(),
        "bfloat16" => t
            .to_vec::<ptfile::half::bf16>()?
            .iter()
            .map(|x| x.to_f64())
            .sum(),
        "float16" => t
            .to_vec::<ptfile::half::f16>()?
            .iter()
            .map(|x| x.to_f64())
            .sum(),
        "int64" => t.to_vec::<i64>()?.iter().map(|&x| x as f64).sum(),
        other => {
            return Err(
                format!("{name} is {other}; this example sums float and int64 tensors").into(),
            )
        }
    };
    println!("{name}: {} {:?}, sum {sum}", t.dtype(), t.shape());
    Ok(())
}
