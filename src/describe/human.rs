//! The human summary `ptfile inspect` prints.

use std::fmt::Write as _;

use crate::torch::checkpoint::Checkpoint;
use crate::torch::model::Object;

use super::DescribeOptions;

/// The human summary printed by `ptfile inspect`.
pub fn human(ckpt: &Checkpoint) -> String {
    human_with(ckpt, &DescribeOptions::default())
}

/// The human summary, listing at most `opts.max_nodes` entries.
pub fn human_with(ckpt: &Checkpoint, opts: &DescribeOptions) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "format: {}  pickle protocol: {}  byte order: {}",
        ckpt.format.name(),
        ckpt.protocol,
        match ckpt.byteorder {
            crate::torch::checkpoint::ByteOrder::Little => "little",
            crate::torch::checkpoint::ByteOrder::Big => "big",
        }
    );
    if !ckpt.info.prefix.is_empty() {
        let _ = writeln!(
            s,
            "archive: folder {:?}, version {}, format_version {}, storage_alignment {}",
            ckpt.info.prefix,
            ckpt.info.version.as_deref().unwrap_or("-"),
            ckpt.info.format_version.as_deref().unwrap_or("-"),
            ckpt.info.storage_alignment.as_deref().unwrap_or("-"),
        );
    }
    for n in &ckpt.notes {
        let _ = writeln!(s, "{n}");
    }
    let (leaves, cut) = match crate::torch::model::is_amplified(&ckpt.root) {
        Some((u, e)) => {
            let _ = writeln!(
                s,
                "note: the object tree shares structure ({u} objects expand to {e} nodes): it is not listed by path"
            );
            (Vec::new(), false)
        }
        None => {
            let (l, cut) = ckpt.root.leaves_bounded(opts.max_listed.saturating_mul(4));
            (l, cut)
        }
    };
    let cut = cut || leaves.len() > opts.max_listed;
    let width = leaves
        .iter()
        .map(|(k, _)| k.len())
        .max()
        .unwrap_or(0)
        .clamp(6, 60);
    let mut n_tensors = 0usize;
    for (k, o) in leaves.iter().take(opts.max_listed) {
        let key = if k.is_empty() { "<root>" } else { k };
        let Object::Tensor(t) = o else {
            let _ = writeln!(s, "  {key:width$}  {}", short_value(o));
            continue;
        };
        n_tensors += 1;
        let loc = match t.storage {
            Some(i) => ckpt.storages[i].location.clone(),
            None => t.device.clone().unwrap_or_else(|| "meta".into()),
        };
        let bytes = t.numel().saturating_mul(t.dtype.element_size() as u64);
        let _ = writeln!(
            s,
            "  {key:width$}  {:<14} {:<18} {:<8} {:>10}{}",
            t.dtype.name(),
            format!("{:?}", t.shape),
            loc,
            human_bytes(bytes),
            if t.is_parameter { "  (parameter)" } else { "" },
        );
    }
    if cut {
        let _ = writeln!(
            s,
            "  ... (listing stopped after {} entries; `--max-nodes N` lists more)",
            opts.max_listed
        );
    }
    let mut by_loc: Vec<(String, u64, usize)> = Vec::new();
    for st in &ckpt.storages {
        match by_loc.iter_mut().find(|(l, _, _)| *l == st.location) {
            Some(e) => {
                e.1 += st.nbytes;
                e.2 += 1;
            }
            None => by_loc.push((st.location.clone(), st.nbytes, 1)),
        }
    }
    let _ = writeln!(
        s,
        "{}{} tensors, {} storages, {} of storage data",
        n_tensors,
        if cut { "+" } else { "" },
        ckpt.storages.len(),
        human_bytes(ckpt.total_storage_bytes())
    );
    for (l, b, n) in by_loc {
        let _ = writeln!(s, "  {l}: {n} storages, {}", human_bytes(b));
    }
    s
}

/// A one-line summary of a non-tensor value for the human listing.
fn short_value(o: &Object) -> String {
    let text = match o {
        Object::None => "None".to_string(),
        Object::Bool(b) => if *b { "True" } else { "False" }.to_string(),
        Object::Int(i) => i.to_string(),
        Object::BigInt(b) => b.to_string(),
        Object::Float(f) => f.to_string(),
        Object::Complex(re, im) => format!("({re}{im:+}j)"),
        Object::Str(v) => format!("{:?}", v.chars().take(121).collect::<String>()),
        Object::Bytes(b) | Object::ByteArray(b) => format!("{} bytes", b.len()),
        Object::Size(d) => format!("torch.Size({d:?})"),
        Object::Dtype(d) => format!("torch.{d}"),
        Object::Device(d) => format!("device({d:?})"),
        Object::Named(n) | Object::Global(n) => n.to_string(),
        Object::Set(x) | Object::FrozenSet(x) => format!("set of {}", x.len()),
        Object::QTensor(q) => format!(
            "quantized {} {:?} ({})",
            q.int_repr.dtype, q.int_repr.shape, q.qscheme
        ),
        Object::SparseTensor(t) => format!("{} {:?}", t.layout, t.shape),
        Object::Storage(i) => format!("storage {i}"),
        Object::Opaque(op) => format!("<{}>", op.class),
        Object::Cycle => "<cycle>".to_string(),
        other => crate::torch::interpret::type_name(other).to_string(),
    };
    // Bounded and on one line whatever the file holds.
    let mut t: String = text
        .chars()
        .take(120)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().count() > 120 {
        t.push_str("...");
    }
    t
}

/// `1.5 MiB`-style sizes.
pub fn human_bytes(b: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}
