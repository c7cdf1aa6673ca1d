//! PagedAdamW against a straightforward f64 AdamW, 8-bit against 32-bit, exact resume,
//! non-finite gradients, state files, and paging on wgpu.

use burn::module::{Module, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};
use medify_optim::{AdamWConfig, NonFinite, OptimError, PagedAdamW, ParamGroup, StateBits};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[derive(Module, Debug)]
struct Toy {
    weight: Param<Tensor<2>>,
    bias: Param<Tensor<1>>,
    big: Param<Tensor<2>>,
}

const SHAPES: [&[usize]; 3] = [&[8, 16], &[16], &[64, 80]];

fn normal(rng: &mut ChaCha8Rng, n: usize, scale: f64) -> Vec<f64> {
    (0..n)
        .map(|_| {
            // Box-Muller: enough for test data.
            let u1: f64 = rng.random::<f64>().max(1e-12);
            let u2: f64 = rng.random();
            scale * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
        })
        .collect()
}

fn tensor<const D: usize>(values: &[f64], shape: &[usize], device: &Device) -> Tensor<D> {
    let v: Vec<f32> = values.iter().map(|x| *x as f32).collect();
    Tensor::<1>::from_data(TensorData::new(v, [values.len()]), device)
        .reshape::<D, _>(<[usize; D]>::try_from(shape).expect("shape rank"))
}

fn values<const D: usize>(t: &Tensor<D>) -> Vec<f32> {
    t.to_data().convert::<f32>().try_into_vec::<f32>().unwrap()
}

fn toy(seed: u64, device: &Device) -> (Toy, Vec<Vec<f64>>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let init: Vec<Vec<f64>> = SHAPES
        .iter()
        .map(|s| normal(&mut rng, s.iter().product(), 1.0))
        .collect();
    // Start from the f32-rounded values so the reference and the optimizer agree at step 0.
    let init: Vec<Vec<f64>> = init
        .into_iter()
        .map(|v| v.into_iter().map(|x| x as f32 as f64).collect())
        .collect();
    let model = Toy {
        weight: Param::from_tensor(tensor(&init[0], SHAPES[0], device)),
        bias: Param::from_tensor(tensor(&init[1], SHAPES[1], device)),
        big: Param::from_tensor(tensor(&init[2], SHAPES[2], device)),
    };
    (model, init)
}

fn grads_for(model: &Toy, g: &[Vec<f64>], device: &Device) -> GradientsParams {
    let mut grads = GradientsParams::new();
    grads.register(model.weight.id, tensor::<2>(&g[0], SHAPES[0], device));
    grads.register(model.bias.id, tensor::<1>(&g[1], SHAPES[1], device));
    grads.register(model.big.id, tensor::<2>(&g[2], SHAPES[2], device));
    grads
}

fn random_grads(rng: &mut ChaCha8Rng, step: usize) -> Vec<Vec<f64>> {
    // Scales change over time so that clipping is sometimes active and sometimes not.
    let scale = if step.is_multiple_of(3) { 0.5 } else { 0.002 };
    SHAPES
        .iter()
        .map(|s| {
            normal(rng, s.iter().product(), scale)
                .into_iter()
                .map(|x| x as f32 as f64)
                .collect()
        })
        .collect()
}

/// Textbook AdamW (moments in f64, parameters rounded to f32): bias-corrected moments, eps outside the root, decoupled decay after
/// the update, global-norm clipping, per-group lr factor and decay.
struct Reference {
    p: Vec<Vec<f64>>,
    m: Vec<Vec<f64>>,
    v: Vec<Vec<f64>>,
    t: i32,
}

