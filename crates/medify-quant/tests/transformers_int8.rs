//! The tiny Llama fixture saved by transformers with `load_in_8bit` (made by
//! `fixtures/scripts/make_transformers_int8.py` from `fixtures/tiny_models/llama`): our
//! quantizer must reproduce every int8 weight and `SCB` from the dense weights byte for byte,
//! and read back what transformers wrote.

use medify_quant::{Int8Weight, SCB_SUFFIX, bnb};
use safetensors::{Dtype, SafeTensors};

fn fixture(path: &str) -> Vec<u8> {
    let p = format!("{}/../../fixtures/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

#[test]
fn quantizing_the_dense_weights_reproduces_transformers_bytes() {
    let int8 = fixture("transformers_llama_int8/model.safetensors");
    let theirs = SafeTensors::deserialize(&int8).unwrap();
    let dense = fixture("tiny_models/llama/model.safetensors");
    let dense = SafeTensors::deserialize(&dense).unwrap();
    let mut checked = 0;
    for (name, view) in theirs.tensors() {
        if view.dtype() != Dtype::I8 {
            continue;
        }
        let d = dense.tensor(&name).unwrap();
        let values: Vec<f32> = d
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let shape = [d.shape()[0], d.shape()[1]];
        let ours = Int8Weight::quantize(&values, shape).unwrap();
        let read = Int8Weight::read(&theirs, &name).unwrap();
        let differ = ours
            .codes()
            .iter()
            .zip(read.codes())
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(differ, 0, "{name}: codes that differ");
        assert_eq!(ours.scb(), read.scb(), "{name}: SCB");
        // and the bytes we would write are theirs
        let prefix = name.strip_suffix(".weight").unwrap();
        let tensors = ours.to_tensors(&name);
        assert_eq!(tensors[&name].data, view.data(), "{name}");
        assert_eq!(tensors.len(), 3);
        for (key, t) in &tensors {
            let their = theirs.tensor(key).unwrap();
            assert_eq!(t.data, their.data(), "{key}");
            assert_eq!(
                (t.dtype, t.shape.as_slice()),
                (their.dtype(), their.shape()),
                "{key}"
            );
        }
        assert!(tensors.contains_key(&format!("{prefix}{SCB_SUFFIX}")));
        checked += 1;
    }
    // 2 layers × q, k, v, o, gate, up, down; lm_head stays dense as transformers leaves it
    assert_eq!(checked, 14);
    assert_eq!(theirs.tensor("lm_head.weight").unwrap().dtype(), Dtype::F32);
    // a serialized set of our tensors reads back
    let w = Int8Weight::quantize(&[1.0, -0.5, 0.25, 0.125], [2, 2]).unwrap();
    let bytes = bnb::serialize(&w.to_tensors("p.weight")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(Int8Weight::read(&st, "p.weight").unwrap(), w);
    assert!(Int8Weight::read(&st, "q.weight").is_err());
}
