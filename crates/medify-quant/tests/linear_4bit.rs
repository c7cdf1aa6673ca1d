//! The fused 4-bit matmul and the frozen 4-bit linear against dense f32 references, on every
//! compiled backend, forward and backward.

#[cfg(feature = "wgpu")]
use burn::tensor::DeviceKind;
use burn::tensor::{Device, Distribution, Tensor, TensorData, Tolerance};
use medify_quant::{Nf4Tensor, QuantConfig, QuantType, linear_4bit};

fn weight(device: &Device, out: usize, inp: usize, config: &QuantConfig) -> Nf4Tensor {
    let w = Tensor::<2>::random([out, inp], Distribution::Normal(0.0, 0.05), device);
    Nf4Tensor::quantize(w, config).unwrap()
}

fn assert_close(got: Tensor<2>, want: Tensor<2>, what: &str) {
    let g = got.into_data();
    let w = want.into_data();
    g.assert_approx_eq::<f32>(&w, Tolerance::absolute(2e-4).set_relative(1e-3));
    let _ = what;
}

fn forward_matches_dense(device: &Device) {
    for (m, out, inp, cfg) in [
        (1, 96, 128, QuantConfig::default()),
        (
            4,
            40,
            64,
            QuantConfig::default()
                .with_quant_type(QuantType::Fp4)
                .with_double_quant(false),
        ),
        (33, 72, 256, QuantConfig::default().with_blocksize(128)),
        (2, 8, 20, QuantConfig::default().with_blocksize(32)),
    ] {
        let w = weight(device, out, inp, &cfg);
        let x = Tensor::<2>::random([m, inp], Distribution::Normal(0.0, 1.0), device);
        let fused = w.matmul(x.clone());
        let dense = x.matmul(w.dequantize().transpose());
        assert_eq!(fused.dims(), [m, out]);
        assert_close(fused, dense, "forward");
    }
    // Leading batch dims are flattened and restored.
    let w = weight(device, 16, 64, &QuantConfig::default());
    let x3 = Tensor::<3>::ones([2, 3, 64], device);
    assert_eq!(w.matmul(x3).dims(), [2, 3, 16]);
}

fn gradient_matches_dense(device: &Device) {
    let ad = device.clone().autodiff();
    for m in [1, 24] {
        let w = weight(&ad, 48, 128, &QuantConfig::default());
        let bias = Tensor::<1>::random([48], Distribution::Normal(0.0, 1.0), &ad);
        let xv = Tensor::<2>::random([m, 128], Distribution::Normal(0.0, 1.0), &ad).into_data();
        let r = Tensor::<2>::random([m, 48], Distribution::Normal(0.0, 1.0), &ad);

        let x = Tensor::<2>::from_data(xv.clone(), &ad).require_grad();
        let y = linear_4bit(x.clone(), &w, Some(&bias));
        let grads = (y.clone() * r.clone()).sum().backward();
        let gx = x.grad(&grads).expect("x has a gradient");

        let x_ref = Tensor::<2>::from_data(xv, &ad).require_grad();
        let dense = w.dequantize();
        let y_ref = x_ref.clone().matmul(dense.transpose()) + bias.clone().unsqueeze();
        let grads_ref = (y_ref.clone() * r).sum().backward();
        let gx_ref = x_ref.grad(&grads_ref).expect("reference gradient");

        assert_close(y.inner(), y_ref.inner(), "forward under autodiff");
        let (g, gr) = (gx.into_data(), gx_ref.into_data());
        g.assert_approx_eq::<f32>(&gr, Tolerance::absolute(2e-4).set_relative(1e-3));
    }
}

#[cfg(feature = "flex")]
#[test]
fn flex_forward_matches_dense() {
    forward_matches_dense(&Device::flex());
}

#[cfg(feature = "flex")]
#[test]
fn flex_input_gradient_matches_dense() {
    gradient_matches_dense(&Device::flex());
}

#[cfg(feature = "wgpu")]
#[test]
fn wgpu_forward_matches_dense() {
    forward_matches_dense(&Device::wgpu(DeviceKind::DefaultDevice));
}

#[cfg(feature = "wgpu")]
#[test]
fn wgpu_input_gradient_matches_dense() {
    gradient_matches_dense(&Device::wgpu(DeviceKind::DefaultDevice));
}

#[cfg(feature = "flex")]
#[test]
fn weight_errors_are_reported_not_panicked() {
    let device = Device::flex();
    let w = Tensor::<2>::from_data(TensorData::new(vec![f32::NAN; 64], [1, 64]), &device);
    let err = Nf4Tensor::quantize(w, &QuantConfig::default()).unwrap_err();
    assert!(err.to_string().contains("non-finite"), "{err}");
    let w = Tensor::<2>::ones([2, 64], &device);
    let err = Nf4Tensor::quantize(w, &QuantConfig::default().with_blocksize(96)).unwrap_err();
    assert!(err.to_string().contains("blocksize 96"), "{err}");
    let q =
        Nf4Tensor::quantize(Tensor::<2>::ones([4, 64], &device), &QuantConfig::default()).unwrap();
    let err = q
        .try_matmul(Tensor::<2>::ones([2, 32], &device))
        .unwrap_err();
    assert!(err.to_string().contains("last dim must be 64"), "{err}");
}
