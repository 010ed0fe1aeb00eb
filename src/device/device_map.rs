//! Device maps across several devices, as accelerate's `device_map`: rules `PREFIX -> DEVICE`
//! (the longest matching prefix wins), or `auto`: devices filled in order up to a memory
//! budget, each block of the model (`model.layers.N`) kept whole on one device, the rest on
//! the CPU. A plan names a device per storage; the [`crate::Loader`] applies it after
//! `map_location`.
//!
//! ```
//! use ptfile::{DeviceMap, Loader};
//! # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/seed_mymodule_state_dict.pt");
//! // `l0` on the CPU explicitly, everything else as a rule for the whole model says.
//! let map = DeviceMap::new().rule("", "cpu").rule("l0", "cpu");
//! let loaded = Loader::new().device_map(map).load(path)?;
//! assert!(loaded.report.storages.iter().all(|r| r.device == "cpu"));
//! # Ok::<(), ptfile::Error>(())
//! ```

use ptfile_backend::Location;

use crate::device::registry::Registry;
use crate::error::{Error, Result};
use crate::torch::checkpoint::Checkpoint;

/// Where each part of a model goes.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct DeviceMap {
    rules: Vec<(String, String)>,
    auto: bool,
    max_memory: Vec<(String, u64)>,
}

/// The device a plan chose for each storage, and the blocks it placed.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Plan {
    /// Per storage (as in `Checkpoint::storages`): the device chosen, None where the map says
    /// nothing (map_location's choice stands).
    pub storages: Vec<Option<String>>,
    /// The blocks in model order: (block name, device, bytes of the storages it claims).
    pub blocks: Vec<(String, String, u64)>,
}

/// The block a tensor name belongs to: up to and including its first numeric segment
/// (`model.layers.3`), else its module (the name without its last segment).
pub fn block_of(name: &str) -> &str {
    let mut end = 0;
    for (i, seg) in name.split('.').enumerate() {
        end += seg.len() + usize::from(i > 0);
        if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
            return &name[..end];
        }
    }
    name.rsplit_once('.').map_or(name, |(m, _)| m)
}

/// Whether `prefix` names `name` or a module containing it ("" names everything).
fn covers(prefix: &str, name: &str) -> bool {
    prefix.is_empty()
        || name == prefix
        || (name.starts_with(prefix) && name.as_bytes().get(prefix.len()) == Some(&b'.'))
}

/// Parses a byte count: digits with an optional unit (`B`, `K`/`KB`/`KiB`, `M`..., `G`...,
/// `T`...; decimal units are powers of 1000, binary ones of 1024).
pub fn parse_bytes(s: &str) -> Result<u64> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(digits);
    let n: u64 = n
        .parse()
        .map_err(|_| Error::Usage(format!("{s:?} is not a byte count (such as 4GiB)")))?;
    let mul: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "tib" => 1 << 40,
        other => {
            return Err(Error::Usage(format!(
                "unknown byte unit {other:?} in {s:?}"
            )))
        }
    };
    n.checked_mul(mul)
        .ok_or_else(|| Error::Usage(format!("{s:?} is too large")))
}

