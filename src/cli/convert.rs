//! `ptfile convert IN OUT`: write a checkpoint in another format or with other locations.

use std::path::PathBuf;

/// Arguments of `ptfile convert`.
#[derive(clap::Args, Debug)]
pub struct ConvertArgs {
    /// The checkpoint to read.
    pub input: PathBuf,
    /// Where to write (`.safetensors` exports safetensors).
    pub output: PathBuf,
    /// Output format: `zip` (torch >= 1.6, default) or `legacy` (`_use_new_zipfile_serialization=False`).
    #[arg(long, default_value = "zip")]
    pub format: String,
    /// Retag storages: `LOC` or `OLD=NEW` (repeatable), as torch's map_location.
    #[arg(long = "map-location")]
    pub map_location: Vec<String>,
    /// Rewrite each storage to the byte range its views use.
    #[arg(long)]
    pub compact: bool,
}

/// Runs the subcommand.
pub fn run(args: &ConvertArgs) -> ptfile::Result<()> {
    Err(ptfile::Error::Unsupported {
        what: format!(
            "converting {} to {}",
            args.input.display(),
            args.output.display()
        ),
        location: "ptfile convert".into(),
        hint: "the writer is being built".into(),
    })
}
