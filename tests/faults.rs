//! Faults a training run must survive: SIGKILL at any moment (mid-step, mid-checkpoint,
//! mid-pruning) and a full disk.
//!
//! The kill test runs training in a child process (this test binary again, its ignored
//! `training_child` test), kills it with SIGKILL at pseudo-random moments over and over, each time
//! checks that the newest checkpoint reads back whole and resumes from it, and finally compares
//! the finished adapter byte for byte with an uninterrupted run's.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use burn::tensor::Device;
use medify_qlora::data::{ReadOptions, prepare, read_records};
use medify_qlora::training::checkpoints::{latest_checkpoint, list_checkpoints, read_checkpoint};
use medify_qlora::{BaseModel, FinetuneConfig, TrainData, Trainer, TrainerOptions, load_base};

/// The child reads its run directory from here.
const RUN_DIR_VAR: &str = "MEDIFY_FAULT_RUN_DIR";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn config() -> FinetuneConfig {
    FinetuneConfig {
        lora_r: 8,
        lora_alpha: 16.0,
        learning_rate: 1e-2,
        warmup_ratio: 0.0,
        batch_size: 4,
        grad_accum: 1,
        max_len: 64,
        max_steps: Some(12),
        // A checkpoint after every step and an evaluation (with a new best/) every other one:
        // most moments of the run are inside some write.
        save_every: 1,
        eval_every: 2,
        keep_last: 2,
        validation_fraction: 0.1,
        max_eval_records: 4,
        ..FinetuneConfig::default()
    }
}

/// The tiny Llama as `config` holds it, on an autodiff CPU device.
fn tiny_base(config: &FinetuneConfig) -> medify_qlora::Result<BaseModel> {
    load_base(
        &root().join("fixtures/tiny_models/llama"),
        &Device::flex().autodiff(),
        config.quantization.linear_quant()?,
        None,
    )
}

/// The committed medical Q&A set, prepared for `base` as `config` says.
fn medical_qa(base: &BaseModel, config: &FinetuneConfig) -> medify_qlora::Result<TrainData> {
    let records = read_records(
        &root().join("fixtures/medical_qa/medical_qa.jsonl"),
        &ReadOptions::default(),
    )?
    .records;
    let prepared = prepare(records, &base.encoder, &config.dataset_config())?;
    Ok(TrainData::from_prepared(
        &prepared,
        config,
        base.encoder.pad_id(),
    ))
}

/// One life of the training process: a fresh run, or the continuation of the newest whole
/// checkpoint when there is one.
fn train(run_dir: &Path) -> medify_qlora::Result<()> {
    let config = config();
    let base = tiny_base(&config)?;
    let data = medical_qa(&base, &config)?;
    let mut options = TrainerOptions::new(run_dir);
    options.overwrite = true;
    let mut trainer = match latest_checkpoint(run_dir) {
        Some(ckpt) => Trainer::resume(&ckpt, base.model, data, options)?,
        None => Trainer::new(config, base.model, data, options)?,
    };
    trainer.train()?;
    Ok(())
}

#[test]
#[ignore = "the child process of sigkill_at_any_moment_leaves_a_checkpoint_that_resumes_exactly"]
fn training_child() {
    if let Some(dir) = std::env::var_os(RUN_DIR_VAR)
        && let Err(e) = train(Path::new(&dir))
    {
        eprintln!("training child: {e}");
        std::process::exit(2);
    }
}

/// `training_child`'s name as the test harness lists it: its path below the test binary's
/// crate root (`faults::training_child` in `tests/main.rs`).
fn child_test_name() -> String {
    match module_path!().split_once("::") {
        Some((_, module)) => format!("{module}::training_child"),
        None => "training_child".to_string(),
    }
}

fn spawn(run_dir: &Path) -> Child {
    Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            &child_test_name(),
            "--ignored",
            "--test-threads",
            "1",
        ])
        .env(RUN_DIR_VAR, run_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the training child")
}

fn adapter(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("adapter_model.safetensors"))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

