//! `ptfile convert IN OUT`: write a checkpoint in another format or with other locations.

use std::path::PathBuf;

use ptfile::save::{NonTensors, SaveFormat, SaveOptions};

/// Arguments of `ptfile convert`.
#[derive(clap::Args, Debug)]
pub struct ConvertArgs {
    /// The checkpoint to read: a file, a model directory (HF shards, DCP) or an index.
    pub input: PathBuf,
    /// Where to write (`.safetensors` exports safetensors). Written atomically: an existing
    /// file is replaced only once the new one is complete.
    pub output: PathBuf,
    /// Output format: `zip` (torch >= 1.6, default), `legacy`
    /// (`_use_new_zipfile_serialization=False`), `safetensors` (default for `*.safetensors`)
    /// or `dcp` (a torch.distributed.checkpoint directory at OUT).
    #[arg(long)]
    pub format: Option<String>,
    /// Retag storages: `LOC` or `OLD=NEW` (repeatable), as torch's map_location.
    #[arg(long = "map-location")]
    pub map_location: Vec<String>,
    /// Rewrite each storage to the byte range its views use.
    #[arg(long)]
    pub compact: bool,
    /// safetensors export: what to do with values that are not tensors: `error` (default),
    /// `metadata` (strings in `__metadata__`) or `skip`.
    #[arg(long = "non-tensors", default_value = "error")]
    pub non_tensors: String,
    /// Do not flush the output to disk before renaming it into place (faster, less durable).
    #[arg(long = "no-sync")]
    pub no_sync: bool,
}

/// Runs the subcommand. The output is written beside its destination and renamed into place
/// only if the input did not change meanwhile (`watch`), so a mixed result never replaces it.
pub fn run(args: &ConvertArgs, watch: &super::guard::Watch) -> ptfile::Result<()> {
    let format = match &args.format {
        Some(f) => SaveFormat::parse(f)?,
        None => SaveFormat::for_path(&args.output),
    };
    let non_tensors = match args.non_tensors.as_str() {
        "error" => NonTensors::Error,
        "metadata" => NonTensors::Metadata,
        "skip" => NonTensors::Skip,
        other => {
            return Err(ptfile::Error::Usage(format!(
                "--non-tensors {other}: expected error, metadata or skip"
            )))
        }
    };
    let opts = SaveOptions {
        format: Some(format),
        map_location: ptfile::MapLocation::parse_specs(&args.map_location)?,
        compact: args.compact,
        sync: !args.no_sync,
        non_tensors,
        ..SaveOptions::default()
    };
    let ckpt = ptfile::Checkpoint::open(&args.input)?;
    if format == SaveFormat::Dcp {
        // (a directory: its metadata is renamed into place last by the writer itself)
        ptfile::save::save_checkpoint(&ckpt, &args.output, &opts)?;
        return match watch.changed() {
            Some(e) => Err(e),
            None => Ok(()),
        };
    }
    let name = args
        .output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let partial = args
        .output
        .with_file_name(format!(".{name}.ptfile-partial"));
    let opts = SaveOptions {
        archive_name: Some(ptfile::save::archive_name_for(&args.output)),
        ..opts
    };
    let result = ptfile::save::save_checkpoint(&ckpt, &partial, &opts).and_then(|_| {
        if let Some(e) = watch.changed() {
            return Err(e);
        }
        std::fs::rename(&partial, &args.output).map_err(|source| ptfile::Error::Write {
            path: args.output.clone(),
            what: format!("renaming the finished file into place: {source}"),
            source: Some(source),
        })
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}
