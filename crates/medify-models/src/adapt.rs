//! The model zoo's linear layers under their Hugging Face module paths, so LoRA adapters apply to
//! any `CausalLm` and PEFT adapter files line up key for key.

use medify_lora::{LoraModel, Projection};

use crate::model::CausalLm;

impl LoraModel for CausalLm {
    fn linear_layers(&self) -> Vec<(String, &Projection)> {
        let mut out = Vec::with_capacity(self.layers.len() * 7 + 1);
        for (i, l) in self.layers.iter().enumerate() {
            let a = &l.self_attn;
            let m = &l.mlp;
            for (name, p) in [
                ("self_attn.q_proj", &a.q_proj),
                ("self_attn.k_proj", &a.k_proj),
                ("self_attn.v_proj", &a.v_proj),
                ("self_attn.o_proj", &a.o_proj),
                ("mlp.gate_proj", &m.gate_proj),
                ("mlp.up_proj", &m.up_proj),
                ("mlp.down_proj", &m.down_proj),
            ] {
                out.push((format!("model.layers.{i}.{name}"), p));
            }
        }
        if let Some(head) = &self.lm_head {
            out.push(("lm_head".to_string(), head));
        }
        out
    }

    fn linear_layers_mut(&mut self) -> Vec<(String, &mut Projection)> {
        let mut out = Vec::with_capacity(self.layers.len() * 7 + 1);
        for (i, l) in self.layers.iter_mut().enumerate() {
            let a = &mut l.self_attn;
            let m = &mut l.mlp;
            for (name, p) in [
                ("self_attn.q_proj", &mut a.q_proj),
                ("self_attn.k_proj", &mut a.k_proj),
                ("self_attn.v_proj", &mut a.v_proj),
                ("self_attn.o_proj", &mut a.o_proj),
                ("mlp.gate_proj", &mut m.gate_proj),
                ("mlp.up_proj", &mut m.up_proj),
                ("mlp.down_proj", &mut m.down_proj),
            ] {
                out.push((format!("model.layers.{i}.{name}"), p));
            }
        }
        if let Some(head) = &mut self.lm_head {
            out.push(("lm_head".to_string(), head));
        }
        out
    }

    fn output_layer(&self) -> Option<&str> {
        self.lm_head.as_ref().map(|_| "lm_head")
    }

    fn base_parameters(&self) -> usize {
        self.num_parameters()
    }
}