#[test]
fn sigkill_at_any_moment_leaves_a_checkpoint_that_resumes_exactly() {
    let base = tempfile::tempdir().unwrap();

    // The uninterrupted run, in its own process like the others.
    let reference = base.path().join("reference");
    let started = Instant::now();
    let status = spawn(&reference).wait().unwrap();
    let whole_run = started.elapsed();
    assert!(status.success(), "the uninterrupted run failed");
    let want = adapter(&reference);

    // Kill moments spread over a whole run's length (startup included), from a fixed seed.
    let run = base.path().join("killed");
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let (mut kills, mut finished, mut resumed_steps, mut mid_write) = (0, 0, Vec::new(), 0);
    let mut had_best = false;
    while kills < 24 {
        let delay = whole_run.mul_f64((next() % 1000) as f64 / 1000.0);
        let mut child = spawn(&run);
        std::thread::sleep(delay);
        if let Some(status) = child.try_wait().unwrap() {
            // This life reached the end before its kill: the run must equal the reference.
            assert!(status.success(), "a resumed run failed");
            assert!(
                adapter(&run) == want,
                "a resumed adapter differs from the uninterrupted run's"
            );
            finished += 1;
            had_best = false;
            std::fs::remove_dir_all(&run).unwrap();
            continue;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        // A hidden directory left behind means the kill landed inside a checkpoint write.
        let hidden = |d: &Path| {
            std::fs::read_dir(d)
                .into_iter()
                .flatten()
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with('.'))
        };
        if hidden(&run) || hidden(&run.join("checkpoints")) {
            mid_write += 1;
        }
        // best/ is replaced in one exchange: once written it is always there, whole.
        let best = run.join("best");
        if best.exists() {
            assert!(
                best.join("adapter_model.safetensors").is_file()
                    && best.join("adapter_config.json").is_file(),
                "best/ is incomplete"
            );
            had_best = true;
        } else {
            assert!(!had_best, "best/ disappeared");
        }
        // Whatever the moment, the newest checkpoint on disk is whole.
        if let Some(newest) = list_checkpoints(&run).last() {
            let latest = latest_checkpoint(&run).expect("a checkpoint that reads back");
            assert_eq!(&latest, newest, "the newest checkpoint is damaged");
            let (_, state) = read_checkpoint(&latest).unwrap();
            resumed_steps.push(state.step);
        }
    }
    // A kill inside the atomic write of a file (not a directory) leaves `.NAME.tmp-PID`; random
    // kills land there only now and then, so leave exactly that behind, as a process that no
    // longer exists would, before the last life (which must remove it, checked below).
    std::fs::create_dir_all(&run).unwrap();
    for name in ["finetune_config.json", "metrics.jsonl"] {
        std::fs::write(run.join(format!(".{name}.tmp-{}", u32::MAX - 1)), b"{").unwrap();
    }
    // The last life runs to the end.
    let status = spawn(&run).wait().unwrap();
    assert!(status.success(), "the resumed run failed");
    eprintln!(
        "{kills} kills ({mid_write} inside a write), {finished} runs finished between them; \
         newest checkpoint after each kill: {resumed_steps:?}"
    );
    assert!(
        resumed_steps.iter().filter(|&&s| s > 0).count() >= 8,
        "too few kills landed after a checkpoint"
    );
    assert!(
        adapter(&run) == want,
        "the resumed adapter differs from the uninterrupted run's"
    );
    let (_, state) = read_checkpoint(&latest_checkpoint(&run).unwrap()).unwrap();
    assert_eq!(state.step, 12);
    // Nothing a killed writer left behind survives the next start.
    for dir in [run.clone(), run.join("checkpoints")] {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            assert!(
                !name.starts_with('.'),
                "leftover {name} in {}",
                dir.display()
            );
        }
    }
}

/// A small tmpfs, mounted for the test (root only); unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, bytes: u64) -> Result<Tmpfs, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root".into());
        }
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

#[test]
fn a_full_disk_is_a_clear_error_and_keeps_the_previous_checkpoint() {
    let base = tempfile::tempdir().unwrap();
    let mount = base.path().join("small-disk");
    let _disk = match Tmpfs::mount(&mount, 8 << 20) {
        Ok(t) => t,
        Err(why) => {
            eprintln!("skipped: a full-disk test needs to mount a tmpfs ({why})");
            return;
        }
    };
    let run = mount.join("run");
    let config = FinetuneConfig {
        max_steps: Some(2),
        eval_every: 0,
        save_every: 2,
        ..config()
    };
    let model = || tiny_base(&config).unwrap().model;
    let first = tiny_base(&config).unwrap();
    let data = medical_qa(&first, &config).unwrap();
    let mut trainer = Trainer::new(
        config.clone(),
        first.model,
        data.clone(),
        TrainerOptions::new(&run),
    )
    .unwrap();
    trainer.train().unwrap();
    let ckpt = latest_checkpoint(&run).unwrap();
    let before = snapshot(&ckpt);

    // Fill the disk, leaving room for small files but not for another checkpoint.
    let ballast = mount.join("ballast");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&ballast).unwrap();
        let block = vec![0u8; 4096];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }
    let len = std::fs::metadata(&ballast).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&ballast)
        .unwrap()
        .set_len(len.saturating_sub(24 << 10))
        .unwrap();

    let longer = FinetuneConfig {
        max_steps: Some(4),
        save_every: 1,
        ..config.clone()
    };
    let err = Trainer::resume_with(
        &ckpt,
        &longer,
        model(),
        data.clone(),
        TrainerOptions::new(&run),
    )
    .and_then(|mut t| t.train().map(|_| ()))
    .expect_err("training on a full disk must fail");
    let message = err.to_string();
    eprintln!("full disk: {message}");
    assert!(
        message.contains("No space left on device") && message.contains(&*run.to_string_lossy()),
        "the error should name the file and the cause: {message}"
    );
    // The checkpoint it resumed from is as it was, and still resumes.
    assert_eq!(snapshot(&ckpt), before, "the previous checkpoint changed");
    assert_eq!(latest_checkpoint(&run).as_ref(), Some(&ckpt));
    read_checkpoint(&ckpt).unwrap();
    // Once there is room again, the run continues from it.
    std::fs::remove_file(&ballast).unwrap();
    let mut again =
        Trainer::resume_with(&ckpt, &longer, model(), data, TrainerOptions::new(&run)).unwrap();
    assert_eq!(again.train().unwrap().steps, 4);
}
