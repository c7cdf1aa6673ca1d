//! The preference objectives against TRL (`fixtures/scripts/make_preference_references.py`):
//! on the tiny Llama with PEFT's `peft_lora` adapter and a fixed batch of two pairs, over the
//! dense base and over bitsandbytes NF4, the per-pair log-probabilities (policy and reference),
//! the loss, TRL's logged rewards and every adapter gradient agree with DPOTrainer (sigmoid and
//! IPO), CPOTrainer (SimPO) and ORPOTrainer.

use crate::common;

use std::path::PathBuf;

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use medify_qlora::lora::{LoraExt, LoraModel};
use medify_qlora::models::{CausalLm, Checkpointing, Label, LoadOptions, TokenBatch};
use medify_qlora::training::{
    Method, PairLogps, PreferenceObjective, ReferenceLogps, preference_loss,
};
use safetensors::SafeTensors;
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

fn reference() -> Value {
    let text = std::fs::read_to_string(fixtures().join("preference/reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// TRL's concatenated batch: chosen rows, then rejected rows, right-padded, labels on the
/// completions only. With `all_tokens`, every real token is labelled (ORPO's NLL rows).
fn batch(r: &Value, sides: &[&str], all_tokens: bool) -> (TokenBatch, Vec<Vec<Label>>) {
    let pad = r["pad_id"].as_u64().unwrap() as u32;
    let mut rows = Vec::new();
    for side in sides {
        for p in r["pairs"].as_array().unwrap() {
            let prompt = ids(&p["prompt_ids"]);
            let completion = ids(&p[format!("{side}_ids")]);
            let mut labels: Vec<Label> = vec![None; prompt.len()];
            if all_tokens {
                labels
                    .iter_mut()
                    .zip(&prompt)
                    .for_each(|(l, &t)| *l = Some(t));
            }
            labels.extend(completion.iter().map(|&t| Some(t)));
            rows.push(([prompt, completion].concat(), labels));
        }
    }
    let width = rows.iter().map(|(i, _)| i.len()).max().unwrap();
    let (mut all_ids, mut all_labels) = (Vec::new(), Vec::new());
    for (mut i, mut l) in rows {
        l.resize(width, None);
        i.resize(width, pad);
        all_ids.push(i);
        all_labels.push(l);
    }
    (TokenBatch::new(all_ids), all_labels)
}

fn policy(base: &str) -> CausalLm {
    let dir = fixtures().join("tiny_models").join(if base == "dense" {
        "llama"
    } else {
        "llama_nf4"
    });
    let (mut model, _) =
        CausalLm::from_pretrained(&dir, &Device::flex().autodiff(), &LoadOptions::dense()).unwrap();
    model
        .load_adapter(&fixtures().join("lora/peft_lora"))
        .unwrap();
    model.set_adapters_training(true);
    model
}

fn close(got: f64, want: f64, tol: f64, what: &str) {
    assert!(
        (got - want).abs() <= tol * want.abs().max(1.0),
        "{what}: {got} vs TRL {want}"
    );
}

fn check(method: Method, base: &str) {
    check_variant(method, method.as_str(), base);
}

/// `variant` names the run's settings in the reference (e.g. `simpo_smoothed`).
fn check_variant(method: Method, variant: &str, base: &str) {
    let r = reference();
    let name = format!("{variant}_{base}");
    let want = &r["runs"][&name];
    let settings = &r["settings"][variant];
    let objective = PreferenceObjective {
        beta: settings["beta"].as_f64().unwrap(),
        simpo_gamma: settings["simpo_gamma"].as_f64().unwrap_or(0.5),
        label_smoothing: settings["label_smoothing"].as_f64().unwrap_or(0.0),
        ..PreferenceObjective::new(method)
    };
    let model = policy(base);
    let (pairs, labels) = batch(&r, &["chosen", "rejected"], false);
    let logps =
        PairLogps::from_concatenated(model.sequence_logps(&pairs, &labels).unwrap()).unwrap();
    let (chosen, rejected) = logps.values();
    for (got, key) in [(&chosen, "policy_chosen"), (&rejected, "policy_rejected")] {
        for (g, w) in got.iter().zip(floats(&want[key])) {
            close(*g, w, 1e-5, &format!("{name} {key}"));
        }
    }
    assert_eq!(logps.chosen_tokens, [4, 5]);

    // The reference: the same weights with the adapters off (PEFT's way), no autodiff.
    let reference = method.needs_reference().then(|| {
        let mut frozen = model.valid();
        frozen.remove_adapters().unwrap();
        let (c, r) = PairLogps::from_concatenated(frozen.sequence_logps(&pairs, &labels).unwrap())
            .unwrap()
            .values();
        for (got, key) in [(&c, "reference_chosen"), (&r, "reference_rejected")] {
            for (g, w) in got.iter().zip(floats(&want[key])) {
                close(*g, w, 1e-5, &format!("{name} {key}"));
            }
        }
        ReferenceLogps {
            chosen: c,
            rejected: r,
        }
    });
    let nll = (method == Method::Orpo).then(|| {
        let (rows, all) = batch(&r, &["chosen"], true);
        model.loss(&rows, &all).unwrap().loss
    });
    let out = preference_loss(&objective, &logps, reference.as_ref(), nll).unwrap();
    let metrics = &want["metrics"];
    let stats = &out.stats;
    for (got, key) in [
        (stats.mean_reward_chosen(), "rewards/chosen"),
        (stats.mean_reward_rejected(), "rewards/rejected"),
        (stats.accuracy(), "rewards/accuracies"),
        (stats.margin(), "rewards/margins"),
        (stats.mean_logps_chosen(), "logps/chosen"),
        (stats.mean_logps_rejected(), "logps/rejected"),
    ] {
        close(
            got,
            metrics[key].as_f64().unwrap(),
            1e-4,
            &format!("{name} {key}"),
        );
    }
    if method == Method::Orpo {
        for (got, key) in [
            (stats.nll_loss.unwrap(), "nll_loss"),
            (stats.log_odds_ratio.unwrap(), "log_odds_ratio"),
            (stats.log_odds_chosen.unwrap(), "log_odds_chosen"),
        ] {
            close(
                got,
                metrics[key].as_f64().unwrap(),
                1e-4,
                &format!("{name} {key}"),
            );
        }
    }
    let loss: Tensor<1> = out.loss;
    close(
        loss.clone().into_scalar::<f64>(),
        want["loss"].as_f64().unwrap(),
        1e-4,
        &format!("{name} loss"),
    );

    // Every adapter gradient.
    let grads = loss.backward();
    let bytes =
        std::fs::read(fixtures().join(format!("preference/grads_{name}.safetensors"))).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut checked = 0;
    for (path, proj) in model.linear_layers() {
        let Some(adapter) = proj.lora() else { continue };
        for (suffix, tensor) in [
            ("lora_A", adapter.lora_a.val()),
            ("lora_B", adapter.lora_b.val()),
        ] {
            let key = format!("base_model.model.{path}.{suffix}.weight");
            let got: Vec<f32> = tensor
                .grad(&grads)
                .unwrap_or_else(|| panic!("{name}: no gradient for {key}"))
                .into_data()
                .try_into_vec()
                .unwrap();
            common::assert_gradient(&st, &key, &got, 1e-2);
            checked += 1;
        }
    }
    assert_eq!(checked, st.len(), "{name}: every PEFT gradient compared");
}

#[test]
fn dpo_matches_trl_over_dense_and_nf4() {
    check(Method::Dpo, "dense");
    check(Method::Dpo, "nf4");
}

#[test]
fn ipo_matches_trl_over_dense_and_nf4() {
    check(Method::Ipo, "dense");
    check(Method::Ipo, "nf4");
}

#[test]
fn simpo_matches_trl_over_dense_and_nf4() {
    check(Method::Simpo, "dense");
    check(Method::Simpo, "nf4");
    // with conservative label smoothing (CPOTrainer's `label_smoothing`)
    check_variant(Method::Simpo, "simpo_smoothed", "dense");
    check_variant(Method::Simpo, "simpo_smoothed", "nf4");
}

#[test]
fn orpo_matches_trl_over_dense_and_nf4() {
    check(Method::Orpo, "dense");
    check(Method::Orpo, "nf4");
}

/// Every adapter factor's gradient in `grads`, under PEFT's key, in the model's layer order.
fn adapter_grads(
    model: &CausalLm,
    grads: &burn::optim::GradientsParams,
) -> Vec<(String, Vec<f32>)> {
    let mut out = Vec::new();
    for (path, proj) in model.linear_layers() {
        let Some(adapter) = proj.lora() else { continue };
        for (suffix, id) in [("lora_A", adapter.lora_a.id), ("lora_B", adapter.lora_b.id)] {
            let key = format!("base_model.model.{path}.{suffix}.weight");
            let values = grads
                .get::<2>(id)
                .unwrap_or_else(|| panic!("no gradient for {key}"))
                .into_data()
                .try_into_vec()
                .unwrap();
            out.push((key, values));
        }
    }
    out
}

/// The pairs of the TRL reference as the data pipeline hands them over.
fn encoded_pairs(r: &Value) -> Vec<medify_qlora::data::EncodedPair> {
    r["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, p)| medify_qlora::data::EncodedPair {
            origin: format!("pair {i}"),
            source: 0,
            prompt: ids(&p["prompt_ids"]),
            chosen: ids(&p["chosen_ids"]),
            rejected: ids(&p["rejected_ids"]),
        })
        .collect()
}

#[test]
fn precomputed_and_on_the_fly_references_give_trls_step_in_micro_batches() {
    use medify_qlora::data::PairTruncation;
    use medify_qlora::training::{
        PairMicroBatch, Reference, precompute_reference, preference_step_gradients, reference_model,
    };
    let r = reference();
    let pad = r["pad_id"].as_u64().unwrap() as u32;
    // One pair per micro-batch: two accumulated micro-batches are TRL's batch of two.
    let micro: Vec<PairMicroBatch> = encoded_pairs(&r)
        .chunks(1)
        .map(|c| PairMicroBatch::new(c, pad, None, PairTruncation::KeepStart))
        .collect();
    let model = policy("dense");
    let frozen = reference_model(&model, false).unwrap();
    let table = precompute_reference(&frozen, &micro).unwrap();
    let objective = PreferenceObjective::new(Method::Dpo);
    let live = preference_step_gradients(
        &model,
        &micro,
        &objective,
        Reference::Model(&frozen),
        7,
        1,
        Checkpointing::Off,
    )
    .unwrap();
    let stored = preference_step_gradients(
        &model,
        &micro,
        &objective,
        Reference::Precomputed(&table),
        7,
        1,
        Checkpointing::Off,
    )
    .unwrap();
    assert_eq!(live.loss, stored.loss);
    assert_eq!(live.stats, stored.stats);
    let want = &r["runs"]["dpo_dense"];
    close(
        live.loss,
        want["loss"].as_f64().unwrap(),
        1e-5,
        "accumulated DPO loss",
    );
    close(
        live.stats.margin(),
        want["metrics"]["rewards/margins"].as_f64().unwrap(),
        1e-4,
        "margins",
    );
    assert_eq!(live.pairs, 2);
    // Accumulated gradients: identical either way, and TRL's for the whole batch.
    let bytes = std::fs::read(fixtures().join("preference/grads_dpo_dense.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (live_grads, stored_grads) = (
        adapter_grads(&model, &live.grads),
        adapter_grads(&model, &stored.grads),
    );
    for ((key, a), (_, b)) in live_grads.iter().zip(&stored_grads) {
        assert_eq!(a, b, "{key}");
        common::assert_gradient(&st, key, a, 1e-2);
    }
    // A DPO step without any reference is an error, not a panic.
    assert!(
        preference_step_gradients(
            &model,
            &micro,
            &objective,
            Reference::None,
            7,
            1,
            Checkpointing::Off
        )
        .is_err()
    );
}

/// Layer checkpointing recomputes each layer in backward: the same loss, statistics and
/// gradients as keeping every activation, for a method with a reference (DPO) and for ORPO,
/// whose NLL term shares the forward pass, over the NF4 base.
#[test]
fn checkpointed_preference_steps_equal_plain_ones() {
    use medify_qlora::data::PairTruncation;
    use medify_qlora::training::{
        PairMicroBatch, Reference, preference_step_gradients, reference_model,
    };
    let r = reference();
    let pad = r["pad_id"].as_u64().unwrap() as u32;
    let micro = vec![PairMicroBatch::new(
        &encoded_pairs(&r),
        pad,
        None,
        PairTruncation::KeepStart,
    )];
    let model = policy("nf4");
    let frozen = reference_model(&model, false).unwrap();
    for method in [Method::Dpo, Method::Orpo] {
        let objective = PreferenceObjective::new(method);
        let step = |mode| {
            preference_step_gradients(
                &model,
                &micro,
                &objective,
                Reference::Model(&frozen),
                3,
                2,
                mode,
            )
            .unwrap()
        };
        let (plain, layers) = (step(Checkpointing::Off), step(Checkpointing::Layers));
        close(layers.loss, plain.loss, 1e-5, &format!("{method} loss"));
        assert_eq!(plain.stats.losses.len(), 2);
        for (a, b) in layers
            .stats
            .logps_chosen
            .iter()
            .zip(&plain.stats.logps_chosen)
        {
            close(*a, *b, 1e-4, &format!("{method} chosen logps"));
        }
        let mut largest = 0f32;
        let mut worst = 0f32;
        let pairs = adapter_grads(&model, &plain.grads)
            .into_iter()
            .zip(adapter_grads(&model, &layers.grads));
        for ((_, a), (_, b)) in pairs {
            for (x, y) in a.iter().zip(&b) {
                largest = largest.max(x.abs());
                worst = worst.max((x - y).abs());
            }
        }
        assert!(largest > 0.0, "{method}: no gradient");
        assert!(
            worst <= 1e-5 * largest.max(1.0),
            "{method}: {worst} of {largest}"
        );
    }
}