impl Reference {
    fn step(&mut self, g: &[Vec<f64>], lr: f64, clip: Option<f64>, groups: &[(f64, f64)]) {
        let (b1, b2, eps) = (0.9, 0.999, 1e-8);
        let norm = g.iter().flatten().map(|x| x * x).sum::<f64>().sqrt();
        let scale = clip.map(|c| (c / (norm + 1e-6)).min(1.0)).unwrap_or(1.0);
        self.t += 1;
        for (i, gi) in g.iter().enumerate() {
            let (lr_scale, wd) = groups[i];
            let lr = lr * lr_scale;
            for (j, &g) in gi.iter().enumerate() {
                let gj = g * scale;
                self.m[i][j] = b1 * self.m[i][j] + (1.0 - b1) * gj;
                self.v[i][j] = b2 * self.v[i][j] + (1.0 - b2) * gj * gj;
                let mhat = self.m[i][j] / (1.0 - b1.powi(self.t));
                let vhat = self.v[i][j] / (1.0 - b2.powi(self.t));
                // Parameters are f32, as in any f32 model: round after each change.
                let p = (self.p[i][j] - lr * mhat / (vhat.sqrt() + eps)) as f32;
                self.p[i][j] = (p * (1.0 - lr * wd) as f32) as f64;
            }
        }
    }
}

fn params(model: &Toy) -> Vec<Vec<f32>> {
    vec![
        values(&model.weight.val()),
        values(&model.bias.val()),
        values(&model.big.val()),
    ]
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f64>]) -> f64 {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (*x as f64 - y).abs())
        .fold(0.0, f64::max)
}

