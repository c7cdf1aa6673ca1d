//! Run directories and checkpoints: everything written atomically, nothing of the user's lost.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::FinetuneConfig;
use crate::error::{FinetuneError, Result, io_err};
use crate::evaluation::loss::EvalResult;

/// The trainer's position, saved with each checkpoint so a resumed run continues exactly.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps taken.
    pub step: u64,
    /// Current pass over the data (0-based).
    pub epoch: u64,
    /// Next micro-batch of the current epoch's order.
    pub cursor: usize,
    /// Labelled tokens trained on so far.
    pub tokens: u64,
    /// Lowest validation loss seen, and its step.
    pub best_eval: Option<(u64, f64)>,
    /// Validation before the first step.
    pub eval_before: Option<EvalResult>,
    /// A preference run's held-out rewards before the first step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preference_before: Option<crate::training::metrics::EvalPreferenceMetrics>,
}

/// Files of a run directory.
pub const CONFIG_FILE: &str = "finetune_config.json";
/// Trainer position inside a checkpoint.
pub const STATE_FILE: &str = "trainer_state.json";
/// Optimizer state inside a checkpoint.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// One JSON object per step and per evaluation.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// Train and eval loss versus step.
pub const PLOT_FILE: &str = "loss.png";
/// A preference run's reward margins and accuracy versus step.
pub const REWARDS_PLOT_FILE: &str = "rewards.png";
/// Before/after figures of the run.
pub const SUMMARY_FILE: &str = "train_summary.json";
/// Checkpoint directories live here.
pub const CHECKPOINTS_DIR: &str = "checkpoints";
/// Adapter with the lowest validation loss.
pub const BEST_DIR: &str = "best";

/// What the trainer writes into a run directory (and may replace with `overwrite`).
const OUTPUTS: [&str; 10] = [
    CONFIG_FILE,
    METRICS_FILE,
    PLOT_FILE,
    REWARDS_PLOT_FILE,
    crate::training::reference_table::REFERENCE_LOGPS_FILE,
    SUMMARY_FILE,
    CHECKPOINTS_DIR,
    BEST_DIR,
    "adapter_config.json",
    "adapter_model.safetensors",
];

/// Makes `dir` ready for a new run: created when absent; a non-empty directory is refused
/// unless `overwrite`, and then only the trainer's own outputs are removed.
pub(crate) fn prepare_run_dir(dir: &Path, overwrite: bool) -> Result<()> {
    if dir.exists() {
        let non_empty = std::fs::read_dir(dir)
            .map_err(io_err(dir))?
            .next()
            .is_some();
        if non_empty && !overwrite {
            return Err(FinetuneError::WouldOverwrite(dir.to_path_buf()));
        }
        for name in OUTPUTS {
            let p = dir.join(name);
            if p.is_dir() {
                std::fs::remove_dir_all(&p).map_err(io_err(&p))?;
            } else if p.exists() {
                std::fs::remove_file(&p).map_err(io_err(&p))?;
            }
        }
    }
    std::fs::create_dir_all(dir).map_err(io_err(dir))
}

/// Writes `bytes` crash-safely (the workspace's one writer, `medify_quant::atomic`).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    crate::quant::atomic::write(path, bytes).map_err(io_err(path))
}

pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| FinetuneError::Checkpoint {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    write_atomic(path, text.as_bytes())
}

pub(crate) fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    serde_json::from_str(&text).map_err(|e| FinetuneError::Checkpoint {
        path: path.to_path_buf(),
        reason: format!("unreadable: {e}"),
    })
}

/// Fills a fresh temporary directory with `fill`, then renames it to `dir`, replacing an older
/// `dir` only once the new one is complete. On Linux the replacement is one atomic exchange of
/// the two directories, so a process killed at any moment leaves `dir` whole (old or new).
pub(crate) fn write_dir_atomic(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.with_file_name(format!(".{name}{TMP_MARK}{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
    if let Err(e) = fill(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if dir.exists() {
        if exchange(&tmp, dir).is_ok() {
            // `tmp` now holds the old directory.
            std::fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
        } else {
            let old = dir.with_file_name(format!(".{name}{OLD_MARK}{}", std::process::id()));
            std::fs::rename(dir, &old).map_err(io_err(dir))?;
            std::fs::rename(&tmp, dir).map_err(io_err(dir))?;
            std::fs::remove_dir_all(&old).map_err(io_err(&old))?;
        }
    } else {
        std::fs::rename(&tmp, dir).map_err(io_err(dir))?;
    }
    // The files inside were fsynced as they were written; this makes the rename durable.
    crate::quant::atomic::sync_parent(dir).map_err(io_err(dir))
}

/// Marks of the hidden directories a writer leaves while it works: a half-written new
/// directory, a replaced old one, one being deleted. A killed process can leave them behind;
/// [`remove_leftovers`] clears them.
const TMP_MARK: &str = ".tmp-";
const OLD_MARK: &str = ".old-";
const DELETING_MARK: &str = ".deleting-";

/// Swaps two paths atomically (Linux `renameat2(RENAME_EXCHANGE)`).
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
    };
    let (a, b) = (c(a)?, c(b)?);
    // SAFETY: both paths are valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn exchange(_: &Path, _: &Path) -> std::io::Result<()> {
    Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
}

/// Removes what killed writers left in a run directory and its checkpoints: hidden temporary
/// files and temporary, replaced and half-deleted directories of other processes. Checkpoints themselves are
/// untouched.
pub fn remove_leftovers(run_dir: &Path) -> Result<()> {
    let ours = std::process::id().to_string();
    for dir in [run_dir.to_path_buf(), run_dir.join(CHECKPOINTS_DIR)] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let leftover = name.starts_with('.')
                && [TMP_MARK, OLD_MARK, DELETING_MARK].iter().any(|mark| {
                    name.rsplit_once(mark)
                        .is_some_and(|(_, pid)| pid != ours && pid.parse::<u32>().is_ok())
                });
            if !leftover {
                continue;
            }
            // Directories from checkpoint writes; plain files from atomic file writes
            // (`.finetune_config.json.tmp-PID`, …).
            let path = entry.path();
            if path.is_dir() {
                std::fs::remove_dir_all(&path).map_err(io_err(&path))?;
            } else {
                std::fs::remove_file(&path).map_err(io_err(&path))?;
            }
        }
    }
    Ok(())
}

