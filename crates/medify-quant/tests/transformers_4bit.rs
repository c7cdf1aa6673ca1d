//! A tiny Llama saved by transformers with `load_in_4bit` (nf4 + double quant; made by
//! `fixtures/scripts/make_transformers_4bit.py`): it must load, our quantizer must reproduce
//! it from the dense weights byte for byte, and what we write must be the same tensors.

use std::collections::BTreeMap;

use medify_quant::{Packed4Bit, QuantConfig, QuantStateJson, bnb};
use safetensors::SafeTensors;

const DIR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../fixtures/transformers_llama_4bit"
);

fn read(name: &str) -> Vec<u8> {
    std::fs::read(format!("{DIR}/{name}")).expect("fixture present")
}

#[test]
fn transformers_checkpoint_loads_and_matches_our_quantizer() {
    let bytes = read("model.safetensors");
    let loaded = bnb::read_all(&bytes, "model.safetensors").unwrap();
    assert_eq!(loaded.len(), 7, "q/k/v/o/gate/up/down: {:?}", loaded.keys());
    let dense_bytes = read("dense.safetensors");
    let dense = SafeTensors::deserialize(&dense_bytes).unwrap();
    for (name, view) in dense.tensors() {
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let ours = Packed4Bit::quantize(&values, view.shape(), &QuantConfig::default()).unwrap();
        let theirs = &loaded[&name];
        assert_eq!(ours.data, theirs.data, "{name}: packed codes");
        assert_eq!(ours.state.absmax, theirs.state.absmax, "{name}: statistics");
        assert_eq!(ours.state.shape, theirs.state.shape, "{name}: shape");
        assert_eq!(
            ours.dequantize(),
            theirs.dequantize(),
            "{name}: dequantized"
        );
    }
}

#[test]
fn our_serialisation_matches_transformers_tensor_for_tensor() {
    let bytes = read("model.safetensors");
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let loaded = bnb::read_all(&bytes, "model.safetensors").unwrap();
    let mut written: BTreeMap<String, bnb::OwnedTensor> = BTreeMap::new();
    for (name, w) in &loaded {
        written.extend(bnb::to_tensors(name, w));
    }
    for (key, ours) in &written {
        let theirs = st
            .tensor(key)
            .unwrap_or_else(|_| panic!("transformers has no {key}"));
        if key.contains(".quant_state.") {
            let a = QuantStateJson::parse(&ours.data, key).unwrap();
            let b = QuantStateJson::parse(theirs.data(), key).unwrap();
            assert_eq!(a.dtype_name(), b.dtype_name(), "{key}");
            assert_eq!(
                (a.quant_type, a.blocksize, a.shape),
                (b.quant_type, b.blocksize, b.shape),
                "{key}"
            );
            assert_eq!(
                (a.nested_blocksize, a.nested_offset),
                (b.nested_blocksize, b.nested_offset),
                "{key}"
            );
            continue;
        }
        assert_eq!(ours.dtype, theirs.dtype(), "{key}: dtype");
        assert_eq!(ours.shape.as_slice(), theirs.shape(), "{key}: shape");
        assert_eq!(ours.data.as_slice(), theirs.data(), "{key}: bytes");
    }
    // Every quantization tensor transformers wrote is one we write too.
    let theirs: Vec<&str> = st
        .names()
        .into_iter()
        .filter(|k| k.contains("proj.weight"))
        .collect();
    for k in theirs {
        assert!(written.contains_key(k), "we do not write {k}");
    }
}
