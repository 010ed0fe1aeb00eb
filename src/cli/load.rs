//! `ptfile load`: materialize every storage through the registry and say where it went.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use ptfile::{Checkpoint, CpuMode, Loader, MapLocation};

/// Arguments of `ptfile load`.
#[derive(clap::Args, Debug)]
pub struct LoadArgs {
    /// Where storages go: `LOC` (everything) or `OLD=NEW` (repeatable), as torch's map_location.
    #[arg(long = "map-location", value_name = "SPEC")]
    pub map_location: Vec<String>,
    /// Refuse (exit 1) instead of falling back to the CPU when a device is missing.
    #[arg(long)]
    pub strict: bool,
    /// Keep CPU storages in the read-only memory map instead of copying them.
    #[arg(long)]
    pub mmap: bool,
    /// Print the JSON description, with devices and hashes read back from each device.
    #[arg(long)]
    pub json: bool,
    /// Spread the model over devices, as accelerate's device_map: `PREFIX=DEVICE`
    /// (repeatable; the longest matching prefix wins) or `auto` (devices filled in order, each
    /// block such as `model.layers.N` whole on one device, the rest on the CPU).
    #[arg(long = "device-map", value_name = "SPEC")]
    pub device_map: Vec<String>,
    /// With `--device-map auto`: at most BYTES on DEVICE (`cuda:0=20GiB`, repeatable; the
    /// devices fill in the order given).
    #[arg(long = "max-memory", value_name = "DEVICE=BYTES")]
    pub max_memory: Vec<String>,
    /// The checkpoint file or model directory.
    pub file: PathBuf,
}

/// Builds the loader the CLI flags describe.
pub fn loader(map_location: &[String], strict: bool, mmap: bool) -> ptfile::Result<Loader> {
    Ok(Loader::new()
        .map_location(MapLocation::parse_specs(map_location)?)
        .strict(strict)
        .cpu_mode(if mmap {
            CpuMode::Mapped
        } else {
            CpuMode::Owned
        }))
}

/// Runs the subcommand.
pub fn run(args: &LoadArgs) -> ptfile::Result<()> {
    let loader = loader(&args.map_location, args.strict, args.mmap)?.device_map(
        ptfile::DeviceMap::parse_specs(&args.device_map, &args.max_memory)?,
    );
    let ckpt = Checkpoint::open(&args.file)?;
    let plan = loader.plan(&ckpt)?;
    let total = ckpt.total_storage_bytes();
    let bar = (std::io::stderr().is_terminal() && total >= 256 << 20).then(|| {
        let b = indicatif::ProgressBar::new(total);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    let loaded = loader.load_with_progress(ckpt, &mut |done| {
        if let Some(b) = &bar {
            b.set_position(done);
        }
    })?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        let mut v = loaded.describe()?;
        if !plan.blocks.is_empty() {
            v["device_map"] = plan.to_json();
        }
        let s = serde_json::to_string(&v).map_err(|e| ptfile::Error::Usage(e.to_string()))?;
        let _ = writeln!(out, "{s}");
        return Ok(());
    }
    let rep = &loaded.report;
    print_plan(&mut out, &plan);
    let _ = writeln!(
        out,
        "loaded {} storages, {}",
        rep.storages.len(),
        ptfile::describe::human_bytes(rep.storages.iter().map(|s| s.nbytes).sum())
    );
    for (dev, bytes, n) in rep.bytes_by_device() {
        // Name the device (GPU or adapter) where the backend can.
        let name = ptfile_backend::Location::parse(&dev).ok().and_then(|l| {
            let b = loader.get_registry().backend(&l.device_type)?;
            b.describe_device(l.index.unwrap_or(0))
        });
        let _ = writeln!(
            out,
            "  {dev}: {n} storages, {}{}",
            ptfile::describe::human_bytes(bytes),
            name.map(|n| format!(" ({n})")).unwrap_or_default()
        );
    }
    let mut reasons: Vec<(String, String, usize)> = Vec::new();
    for s in rep.fallbacks() {
        let r = s.fallback.clone().unwrap_or_default();
        match reasons
            .iter_mut()
            .find(|(l, rr, _)| *l == s.location && *rr == r)
        {
            Some(e) => e.2 += 1,
            None => reasons.push((s.location.clone(), r, 1)),
        }
    }
    for (loc, r, n) in reasons {
        let _ = writeln!(out, "  fell back to cpu: {n} storages mapped to {loc}: {r}");
    }
    Ok(())
}

/// The device map's plan, a line per device: how many blocks and bytes, first and last block.
pub fn print_plan(out: &mut dyn Write, plan: &ptfile::device_map::Plan) {
    let mut per: Vec<(&str, usize, u64, &str, &str)> = Vec::new();
    for (b, d, n) in &plan.blocks {
        match per.iter_mut().find(|p| p.0 == d) {
            Some(p) => {
                p.1 += 1;
                p.2 += n;
                p.4 = b;
            }
            None => per.push((d, 1, *n, b, b)),
        }
    }
    for (d, k, n, first, last) in per {
        let _ = writeln!(
            out,
            "device map: {d}: {k} blocks ({first} .. {last}), {}",
            ptfile::describe::human_bytes(n)
        );
    }
}
