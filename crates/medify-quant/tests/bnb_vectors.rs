//! The 4-bit codec against bitsandbytes 0.50.2: every case of `fixtures/bnb4bit.json` must
//! agree bit for bit on the host codec and on the device path of each compiled backend.

use burn::tensor::Device;
#[cfg(feature = "wgpu")]
use burn::tensor::DeviceKind;
use medify_quant::{Absmax, Nf4Tensor, Packed4Bit, QuantConfig, QuantType};
use serde_json::Value;

struct Case {
    name: String,
    shape: Vec<usize>,
    config: QuantConfig,
    input: Vec<f32>,
    packed: Vec<u8>,
    dequant_bits: Vec<u32>,
    raw: Value,
}

fn bits(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_i64().expect("int") as u32)
        .collect()
}

fn cases() -> Vec<Case> {
    let text = include_str!("../../../fixtures/bnb4bit.json");
    let doc: Value = serde_json::from_str(text).expect("fixture parses");
    doc["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| Case {
            name: c["name"].as_str().unwrap().to_string(),
            shape: c["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect(),
            config: QuantConfig::default()
                .with_quant_type(
                    c["quant_type"]
                        .as_str()
                        .unwrap()
                        .parse::<QuantType>()
                        .unwrap(),
                )
                .with_blocksize(c["blocksize"].as_u64().unwrap() as usize)
                .with_double_quant(c["double_quant"].as_bool().unwrap()),
            input: bits(&c["input_f32_bits"])
                .into_iter()
                .map(f32::from_bits)
                .collect(),
            packed: c["packed"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b.as_u64().unwrap() as u8)
                .collect(),
            dequant_bits: bits(&c["dequant_f32_bits"]),
            raw: c.clone(),
        })
        .collect()
}

fn assert_bits(name: &str, what: &str, got: &[f32], want: &[u32]) {
    assert_eq!(got.len(), want.len(), "{name}: {what} length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(
            g.to_bits(),
            *w,
            "{name}: {what}[{i}] = {g} but bitsandbytes has {}",
            f32::from_bits(*w)
        );
    }
}

#[test]
fn host_codec_matches_bitsandbytes_bit_for_bit() {
    let all = cases();
    assert_eq!(all.len(), 6);
    for c in &all {
        let q = Packed4Bit::quantize(&c.input, &c.shape, &c.config).unwrap();
        assert_eq!(q.data, c.packed, "{}: packed bytes", c.name);
        assert_bits(
            &c.name,
            "code",
            q.state.quant_type.code(),
            &bits(&c.raw["code_f32_bits"]),
        );
        match &q.state.absmax {
            Absmax::Plain(a) => assert_bits(&c.name, "absmax", a, &bits(&c.raw["absmax_f32_bits"])),
            Absmax::Double(n) => {
                let want: Vec<u8> = c.raw["absmax_u8"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|b| b.as_u64().unwrap() as u8)
                    .collect();
                assert_eq!(n.codes, want, "{}: absmax codes", c.name);
                assert_eq!(
                    n.offset.to_bits(),
                    c.raw["offset_f32_bits"].as_i64().unwrap() as u32,
                    "{}: offset",
                    c.name
                );
                assert_bits(
                    &c.name,
                    "nested_absmax",
                    &n.nested_absmax,
                    &bits(&c.raw["nested_absmax_f32_bits"]),
                );
                assert_bits(
                    &c.name,
                    "nested_code",
                    &n.code,
                    &bits(&c.raw["nested_code_f32_bits"]),
                );
            }
        }
        assert_bits(&c.name, "dequantized", &q.dequantize(), &c.dequant_bits);
    }
}

fn device_path_matches(device: &Device) {
    for c in cases() {
        let q = Packed4Bit::quantize(&c.input, &c.shape, &c.config).unwrap();
        let t = Nf4Tensor::from_packed(&q, device).unwrap();
        let absmax = t.absmax().into_data().try_to_vec::<f32>().unwrap();
        assert_bits(
            &c.name,
            "device absmax",
            &absmax,
            &q.state
                .absmax
                .to_f32()
                .iter()
                .map(|v| v.to_bits())
                .collect::<Vec<_>>(),
        );
        let dense = t.dequantize().into_data().try_to_vec::<f32>().unwrap();
        assert_bits(&c.name, "device dequantized", &dense, &c.dequant_bits);
        assert_eq!(t.to_packed(), q, "{}: device round trip", c.name);
    }
}

#[cfg(feature = "flex")]
#[test]
fn flex_device_matches_bitsandbytes() {
    device_path_matches(&Device::flex());
    device_path_matches(&Device::flex().autodiff());
}

#[cfg(feature = "wgpu")]
#[test]
fn wgpu_device_matches_bitsandbytes() {
    device_path_matches(&Device::wgpu(DeviceKind::DefaultDevice));
}
