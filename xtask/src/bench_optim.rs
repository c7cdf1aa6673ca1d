//! `cargo xtask bench-optim`: optimizer state bytes per trainable parameter and step time of
//! PagedAdamW (32-bit and 8-bit) against burn's own AdamW, on the LoRA adapters of a real
//! model. All three run in one process on the same gradients so the ratios are comparable.

use std::path::PathBuf;
use std::time::Instant;

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::{AdamWConfig as BurnAdamWConfig, GradientsParams};
use burn::tensor::{Device, Distribution, Tensor};
use clap::Args as ClapArgs;
use medify_qlora::lora::{LoraConfig, LoraExt, TargetModules};
use medify_qlora::models::{CausalLm, LoadOptions, load_pretrained};
use medify_qlora::optim::{AdamWConfig, PagedAdamW, StateBits};
use medify_qlora::quant::QuantConfig;
use serde_json::{Value, json};

use crate::device::device_named;

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Model directory or .gguf file (e.g. SmolLM2-135M-Instruct.Q4_1.gguf).
    #[arg(long)]
    model: PathBuf,
    /// Device the adapters and optimizer state live on.
    #[arg(long, default_value = "flex")]
    device: String,
    /// LoRA rank on all linear layers (QLoRA's default is 64).
    #[arg(long = "lora-r", alias = "rank", default_value_t = 64)]
    rank: usize,
    /// Timed steps per optimizer (after one warm-up step).
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Device budget for PagedAdamW state in MiB (default: no limit).
    #[arg(long = "optimizer-budget-mib", alias = "budget-mib")]
    budget_mib: Option<u64>,
    /// Print JSON only.
    #[arg(long)]
    json: bool,
}

/// Random gradients for every trainable parameter, kept to be replayed each step.
#[derive(Default)]
struct Grads {
    two: Vec<(ParamId, Tensor<2>)>,
    one: Vec<(ParamId, Tensor<1>)>,
    elements: usize,
}

impl ModuleVisitor for Grads {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let value = param.val();
        if !value.is_require_grad() {
            return;
        }
        let shape = value.shape();
        self.elements += shape.num_elements();
        let g = Tensor::<D>::random(
            shape.clone(),
            Distribution::Normal(0.0, 1e-3),
            &value.device(),
        )
        .inner();
        let dims = shape.dims::<D>().to_vec();
        match dims.as_slice() {
            [n] => self.one.push((param.id, g.reshape([*n]))),
            [r, c] => self.two.push((param.id, g.reshape([*r, *c]))),
            _ => {}
        }
    }
}

impl Grads {
    fn params(&self) -> GradientsParams {
        let mut g = GradientsParams::new();
        for (id, t) in &self.two {
            g.register(*id, t.clone());
        }
        for (id, t) in &self.one {
            g.register(*id, t.clone());
        }
        g
    }
}

/// Forces queued device work to finish, so timings cover it.
fn sync(model: &CausalLm) {
    let mut first = FirstTrainable(None);
    model.visit(&mut first);
    if let Some(t) = first.0 {
        let _ = t.into_scalar::<f32>();
    }
}

struct FirstTrainable(Option<Tensor<1>>);

impl ModuleVisitor for FirstTrainable {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if self.0.is_none() && param.val().is_require_grad() {
            self.0 = Some(param.val().sum());
        }
    }
}

fn time_steps(
    steps: usize,
    mut model: CausalLm,
    grads: &Grads,
    mut step: impl FnMut(CausalLm, GradientsParams) -> anyhow::Result<CausalLm>,
) -> anyhow::Result<f64> {
    model = step(model, grads.params())?;
    sync(&model);
    let t = Instant::now();
    for _ in 0..steps {
        model = step(model, grads.params())?;
    }
    sync(&model);
    Ok(t.elapsed().as_secs_f64() / steps.max(1) as f64)
}

fn load(args: &Args, device: &Device) -> anyhow::Result<CausalLm> {
    let options = LoadOptions::quantized(QuantConfig::default());
    let (mut model, _, _) = load_pretrained(&args.model, device, &options)?;
    let config = LoraConfig::new(args.rank, 16.0).with_target_modules(TargetModules::AllLinear);
    model.add_adapters(&config)?;
    Ok(model)
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    // Adapters are trainable only on an autodiff device, as in training.
    let device = device_named(&args.device)?.autodiff();
    let model = load(args, &device)?;
    let mut grads = Grads::default();
    model.visit(&mut grads);
    let params = grads.elements as f64;

    let mut burn_opt = BurnAdamWConfig::new().with_weight_decay(0.0).init();
    let burn_s = time_steps(args.steps, model.clone(), &grads, |m, g| {
        Ok(burn_opt.step(2e-4, m, g))
    })?;

    let mut ours = serde_json::Map::new();
    for bits in [StateBits::ThirtyTwo, StateBits::Eight] {
        let config = AdamWConfig::default()
            .with_state_bits(bits)
            .with_weight_decay(0.0)
            .with_device_budget(args.budget_mib.map(|m| m << 20));
        let mut opt = PagedAdamW::new(config)?;
        let seconds = time_steps(args.steps, model.clone(), &grads, |m, g| {
            opt.step(2e-4, m, g)
                .map(|(m, _)| m)
                .map_err(anyhow::Error::from)
        })?;
        let mem = opt.memory();
        let r = json!({
            "seconds_per_step": seconds,
            "step_time_over_burn_adamw": seconds / burn_s,
            "state_bytes": mem.state_bytes,
            "state_bytes_per_param": mem.bytes_per_param(),
            "resident_bytes": mem.resident_bytes,
            "paged_bytes": mem.paged_bytes,
            "page_ins": mem.page_ins,
            "page_outs": mem.page_outs,
        });
        if !args.json {
            eprintln!("paged_adamw_{bits}: {r}");
        }
        ours.insert(format!("paged_adamw_{bits}"), r);
    }
    let out: Value = json!({
        "model": args.model.display().to_string(),
        "device": args.device,
        "rank": args.rank,
        "trainable_params": grads.elements,
        "steps": args.steps,
        "burn_adamw": {
            "seconds_per_step": burn_s,
            "state_bytes_per_param": 8.0,
            "state_bytes": 8.0 * params,
        },
        "paged_adamw_32bit": ours["paged_adamw_32bit"],
        "paged_adamw_8bit": ours["paged_adamw_8bit"],
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
