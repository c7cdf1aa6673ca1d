//! The frozen int8 weight on every compiled backend: decoding equals the host codec, the matmul
//! equals a dense matmul over the decoded weight, and backward passes `dy @ W` to the input.

#[cfg(feature = "wgpu")]
use burn::tensor::DeviceKind;
use burn::tensor::{Device, Tensor, TensorData, Tolerance};
use medify_quant::{Int8Tensor, Int8Weight};

fn host_weight(out: usize, inp: usize) -> Int8Weight {
    let values: Vec<f32> = (0..out * inp)
        .map(|i| ((i * 7919 % 1009) as f32 / 1009.0 - 0.5) * 0.2)
        .collect();
    Int8Weight::quantize(&values, [out, inp]).unwrap()
}

fn matches_the_host_codec(device: &Device) {
    // 13 columns: rows start mid-word, so the packing is exercised at every offset
    for (m, out, inp) in [(1, 7, 13), (5, 40, 64), (33, 24, 96)] {
        let w = host_weight(out, inp);
        let q = Int8Tensor::from_weight(&w, device).unwrap();
        assert_eq!(q.to_weight(), w);
        let dense = q.dequantize();
        assert_eq!(dense.to_data().try_to_vec::<f32>().unwrap(), w.dequantize());
        let x: Vec<f32> = (0..m * inp).map(|i| (i as f32 * 0.37).sin()).collect();
        let x = Tensor::<2>::from_data(TensorData::new(x, [m, inp]), device);
        let y = q.matmul(x.clone());
        let want = x.matmul(dense.transpose());
        y.into_data()
            .assert_approx_eq::<f32>(&want.into_data(), Tolerance::absolute(1e-4));
    }
}

fn backward_decodes_again(device: &Device) {
    let w = host_weight(24, 40);
    let q = Int8Tensor::from_weight(&w, device).unwrap();
    let x = Tensor::<3>::ones([2, 3, 40], device).require_grad();
    let g = Tensor::<3>::from_data(
        TensorData::new(
            (0..2 * 3 * 24).map(|i| i as f32 * 0.01).collect(),
            [2, 3, 24],
        ),
        device,
    );
    let grads = (q.matmul(x.clone()) * g.clone()).sum().backward();
    let dx = x.grad(&grads).unwrap();
    let dense = Tensor::<2>::from_data(TensorData::new(w.dequantize(), [24, 40]), device);
    let want = g.reshape([6, 24]).matmul(dense).reshape([2, 3, 40]);
    dx.into_data()
        .assert_approx_eq::<f32>(&want.inner().into_data(), Tolerance::absolute(1e-4));
}

#[cfg(feature = "flex")]
#[test]
fn flex_int8_weight() {
    matches_the_host_codec(&Device::flex());
    backward_decodes_again(&Device::flex().autodiff());
}

#[cfg(feature = "wgpu")]
#[test]
fn wgpu_int8_weight() {
    let device = Device::wgpu(DeviceKind::DefaultDevice);
    matches_the_host_codec(&device);
    backward_decodes_again(&device.autodiff());
}