/// Checkpoint directories of a run, oldest first.
pub fn list_checkpoints(run_dir: &Path) -> Vec<PathBuf> {
    let dir = run_dir.join(CHECKPOINTS_DIR);
    let mut found: Vec<(u64, PathBuf)> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step = name.strip_prefix("step-")?.parse().ok()?;
            Some((step, e.path()))
        })
        .collect();
    found.sort();
    found.into_iter().map(|(_, p)| p).collect()
}

/// The newest checkpoint of a run that reads back whole (what `--resume` should continue from
/// after a crash), or `None` when there is none.
pub fn latest_checkpoint(run_dir: &Path) -> Option<PathBuf> {
    list_checkpoints(run_dir)
        .into_iter()
        .rev()
        .find(|dir| read_checkpoint(dir).is_ok())
}

/// What `--resume PATH` continues: `PATH` itself when it is a checkpoint, or the newest whole
/// checkpoint of the run directory `PATH`.
pub fn checkpoint_to_resume(path: &Path) -> Result<PathBuf> {
    if path.join(CHECKPOINTS_DIR).is_dir() && !path.join(STATE_FILE).is_file() {
        return latest_checkpoint(path).ok_or_else(|| FinetuneError::Checkpoint {
            path: path.to_path_buf(),
            reason: "this run has no checkpoint that reads back whole".into(),
        });
    }
    read_checkpoint(path)?;
    Ok(path.to_path_buf())
}

/// Removes all but the newest `keep` checkpoints. Each is first renamed out of the way, so a
/// process killed while deleting leaves a hidden leftover, never a half-deleted checkpoint.
pub(crate) fn prune_checkpoints(run_dir: &Path, keep: usize) -> Result<()> {
    let all = list_checkpoints(run_dir);
    let excess = all.len().saturating_sub(keep);
    for old in &all[..excess] {
        let name = old
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let doomed = old.with_file_name(format!(".{name}{DELETING_MARK}{}", std::process::id()));
        std::fs::rename(old, &doomed).map_err(io_err(old))?;
        std::fs::remove_dir_all(&doomed).map_err(io_err(&doomed))?;
    }
    Ok(())
}

/// Reads the configuration and position saved in a checkpoint.
pub fn read_checkpoint(dir: &Path) -> Result<(FinetuneConfig, TrainState)> {
    for f in [
        CONFIG_FILE,
        STATE_FILE,
        OPTIMIZER_FILE,
        "adapter_model.safetensors",
    ] {
        if !dir.join(f).is_file() {
            return Err(FinetuneError::Checkpoint {
                path: dir.to_path_buf(),
                reason: format!("not a checkpoint: {f} is missing"),
            });
        }
    }
    let config: FinetuneConfig = read_json(&dir.join(CONFIG_FILE))?;
    config.validate()?;
    Ok((config, read_json(&dir.join(STATE_FILE))?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A SIGKILL inside an atomic file write leaves `.NAME.tmp-PID` (a file); inside a checkpoint
    /// write, a hidden directory. The next start removes both, and nothing of its own or the
    /// user's.
    #[test]
    fn leftovers_of_killed_writers_are_removed_files_included() {
        let run = tempfile::tempdir().unwrap();
        let ckpts = run.path().join(CHECKPOINTS_DIR);
        std::fs::create_dir_all(ckpts.join("step-000004")).unwrap();
        let dead = u32::MAX - 1;
        let ours = std::process::id();
        let tmp_file = run.path().join(format!(".finetune_config.json.tmp-{dead}"));
        std::fs::write(&tmp_file, b"{").unwrap();
        let tmp_dir = ckpts.join(format!(".step-000008{TMP_MARK}{dead}"));
        std::fs::create_dir_all(&tmp_dir).unwrap();
        std::fs::write(tmp_dir.join("adapter_model.safetensors"), b"x").unwrap();
        let deleting = ckpts.join(format!(".step-000002{DELETING_MARK}{dead}"));
        std::fs::create_dir_all(&deleting).unwrap();
        let own = run.path().join(format!(".metrics.jsonl.tmp-{ours}"));
        std::fs::write(&own, b"").unwrap();
        let users = run.path().join(".notes.tmp-draft");
        std::fs::write(&users, b"mine").unwrap();

        remove_leftovers(run.path()).unwrap();
        assert!(!tmp_file.exists() && !tmp_dir.exists() && !deleting.exists());
        assert!(own.exists(), "this process's own temporary was removed");
        assert!(
            users.exists(),
            "a file that is no writer's temporary was removed"
        );
        assert!(ckpts.join("step-000004").is_dir());
    }
}
