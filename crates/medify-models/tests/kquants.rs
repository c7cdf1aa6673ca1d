//! K-quant blocks decode to exactly the values of the `gguf` package (the numpy port of ggml's
//! dequantization that transformers' GGUF loader uses): `fixtures/kquants.json`, made by
//! `fixtures/scripts/make_kquant_references.py`.

use medify_models::gguf::{GgmlType, decode_blocks};

#[test]
fn k_quants_decode_bit_for_bit_like_gguf_py() {
    let text = include_str!("../../../fixtures/kquants.json");
    let fixture: serde_json::Value = serde_json::from_str(text).unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 6);
    for case in cases {
        let ty = match case["type"].as_str().unwrap() {
            "Q5_0" => GgmlType::Q5_0,
            "Q2_K" => GgmlType::Q2K,
            "Q3_K" => GgmlType::Q3K,
            "Q4_K" => GgmlType::Q4K,
            "Q5_K" => GgmlType::Q5K,
            "Q6_K" => GgmlType::Q6K,
            other => panic!("unexpected {other}"),
        };
        let bytes: Vec<u8> = case["bytes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_u64().unwrap() as u8)
            .collect();
        let want: Vec<u32> = case["values_f32_bits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap() as i32 as u32)
            .collect();
        let got: Vec<u32> = decode_blocks(ty, &bytes, want.len())
            .iter()
            .map(|v| v.to_bits())
            .collect();
        assert_eq!(got.len(), want.len(), "{ty:?}");
        let first = got.iter().zip(&want).position(|(a, b)| a != b);
        assert!(
            first.is_none(),
            "{ty:?}: value {} is {} (gguf: {})",
            first.unwrap(),
            f32::from_bits(got[first.unwrap()]),
            f32::from_bits(want[first.unwrap()])
        );
    }
}