impl DeviceMap {
    /// An empty map (map_location decides everything).
    pub fn new() -> DeviceMap {
        DeviceMap::default()
    }
    /// `auto`: fill the devices in order, block by block, up to the budgets given with
    /// [`DeviceMap::max_memory`] or, without any, up to each device's free memory where its
    /// backend tells it ([`ptfile_backend::Backend::free_memory`]; devices that do not are
    /// left out, and when none does the plan is an error asking for budgets).
    pub fn auto() -> DeviceMap {
        DeviceMap {
            auto: true,
            ..DeviceMap::default()
        }
    }
    /// Tensors named `prefix` or under it (`model.layers.0`; `""` for everything) go to
    /// `device`; the longest matching prefix wins.
    pub fn rule(mut self, prefix: impl Into<String>, device: impl Into<String>) -> DeviceMap {
        self.rules.push((prefix.into(), device.into()));
        self
    }
    /// For `auto`: at most `bytes` on `device`; the devices given fill in this order (the
    /// CPU takes what is left).
    pub fn max_memory(mut self, device: impl Into<String>, bytes: u64) -> DeviceMap {
        self.max_memory.push((device.into(), bytes));
        self
    }
    /// Whether the map says nothing.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty() && !self.auto
    }

    /// The map of the CLI's flags: `--device-map PREFIX=DEVICE` (repeatable) or
    /// `--device-map auto`, and `--max-memory DEVICE=BYTES` (repeatable).
    pub fn parse_specs(specs: &[String], max_memory: &[String]) -> Result<DeviceMap> {
        let mut m = DeviceMap::new();
        for s in specs {
            if s == "auto" {
                m.auto = true;
                continue;
            }
            let (p, d) = s.rsplit_once('=').ok_or_else(|| {
                Error::Usage(format!(
                    "--device-map {s:?}: expected PREFIX=DEVICE (model.layers.0=cuda:0) or auto"
                ))
            })?;
            Location::parse(d).map_err(|e| Error::Usage(format!("--device-map {s:?}: {e}")))?;
            m.rules.push((p.to_string(), d.to_string()));
        }
        for s in max_memory {
            let (d, b) = s.split_once('=').ok_or_else(|| {
                Error::Usage(format!(
                    "--max-memory {s:?}: expected DEVICE=BYTES (cuda:0=20GiB)"
                ))
            })?;
            Location::parse(d).map_err(|e| Error::Usage(format!("--max-memory {s:?}: {e}")))?;
            m.max_memory.push((d.to_string(), parse_bytes(b)?));
        }
        if m.auto && !m.rules.is_empty() {
            return Err(Error::Usage(
                "--device-map auto cannot be combined with PREFIX=DEVICE rules".into(),
            ));
        }
        if !m.max_memory.is_empty() && !m.auto {
            return Err(Error::Usage("--max-memory needs --device-map auto".into()));
        }
        Ok(m)
    }

    /// The plan for `ckpt`: every storage claimed by the first tensor (in model order) that
    /// views it.
    pub fn plan(&self, ckpt: &Checkpoint, registry: &Registry) -> Result<Plan> {
        let n = ckpt.storages.len();
        let mut plan = Plan {
            storages: vec![None; n],
            blocks: Vec::new(),
        };
        if self.is_empty() {
            return Ok(plan);
        }
        // Blocks in model order, each with the storages it claims first (and the tensor that
        // claims each: the first one viewing it).
        let mut claimed = vec![false; n];
        let mut blocks: Vec<(String, Vec<(usize, String)>)> = Vec::new();
        for (name, t) in ckpt.tensors() {
            let Some(s) = t.tensor().storage.filter(|&s| s < n) else {
                continue;
            };
            let b = block_of(&name);
            if claimed[s] {
                // A tied tensor follows the storage it shares.
                continue;
            }
            claimed[s] = true;
            if blocks.last().is_none_or(|l| l.0 != b) {
                blocks.push((b.to_string(), Vec::new()));
            }
            if let Some(last) = blocks.last_mut() {
                last.1.push((s, name));
            }
        }
        let bytes = |ss: &[(usize, String)]| {
            ss.iter()
                .map(|(s, _)| ckpt.storages[*s].nbytes)
                .sum::<u64>()
        };
        if !self.auto {
            for (block, ss) in &blocks {
                let mut first = None;
                for (s, name) in ss {
                    let rule = self
                        .rules
                        .iter()
                        .filter(|(p, _)| covers(p, name))
                        .max_by_key(|(p, _)| p.len());
                    plan.storages[*s] = rule.map(|(_, d)| d.clone());
                    first = first.or(plan.storages[*s].clone());
                }
                plan.blocks.push((
                    block.clone(),
                    first.unwrap_or_else(|| "(map_location)".into()),
                    bytes(ss),
                ));
            }
            return Ok(plan);
        }
        // auto: the devices and their budgets, in fill order.
        let devices: Vec<(String, u64)> = if self.max_memory.is_empty() {
            // Every device whose backend tells its free memory, in registry order.
            let mut v = Vec::new();
            let mut unknown = Vec::new();
            for ty in registry.device_types() {
                if ty == "cpu" {
                    continue;
                }
                let Some(b) = registry.backend(&ty) else {
                    continue;
                };
                for i in 0..b.availability().devices() {
                    match b.free_memory(i) {
                        Some(free) => v.push((format!("{ty}:{i}"), free)),
                        None => unknown.push(format!("{ty}:{i}")),
                    }
                }
            }
            if v.is_empty() && !unknown.is_empty() {
                return Err(Error::Usage(format!(
                    "--device-map auto: no backend tells how much memory {} has free; give budgets with --max-memory DEVICE=BYTES",
                    unknown.join(", ")
                )));
            }
            v
        } else {
            self.max_memory.clone()
        };
        let mut d = 0usize;
        let mut used = 0u64;
        for (block, ss) in &blocks {
            let need = bytes(ss);
            let mut dev = "cpu".to_string();
            while d < devices.len() {
                if used.saturating_add(need) <= devices[d].1 {
                    used += need;
                    dev = devices[d].0.clone();
                    break;
                }
                d += 1;
                used = 0;
            }
            for (s, _) in ss {
                plan.storages[*s] = Some(dev.clone());
            }
            plan.blocks.push((block.clone(), dev, need));
        }
        Ok(plan)
    }
}

impl Plan {
    /// The blocks as JSON: `[{"block", "device", "bytes"}, ...]`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Array(
            self.blocks
                .iter()
                .map(|(b, d, n)| serde_json::json!({"block": b, "device": d, "bytes": n}))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_prefixes_and_bytes() {
        assert_eq!(
            block_of("model.layers.12.self_attn.q_proj.weight"),
            "model.layers.12"
        );
        assert_eq!(block_of("model.embed_tokens.weight"), "model.embed_tokens");
        assert_eq!(block_of("lm_head.weight"), "lm_head");
        assert_eq!(block_of("bias"), "bias");
        assert_eq!(block_of("0.weight"), "0");
        assert!(covers("", "a.b"));
        assert!(covers("model.layers.1", "model.layers.1.w"));
        assert!(!covers("model.layers.1", "model.layers.10.w"));
        assert_eq!(parse_bytes("4GiB").unwrap(), 4 << 30);
        assert_eq!(parse_bytes("300KB").unwrap(), 300_000);
        assert_eq!(parse_bytes("12").unwrap(), 12);
        assert!(parse_bytes("1XB").is_err());
        assert!(parse_bytes("99999999999999999999").is_err());
        assert!(DeviceMap::parse_specs(&["auto".into(), "a=cpu".into()], &[]).is_err());
        assert!(DeviceMap::parse_specs(&["nodevice".into()], &[]).is_err());
        assert!(DeviceMap::parse_specs(&[], &["cuda:0=1GiB".into()]).is_err());
    }
}
