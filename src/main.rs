//! The `ptfile` command line.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cli;

/// Read, load and write PyTorch checkpoints without Python.
#[derive(Parser)]
#[command(name = "ptfile", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Describe a checkpoint: its object tree, tensors, storages and locations.
    Inspect {
        /// Print the JSON description (the fixtures' schema) instead of the summary.
        #[arg(long)]
        json: bool,
        /// Most nodes the description may have (default 250000; a larger tree is refused with
        /// --json), and most entries the listing prints (default 2000; then it is cut short).
        #[arg(long, value_name = "N")]
        max_nodes: Option<usize>,
        /// Show the plan of a device map (as `load --device-map`) without loading.
        #[arg(long = "device-map", value_name = "SPEC")]
        device_map: Vec<String>,
        /// Budgets for `--device-map auto` (`DEVICE=BYTES`, repeatable).
        #[arg(long = "max-memory", value_name = "DEVICE=BYTES")]
        max_memory: Vec<String>,
        /// The checkpoint file or model directory.
        file: PathBuf,
    },
    /// Materialize every storage on the device asked for (or as saved), with CPU fallback.
    Load(cli::load::LoadArgs),
    /// Time opening and loading a checkpoint.
    Bench(cli::bench::BenchArgs),
    /// Write a checkpoint in another format (zip, legacy, safetensors) or with other locations.
    Convert(cli::convert::ConvertArgs),
}

/// Stack for the worker thread: nesting is bounded by the interpreter's limit, but a debug
/// build's frames are large.
const STACK: usize = 64 << 20;

fn main() -> ExitCode {
    match std::thread::Builder::new()
        .name("ptfile".into())
        .stack_size(STACK)
        .spawn(real_main)
        .map(|h| h.join())
    {
        Ok(Ok(code)) => code,
        _ => {
            eprintln!(
                "ptfile: internal error (the worker thread failed); please report it with the file"
            );
            ExitCode::from(1)
        }
    }
}

fn real_main() -> ExitCode {
    cli::guard::install();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    // The files the command reads, as they are now: a change by the end voids the result.
    let watch = cli::guard::watch(match &cli.cmd {
        Cmd::Inspect { file, .. } => file,
        Cmd::Load(a) => &a.file,
        Cmd::Bench(a) => &a.file,
        Cmd::Convert(a) => &a.input,
    });
    let result = run(cli, &watch);
    let result = match watch.changed() {
        Some(changed) => Err(changed),
        None => result,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ptfile: {}", e.one_line());
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

fn run(cli: Cli, watch: &cli::guard::Watch) -> ptfile::Result<()> {
    match cli.cmd {
        Cmd::Inspect {
            json,
            max_nodes,
            device_map,
            max_memory,
            file,
        } => {
            let map = ptfile::DeviceMap::parse_specs(&device_map, &max_memory)?;
            let ckpt = ptfile::Checkpoint::open(&file)?;
            let plan = ptfile::Loader::new().device_map(map).plan(&ckpt)?;
            let mut opts = ptfile::describe::DescribeOptions::default();
            if let Some(n) = max_nodes {
                opts.max_nodes = n;
                opts.max_listed = n;
            }
            let mut so = std::io::stdout().lock();
            let out = if json {
                let mut v = ptfile::describe::describe_with(&ckpt, &ckpt.root, &ckpt, &opts)?;
                if !plan.blocks.is_empty() {
                    v["device_map"] = plan.to_json();
                }
                serde_json::to_string(&v).map_err(|e| ptfile::Error::Usage(e.to_string()))?
            } else {
                cli::load::print_plan(&mut so, &plan);
                ptfile::describe::human_with(&ckpt, &opts)
            };
            let _ = writeln!(so, "{out}");
            Ok(())
        }
        Cmd::Load(args) => cli::load::run(&args),
        Cmd::Bench(args) => cli::bench::run(&args),
        Cmd::Convert(args) => cli::convert::run(&args, watch),
    }
}