#[test]
fn thirty_two_bit_matches_a_reference_adamw_over_100_steps() {
    let device = Device::flex();
    for (seed, clip, grouped) in [(1u64, None, false), (2, Some(0.3), true)] {
        let (mut model, init) = toy(seed, &device);
        let mut config = AdamWConfig::paged_adamw_32bit()
            .with_weight_decay(0.01)
            .with_max_grad_norm(clip);
        let mut groups = vec![(1.0, 0.01); 3];
        if grouped {
            config = config.with_group(
                ParamGroup::new("no-decay bias", "^bias$")
                    .with_weight_decay(0.0)
                    .with_lr_scale(0.5),
            );
            groups[1] = (0.5, 0.0);
        }
        let mut opt = PagedAdamW::new(config).unwrap();
        let zeros = |v: &Vec<Vec<f64>>| v.iter().map(|x| vec![0.0; x.len()]).collect::<Vec<_>>();
        let mut reference = Reference {
            m: zeros(&init),
            v: zeros(&init),
            p: init,
            t: 0,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(seed + 100);
        let mut clipped = 0;
        for step in 0..100 {
            let g = random_grads(&mut rng, step);
            let lr = 1e-3 * (1.0 + (step % 7) as f64);
            let grads = grads_for(&model, &g, &device);
            let (next, report) = opt.step(lr, model, grads).unwrap();
            model = next;
            assert!(report.applied && report.params_updated == 3);
            clipped += (report.clip_scale < 1.0) as usize;
            reference.step(&g, lr, clip, &groups);
        }
        if clip.is_some() {
            assert!(
                clipped > 10 && clipped < 90,
                "clipping active in {clipped} of 100 steps"
            );
        }
        let diff = max_diff(&params(&model), &reference.p);
        assert!(diff < 1e-6, "seed {seed}: max |p - reference| = {diff}");
        assert_eq!(opt.steps(), 100);
        assert_eq!(opt.state_paths(), ["bias", "big", "weight"]);
    }
}

/// Least squares `y = x·Wᵀ + b` with a linear model big enough for 8-bit state.
struct Regression {
    x: Tensor<2>,
    y: Tensor<2>,
}

#[derive(Module, Debug)]
struct Linear {
    w: Param<Tensor<2>>,
    b: Param<Tensor<1>>,
}

impl Regression {
    fn new(device: &Device) -> (Self, Linear) {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let (n, fin, fout) = (512, 96, 64);
        let x = tensor::<2>(&normal(&mut rng, n * fin, 1.0), &[n, fin], device);
        let w_true = tensor::<2>(&normal(&mut rng, fout * fin, 0.3), &[fout, fin], device);
        let noise = tensor::<2>(&normal(&mut rng, n * fout, 0.1), &[n, fout], device);
        let y = x.clone().matmul(w_true.transpose()) + noise;
        let model = Linear {
            w: Param::from_tensor(tensor(
                &normal(&mut rng, fout * fin, 0.1),
                &[fout, fin],
                device,
            )),
            b: Param::from_tensor(Tensor::zeros([fout], device)),
        };
        (Regression { x, y }, model)
    }

    fn loss(&self, m: &Linear) -> Tensor<1> {
        let pred = self.x.clone().matmul(m.w.val().transpose()) + m.b.val().unsqueeze_dim(0);
        (pred - self.y.clone()).square().mean()
    }

    fn train(&self, model: Linear, opt: &mut PagedAdamW, steps: usize) -> (Linear, Vec<f64>) {
        let mut model = model;
        let mut losses = Vec::new();
        for _ in 0..steps {
            let loss = self.loss(&model);
            losses.push(loss.clone().into_scalar::<f64>());
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = opt.step(1e-2, model, grads).unwrap().0;
        }
        losses.push(self.loss(&model).into_scalar::<f64>());
        (model, losses)
    }
}

#[test]
fn eight_bit_follows_the_32_bit_trajectory() {
    const STEPS: usize = 400;
    let device = Device::flex().autodiff();
    let (problem, model) = Regression::new(&device);
    let mut runs = Vec::new();
    for bits in [StateBits::ThirtyTwo, StateBits::Eight] {
        let mut opt = PagedAdamW::new(AdamWConfig::default().with_state_bits(bits)).unwrap();
        let (_, losses) = problem.train(model.clone(), &mut opt, STEPS);
        let mem = opt.memory();
        runs.push((losses, mem));
    }
    let (l32, m32) = &runs[0];
    let (l8, m8) = &runs[1];
    assert!(
        l32[STEPS] < 0.05 * l32[0],
        "32-bit converges: {} -> {}",
        l32[0],
        l32[STEPS]
    );
    let worst = l32
        .iter()
        .zip(l8)
        .map(|(a, b)| (a - b).abs() / a)
        .fold(0.0, f64::max);
    let end = (l8[STEPS] - l32[STEPS]).abs() / l32[STEPS];
    eprintln!(
        "8-bit vs 32-bit: worst relative loss gap {worst:.4}, final {end:.4} ({} vs {})",
        l8[STEPS], l32[STEPS]
    );
    assert!(end < 0.02, "final losses {} vs {}", l8[STEPS], l32[STEPS]);
    assert!(worst < 0.15, "trajectories diverge by {worst}");
    // w (6144 values) is 8-bit; b (64 values) is under min_8bit_size and stays f32.
    assert_eq!(m32.state_bytes, 8 * (6144 + 64));
    assert_eq!(m8.state_bytes, 2 * (6144 + 4 * 24) + 8 * 64);
    assert!(m8.bytes_per_param() < 2.2 && m32.bytes_per_param() == 8.0);
}

fn assert_bit_equal(a: &Linear, b: &Linear) {
    {
        let (x, y) = (a.w.val(), b.w.val());
        let (x, y) = (values(&x), values(&y));
        assert!(
            x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()),
            "weights differ"
        );
    }
    let (x, y) = (values(&a.b.val()), values(&b.b.val()));
    assert!(
        x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()),
        "biases differ"
    );
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("medify-optim-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn resume_from_a_saved_state_is_bit_exact() {
    let device = Device::flex().autodiff();
    let (problem, model) = Regression::new(&device);
    let dir = temp_dir("resume");
    for bits in [StateBits::ThirtyTwo, StateBits::Eight] {
        let config = AdamWConfig::default()
            .with_state_bits(bits)
            .with_max_grad_norm(Some(1.0));
        let mut straight = PagedAdamW::new(config.clone()).unwrap();
        let (full, _) = problem.train(model.clone(), &mut straight, 20);

        let mut first = PagedAdamW::new(config.clone()).unwrap();
        let (half, _) = problem.train(model.clone(), &mut first, 10);
        let file = dir.join(format!("optimizer-{bits}.safetensors"));
        first.save(&file, false).unwrap();
        drop(first);
        let mut resumed = PagedAdamW::new(config).unwrap();
        resumed.load_state(&file).unwrap();
        assert_eq!(resumed.steps(), 10);
        let (done, _) = problem.train(half, &mut resumed, 10);
        assert_bit_equal(&full, &done);
        assert_eq!(resumed.steps(), straight.steps());
    }
}

