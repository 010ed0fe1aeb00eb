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
        /// The checkpoint file.
        file: PathBuf,
    },
    /// Materialize every storage on the device asked for (or as saved), with CPU fallback.
    Load(cli::load::LoadArgs),
    /// Time opening and loading a checkpoint.
    Bench(cli::bench::BenchArgs),
    /// Write a checkpoint in another format (zip, legacy, safetensors) or with other locations.
    Convert(cli::convert::ConvertArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let msg = e.to_string().replace('\n', " ");
            eprintln!("ptfile: {msg}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

fn run(cli: Cli) -> ptfile::Result<()> {
    match cli.cmd {
        Cmd::Inspect { json, file } => {
            let ckpt = ptfile::Checkpoint::open(&file)?;
            let out = if json {
                let v = ptfile::describe::describe(&ckpt)?;
                serde_json::to_string(&v).map_err(|e| ptfile::Error::Usage(e.to_string()))?
            } else {
                ptfile::describe::human(&ckpt)
            };
            let mut so = std::io::stdout().lock();
            let _ = writeln!(so, "{out}");
            Ok(())
        }
        Cmd::Load(args) => cli::load::run(&args),
        Cmd::Bench(args) => cli::bench::run(&args),
        Cmd::Convert(args) => cli::convert::run(&args),
    }
}
