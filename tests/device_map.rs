//! Device maps across several devices: `DeviceMap` rules (longest prefix wins) and `auto`
//! (devices filled in order up to their budgets, each block such as `model.layers.N` whole on
//! one device, the rest on the CPU), on a simulated two-device backend and on wgpu, through the
//! library and the CLI (`--device-map`, `--max-memory`, the plan in `load --json`).

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use common::*;
use ptfile::backend::{
    Availability, Backend, BackendError, DeviceStorage, HostStorage, StorageDesc,
};
use ptfile::save::{StateDict, TensorData};
use ptfile::{device_map::block_of, DeviceMap, Loader, Registry};

/// Two simulated devices in host memory.
struct Sim;
impl Backend for Sim {
    fn device_type(&self) -> &str {
        "sim"
    }
    fn availability(&self) -> Availability {
        Availability::Available { devices: 2 }
    }
    fn materialize(
        &self,
        index: Option<usize>,
        _desc: &StorageDesc<'_>,
        bytes: &[u8],
    ) -> Result<Box<dyn DeviceStorage>, BackendError> {
        let i = index.unwrap_or(0);
        Ok(Box::new(HostStorage::new(
            format!("sim:{i}"),
            bytes.to_vec(),
        )))
    }
    fn free_memory(&self, index: usize) -> Option<u64> {
        Some([3000, 2500][index.min(1)])
    }
}

/// A llama-like state dict: embed (1000 B), 6 layers of two tensors (400 + 200 B), norm
/// (40 B), lm_head tied to embed.
fn model(dir: &std::path::Path) -> std::path::PathBuf {
    let embed = vec![1.0f32; 250];
    let w = vec![2.0f32; 100];
    let b = vec![3.0f32; 50];
    let norm = vec![4.0f32; 10];
    let mut sd = StateDict::new();
    sd.insert(
        "model.embed_tokens.weight",
        TensorData::from_slice(&embed, &[25, 10]).unwrap(),
    )
    .unwrap();
    for l in 0..6 {
        sd.insert(
            format!("model.layers.{l}.mlp.weight"),
            TensorData::from_slice(&w, &[10, 10]).unwrap(),
        )
        .unwrap();
        sd.insert(
            format!("model.layers.{l}.mlp.bias"),
            TensorData::from_slice(&b, &[50]).unwrap(),
        )
        .unwrap();
    }
    sd.insert(
        "model.norm.weight",
        TensorData::from_slice(&norm, &[10]).unwrap(),
    )
    .unwrap();
    let p = dir.join("model.pt");
    sd.save(&p).unwrap();
    p
}

fn devices_of(loaded: &ptfile::Loaded) -> HashMap<String, String> {
    loaded.tensors().map(|(n, t)| (n, t.device())).collect()
}

#[test]
fn auto_fills_devices_in_order_keeping_blocks_whole() {
    let tmp = TempDir::new("devmap");
    let file = model(tmp.path());
    let registry = Arc::new(Registry::default().with(15, Arc::new(Sim)).unwrap());
    // Budgets from the backend's free memory: sim:0 3000 B, sim:1 2500 B.
    let loaded = Loader::new()
        .registry(registry.clone())
        .device_map(DeviceMap::auto())
        .load(&file)
        .unwrap();
    let dev = devices_of(&loaded);
    assert_eq!(dev["model.embed_tokens.weight"], "sim:0");
    // embed 1000 + 3 layers of 600 = 2800 <= 3000 on sim:0; layers 3..5 (1800) and the
    // norm (40) on sim:1 (2500).
    for l in 0..3 {
        assert_eq!(dev[&format!("model.layers.{l}.mlp.weight")], "sim:0", "{l}");
    }
    for l in 3..6 {
        assert_eq!(dev[&format!("model.layers.{l}.mlp.weight")], "sim:1", "{l}");
    }
    assert_eq!(dev["model.norm.weight"], "sim:1");
    // Each block whole on one device.
    for (n, d) in &dev {
        let b = block_of(n);
        assert!(
            dev.iter()
                .filter(|(m, _)| block_of(m) == b)
                .all(|(_, e)| e == d),
            "{n}"
        );
    }
    // Budgets given by hand, fewer than needed: the rest goes to the CPU.
    let loaded = Loader::new()
        .registry(registry.clone())
        .device_map(
            DeviceMap::auto()
                .max_memory("sim:1", 900)
                .max_memory("sim:0", 700),
        )
        .load(&file)
        .unwrap();
    let dev = devices_of(&loaded);
    assert_eq!(
        dev["model.embed_tokens.weight"], "cpu",
        "1000 B fits neither budget: sequential fill reaches the CPU"
    );
    assert_eq!(dev["model.layers.0.mlp.weight"], "cpu");
    assert!(loaded.report.fallbacks().next().is_none());
    // The values are the file's wherever they went.
    for (n, t) in loaded.tensors() {
        let want = ptfile::Checkpoint::open(&file)
            .unwrap()
            .tensor(&n)
            .unwrap()
            .to_bytes()
            .unwrap()
            .into_owned();
        assert_eq!(t.to_bytes().unwrap().into_owned(), want, "{n}");
    }
}

#[test]
fn rules_take_the_longest_prefix() {
    let tmp = TempDir::new("devmap-rules");
    let file = model(tmp.path());
    let registry = Arc::new(Registry::default().with(15, Arc::new(Sim)).unwrap());
    let map = DeviceMap::new()
        .rule("", "sim:0")
        .rule("model.layers", "sim:1")
        .rule("model.layers.5", "cpu");
    let loaded = Loader::new()
        .registry(registry)
        .device_map(map)
        .load(&file)
        .unwrap();
    let dev = devices_of(&loaded);
    assert_eq!(dev["model.embed_tokens.weight"], "sim:0");
    assert_eq!(dev["model.layers.1.mlp.bias"], "sim:1");
    assert_eq!(dev["model.layers.5.mlp.bias"], "cpu");
    assert_eq!(dev["model.norm.weight"], "sim:0");
}

#[test]
fn the_cli_plans_and_loads_with_a_device_map() {
    let tmp = TempDir::new("devmap-cli");
    let file = model(tmp.path());
    // wgpu:0 with a budget (the CPU otherwise: the plan is the same; the load falls back
    // where no adapter is).
    let o = std::process::Command::new(ptfile_bin())
        .args([
            "load",
            "--json",
            "--device-map",
            "auto",
            "--max-memory",
            "wgpu:0=2000",
        ])
        .arg(&file)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let plan = v["device_map"].as_array().unwrap();
    assert_eq!(plan[0]["block"], "model.embed_tokens");
    assert_eq!(plan[0]["device"], "wgpu:0");
    assert_eq!(plan[1]["device"], "wgpu:0");
    assert_eq!(plan[2]["device"], "cpu");
    assert_eq!(plan.last().unwrap()["block"], "model.norm");
    let o = std::process::Command::new(ptfile_bin())
        .args([
            "inspect",
            "--device-map",
            "model.layers=cpu",
            "--device-map",
            "=wgpu:0",
        ])
        .arg(&file)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("device map: wgpu:0") && out.contains("device map: cpu: 6 blocks"),
        "{out}"
    );
    for bad in [
        &["--device-map", "auto", "--device-map", "a=cpu"][..],
        &["--max-memory", "cpu=1"],
        &["--device-map", "x=no:such:dev"],
    ] {
        let o = std::process::Command::new(ptfile_bin())
            .arg("load")
            .args(bad)
            .arg(&file)
            .output()
            .unwrap();
        assert_eq!(
            o.status.code(),
            Some(2),
            "{bad:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}