#[test]
fn state_files_refuse_overwrite_and_mismatches() {
    let device = Device::flex().autodiff();
    let (problem, model) = Regression::new(&device);
    let dir = temp_dir("files");
    let mut opt = PagedAdamW::new(AdamWConfig::paged_adamw_8bit()).unwrap();
    let _ = problem.train(model, &mut opt, 2);
    let file = dir.join("opt.safetensors");
    opt.save(&file, false).unwrap();
    let e = opt.save(&file, false).unwrap_err();
    assert!(matches!(e, OptimError::WouldOverwrite(_)), "{e}");
    opt.save(&file, true).unwrap();

    let mut other = PagedAdamW::new(AdamWConfig::paged_adamw_32bit()).unwrap();
    let e = other.load_state(&file).unwrap_err().to_string();
    assert!(
        e.contains("opt.safetensors") && e.contains("8bit") && e.contains("32bit"),
        "{e}"
    );

    let junk = dir.join("junk.safetensors");
    std::fs::write(&junk, b"not a tensor file").unwrap();
    let e = other.load_state(&junk).unwrap_err().to_string();
    assert!(e.contains("junk.safetensors"), "{e}");
    let e = other
        .load_state(&dir.join("missing"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing"), "{e}");

    // State that does not fit the parameter it is keyed to is refused before any change.
    let mut loaded = PagedAdamW::new(AdamWConfig::paged_adamw_8bit()).unwrap();
    loaded.load_state(&file).unwrap();
    let small = Linear {
        w: Param::from_tensor(Tensor::zeros([4, 4], &device).require_grad()),
        b: Param::from_tensor(Tensor::zeros([4], &device).require_grad()),
    };
    // `check_module` finds the misfit without taking the module, naming the parameter.
    let e = loaded.check_module(&small).unwrap_err().to_string();
    assert!(e.contains("`w`") && e.contains("elements"), "{e}");
    let loss = small.w.val().sum() + small.b.val().sum();
    let grads = GradientsParams::from_grads(loss.backward(), &small);
    let e = loaded.step(1e-3, small, grads).unwrap_err().to_string();
    assert!(e.contains("elements"), "{e}");
    let (_, fitting) = Regression::new(&device);
    loaded.check_module(&fitting).unwrap();
}

#[test]
fn non_finite_gradients_skip_or_zero_without_poisoning_state() {
    let device = Device::flex();
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let g1 = random_grads(&mut rng, 0);
    let mut g2 = random_grads(&mut rng, 1);
    let mut g2_zeroed = g2.clone();
    g2[2][5] = f64::NAN;
    g2[0][3] = f64::INFINITY;
    g2_zeroed[2][5] = 0.0;
    g2_zeroed[0][3] = 0.0;

    // Skip: the step changes nothing and is counted.
    let (model, _) = toy(3, &device);
    let mut opt = PagedAdamW::new(AdamWConfig::default()).unwrap();
    let grads = grads_for(&model, &g1, &device);
    let (model, _) = opt.step(1e-3, model, grads).unwrap();
    let before = params(&model);
    let grads = grads_for(&model, &g2, &device);
    let (model, report) = opt.step(1e-3, model, grads).unwrap();
    assert!(!report.applied && report.non_finite == 2 && report.skipped == 1);
    assert_eq!(params(&model), before);
    assert_eq!((opt.steps(), opt.skipped_steps()), (1, 1));

    // Zero: identical to a step whose bad elements were 0, in 32 and 8 bits.
    for bits in [StateBits::ThirtyTwo, StateBits::Eight] {
        let run = |grads2: &[Vec<f64>], policy| {
            let (model, _) = toy(3, &device);
            let config = AdamWConfig::default()
                .with_state_bits(bits)
                .with_non_finite(policy);
            let mut opt = PagedAdamW::new(config).unwrap();
            let mut model = model;
            for g in [&g1[..], grads2, &g1[..]] {
                let grads = grads_for(&model, g, &device);
                model = opt.step(1e-3, model, grads).unwrap().0;
            }
            params(&model)
        };
        let zeroed = run(&g2, NonFinite::ZeroElements);
        assert!(zeroed.iter().flatten().all(|x| x.is_finite()));
        assert_eq!(zeroed, run(&g2_zeroed, NonFinite::SkipStep), "{bits}");
    }
}

#[cfg(feature = "wgpu")]
#[test]
fn paging_on_wgpu_with_a_tiny_budget_equals_no_paging() {
    let device = Device::wgpu(burn::tensor::DeviceKind::DefaultDevice);
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let grads: Vec<Vec<Vec<f64>>> = (0..4).map(|s| random_grads(&mut rng, s)).collect();
    for bits in [StateBits::ThirtyTwo, StateBits::Eight] {
        let run = |budget: Option<u64>| {
            let (mut model, _) = toy(9, &device);
            let config = AdamWConfig::default()
                .with_state_bits(bits)
                .with_device_budget(budget);
            let mut opt = PagedAdamW::new(config).unwrap();
            let mut last = None;
            for g in &grads {
                let gp = grads_for(&model, g, &device);
                let (m, report) = opt.step(1e-2, model, gp).unwrap();
                model = m;
                last = Some(report.memory);
            }
            (params(&model), last.unwrap())
        };
        let (resident, mem_resident) = run(None);
        let (paged, mem_paged) = run(Some(1024));
        assert_eq!(resident, paged, "{bits}: paging changed the result");
        assert_eq!(mem_resident.paged_bytes, 0);
        assert_eq!(mem_resident.page_outs, 0);
        // Only the 16-value bias (128 bytes) fits in 1 KiB; everything else is paged.
        assert_eq!(mem_paged.resident_bytes, 128, "{bits}: {mem_paged:?}");
        assert!(mem_paged.paged_bytes > 0 && mem_paged.page_ins >= 6 && mem_paged.page_outs >= 8);
        assert_eq!(mem_paged.state_bytes, mem_resident.state_bytes);

        // And the same numbers as on the CPU, to rounding.
        let cpu = {
            let (mut model, _) = toy(9, &Device::flex());
            let mut opt = PagedAdamW::new(AdamWConfig::default().with_state_bits(bits)).unwrap();
            for g in &grads {
                let gp = grads_for(&model, g, &Device::flex());
                model = opt.step(1e-2, model, gp).unwrap().0;
            }
            params(&model)
        };
        let diff = cpu
            .iter()
            .flatten()
            .zip(paged.iter().flatten())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(diff < 1e-4, "{bits}: wgpu vs flex {diff}");
    }
}

#[test]
fn the_8bit_maps_are_bitsandbytes_maps_bit_for_bit() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/bnb_dynamic_maps.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    for (key, map) in [
        (
            "dynamic_signed_f32_bits",
            medify_quant::dynamic_signed_map(),
        ),
        (
            "dynamic_unsigned_f32_bits",
            medify_quant::dynamic_unsigned_map(),
        ),
    ] {
        let bits: Vec<u32> = json[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let ours: Vec<u32> = map.iter().map(|v| v.to_bits()).collect();
        assert_eq!(ours, bits, "{key}");
    }
}
