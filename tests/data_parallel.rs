//! Data-parallel training through the public API: two devices give the adapter one device gives
//! on the combined batch.
//!
//! burn 0.22.1 has collectives only between CUDA devices (cubecl's NCCL transport); this machine
//! has none, so flex named twice stands in for two devices: two replicas of the model, each
//! micro-batch on one of them, gradients summed on the first. The collective path is the same
//! code with `all_reduce` in place of the copy-and-add.

use std::path::{Path, PathBuf};

use medify_qlora::training::{DeviceSpec, Method};

use crate::common::f32_tensor;
use crate::runs::step_metrics;
use medify_qlora::{Finetune, FinetuneConfig, ModelSource};

fn tiny() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/tiny_models/llama")
}

fn out_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("medify-dp-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// The two devices the tests train on: `MEDIFY_DP_DEVICES` (e.g. `wgpu:0,wgpu:1` or
/// `cuda:0,cuda:1` on a machine with two GPUs), else flex named twice.
fn two_devices() -> Vec<DeviceSpec> {
    match std::env::var("MEDIFY_DP_DEVICES") {
        Ok(list) => DeviceSpec::parse_list(&list).expect("MEDIFY_DP_DEVICES"),
        Err(_) => vec![DeviceSpec::Flex, DeviceSpec::Flex],
    }
}

/// The first of [`two_devices`] alone.
fn one_device() -> Vec<DeviceSpec> {
    two_devices()[..1].to_vec()
}

fn config(devices: Vec<DeviceSpec>) -> FinetuneConfig {
    FinetuneConfig {
        lora_r: 8,
        lora_alpha: 16.0,
        // Dropout on: a micro-batch must draw the same masks on either device.
        lora_dropout: 0.1,
        learning_rate: 1e-2,
        warmup_ratio: 0.0,
        max_grad_norm: 1.0,
        batch_size: 2,
        grad_accum: 3,
        max_len: 64,
        max_steps: Some(3),
        save_every: 0,
        validation_fraction: 0.15,
        devices,
        ..FinetuneConfig::default()
    }
}

fn train(name: &str, config: FinetuneConfig) -> PathBuf {
    let out = out_dir(name);
    Finetune::new(config)
        .model(ModelSource::new(tiny(), None).unwrap())
        .output(&out)
        .run()
        .unwrap();
    out
}

/// Every tensor of a PEFT adapter file, by name, as f32.
fn adapter(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let bytes = std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names = st.names();
    names.sort();
    names
        .into_iter()
        .map(|name| (name.to_string(), f32_tensor(&st, name)))
        .collect()
}

#[test]
fn two_devices_train_the_adapter_one_device_trains_on_the_whole_batch() {
    let one = train("one", config(one_device()));
    let two = train("two", config(two_devices()));
    // lora_B starts at zero: assert_same_adapter also checks the adapters trained.
    assert_same_adapter(&one, &two);

    // Each step's metrics say what each device did; together they are the step's tokens.
    let steps = step_metrics(&two);
    assert_eq!(steps.len(), 3);
    for s in steps {
        let devices = s
            .devices
            .as_ref()
            .expect("a data-parallel step lists its devices");
        assert_eq!(devices.len(), 2);
        assert_eq!(
            devices.iter().map(|d| d.micro_batches).collect::<Vec<_>>(),
            vec![2, 1]
        );
        assert_eq!(
            devices.iter().map(|d| d.tokens as u64).sum::<u64>(),
            s.tokens
        );
        let names: Vec<String> = two_devices().iter().map(ToString::to_string).collect();
        assert_eq!(
            devices.iter().map(|d| d.device.clone()).collect::<Vec<_>>(),
            names
        );
        assert!(devices.iter().all(|d| d.seconds > 0.0));
    }
    // One device listed is a one-device run: no per-device shares.
    assert!(step_metrics(&one).iter().all(|s| s.devices.is_none()));
    let _ = std::fs::remove_dir_all(one);
    let _ = std::fs::remove_dir_all(two);
}

/// Asserts two run directories hold the same adapter (to 1e-5) and that it trained.
fn assert_same_adapter(one: &Path, two: &Path) {
    let (a, b) = (adapter(one), adapter(two));
    assert_eq!(a.len(), b.len());
    let mut moved = 0f32;
    for ((name, x), (name_b, y)) in a.iter().zip(&b) {
        assert_eq!(name, name_b);
        for (p, q) in x.iter().zip(y) {
            assert!((p - q).abs() <= 1e-5, "{name}: {p} vs {q}");
            moved = moved.max(p.abs());
        }
    }
    assert!(moved > 1e-3);
}

#[test]
fn preference_methods_train_the_same_adapter_on_two_devices() {
    // DPO with the reference model (copied to every device) and with the precomputed table,
    // IPO, and the reference-free ORPO and SimPO.
    for (name, method, precompute) in [
        ("dpo", Method::Dpo, false),
        ("dpo-table", Method::Dpo, true),
        ("ipo", Method::Ipo, false),
        ("orpo", Method::Orpo, false),
        ("simpo", Method::Simpo, false),
    ] {
        let config = |devices| FinetuneConfig {
            method,
            precompute_ref_logps: precompute,
            batch_size: 2,
            grad_accum: 2,
            max_len: 128,
            max_steps: Some(2),
            ..config(devices)
        };
        let one = train(&format!("{name}-one"), config(one_device()));
        let two = train(&format!("{name}-two"), config(two_devices()));
        assert_same_adapter(&one, &two);
        assert!(
            step_metrics(&two)
                .iter()
                .all(|s| s.devices.as_ref().map(Vec::len) == Some(2) && s.preference.is_some())
        );
        let _ = std::fs::remove_dir_all(one);
        let _ = std::fs::remove_dir_all(two);
    }
}

#[test]
fn a_data_parallel_run_resumes_exactly_and_may_change_its_devices() {
    let config = |steps| FinetuneConfig {
        max_steps: Some(steps),
        save_every: 2,
        ..config(two_devices())
    };
    let whole = train("whole", config(4));
    // Stopped after its step-2 checkpoint, then resumed on two devices, and on one.
    let cut = train("cut", config(2));
    let checkpoint = cut.join("checkpoints/step-000002");
    for devices in [two_devices(), one_device()] {
        let resumed = out_dir("resumed");
        copy_dir(&cut, &resumed);
        Finetune::resume(resumed.join("checkpoints/step-000002"))
            .unwrap()
            .settings(|c| {
                c.max_steps = Some(4);
                c.devices = devices.clone();
            })
            .run()
            .unwrap();
        assert_same_adapter(&whole, &resumed);
        let _ = std::fs::remove_dir_all(resumed);
    }
    assert!(checkpoint.is_dir());
    let _ = std::fs::remove_dir_all(whole);
    let _ = std::fs::remove_dir_all(cut);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn more_devices_than_micro_batches_is_refused_naming_the_setting() {
    let mut c = config(vec![DeviceSpec::Flex, DeviceSpec::Flex]);
    c.grad_accum = 1;
    let err = Finetune::new(c)
        .model(ModelSource::new(tiny(), None).unwrap())
        .output(out_dir("refused"))
        .run()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("grad_accum") && err.contains("2 devices"),
        "{err}"
    );
}

/// What burn 0.22.1's collectives do on the devices CI has (flex, and wgpu on Mesa's software
/// Vulkan driver): they refuse, which is why the data-parallel path sums through the first
/// device there. When a burn upgrade brings collectives to either, this fails, and
/// `DeviceSpec::has_collectives` should say so.
#[test]
fn burn_collectives_refuse_flex_and_wgpu() {
    use burn::tensor::distributed::{
        DistributedConfig, DistributedContext, ReduceOperation, all_reduce,
    };
    use burn::tensor::{Device, DeviceKind, Tensor};
    for (device, expected) in [
        (
            Device::flex(),
            "Distributed operations are not supported for device Flex",
        ),
        (
            Device::wgpu(DeviceKind::DefaultDevice),
            "which has no transport between its devices",
        ),
    ] {
        let result = std::panic::catch_unwind(|| {
            let devices = vec![device.clone(), device.clone()];
            let _context = DistributedContext::init(
                devices.clone(),
                DistributedConfig {
                    all_reduce_op: ReduceOperation::Sum,
                },
            );
            let t = Tensor::<1>::ones([4], &device);
            all_reduce(t, ReduceOperation::Sum, devices)
                .resolve()
                .try_into_data()
                .map_err(|e| e.to_string())
        });
        let message = match result {
            Ok(Ok(data)) => panic!("{device:?}: all_reduce returned {data:?}"),
            Ok(Err(error)) => error,
            Err(panic) => panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default(),
        };
        assert!(message.contains(expected), "{device:?}: {message}");
    }
}
