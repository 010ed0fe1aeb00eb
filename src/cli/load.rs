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
    /// The checkpoint file.
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
    let loader = loader(&args.map_location, args.strict, args.mmap)?;
    let ckpt = Checkpoint::open(&args.file)?;
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
        let v = loaded.describe()?;
        let s = serde_json::to_string(&v).map_err(|e| ptfile::Error::Usage(e.to_string()))?;
        let _ = writeln!(out, "{s}");
        return Ok(());
    }
    let rep = &loaded.report;
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
