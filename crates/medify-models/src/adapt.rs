//! The model zoo's linear layers under their Hugging Face module paths, so LoRA adapters apply to
//! any `CausalLm` and PEFT adapter files line up key for key.

use medify_lora::{LoraModel, Projection};

use crate::model::CausalLm;

impl LoraModel for CausalLm {
    fn linear_layers(&self) -> Vec<(String, &Projection)> {
        let mut out: Vec<(String, &Projection)> = self
            .layers
            .iter()
            .enumerate()
            .flat_map(|(i, l)| {
                l.projections()
                    .map(|(name, p)| (format!("model.layers.{i}.{name}"), p))
            })
            .collect();
        out.extend(self.lm_head.iter().map(|h| ("lm_head".to_string(), h)));
        out
    }

    fn linear_layers_mut(&mut self) -> Vec<(String, &mut Projection)> {
        let mut out: Vec<(String, &mut Projection)> = self
            .layers
            .iter_mut()
            .enumerate()
            .flat_map(|(i, l)| {
                l.projections_mut()
                    .map(|(name, p)| (format!("model.layers.{i}.{name}"), p))
            })
            .collect();
        out.extend(self.lm_head.iter_mut().map(|h| ("lm_head".to_string(), h)));
        out
    }

    fn output_layer(&self) -> Option<&str> {
        self.lm_head.as_ref().map(|_| "lm_head")
    }

    fn base_parameters(&self) -> usize {
        self.num_parameters()
    }
}
