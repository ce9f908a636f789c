use super::*;
use candle_core::Device;

fn layer() -> QLinear {
    let w = Tensor::new(&[[1f32, 2., 3.], [4., 5., 6.]], &Device::Cpu).unwrap();
    let b = Tensor::new(&[0.5f32, -1.], &Device::Cpu).unwrap();
    QLinear::new("l.weight", w, Some(b))
}

#[test]
fn computes_x_wt_plus_b_on_any_leading_shape() {
    let l = layer();
    let x = Tensor::new(&[[[1f32, 0., -1.], [2., 1., 0.]]], &Device::Cpu).unwrap();
    let y = l.forward(&x).unwrap();
    assert_eq!(y.dims(), &[1, 2, 2]);
    let v: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(v, vec![-1.5, -3., 4.5, 12.]);
}

#[test]
fn swapping_the_weight_changes_the_output_and_reset_restores_it() {
    let l = layer();
    let x = Tensor::new(&[[1f32, 1., 1.]], &Device::Cpu).unwrap();
    let before: Vec<f32> = l
        .forward(&x)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let zeros = Tensor::zeros((2, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
    let fmt: Format = "int8-channel-sym".parse().unwrap();
    l.set_weight(WeightSource::Fake(fmt), zeros).unwrap();
    assert_eq!(l.source(), WeightSource::Fake(fmt));
    let swapped: Vec<f32> = l
        .forward(&x)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(swapped, vec![0.5, -1.]);
    l.reset();
    let after: Vec<f32> = l
        .forward(&x)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(before, after);
    let bad = Tensor::zeros((3, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(l.set_weight(WeightSource::Float, bad).is_err());
}

/// Every GGUF type: the fake-quantized layer (dequantized weight, input rounded as the
/// runtime rounds it) computes what the packed blocks compute, within float rounding,
/// and the rounding matters (float input is measurably further off).
#[test]
fn fake_gguf_layer_matches_the_packed_blocks() {
    let (rows, cols, tokens) = (36, 512, 20);
    let val = |i: usize, salt: usize| {
        let h = (i * 2654435761 + salt * 40503) % 100003;
        let v = h as f32 / 100003.0 - 0.5;
        // Heavy-ish tails, as real activations have.
        if h.is_multiple_of(97) {
            12.0 * v
        } else {
            v
        }
    };
    let w: Vec<f32> = (0..rows * cols).map(|i| 0.05 * val(i, 1)).collect();
    let x: Vec<f32> = (0..tokens * cols).map(|i| val(i, 2)).collect();
    let x = Tensor::from_vec(x, (tokens, cols), &Device::Cpu).unwrap();
    let wt = Tensor::from_vec(w, (rows, cols), &Device::Cpu).unwrap();
    let out = |l: &QLinear| -> Vec<f32> {
        l.forward(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    for t in crate::quant::GgufType::ALL {
        let format = Format::Gguf(t);
        let float = QLinear::new("l.weight", wt.clone(), None);
        let q = float
            .quantized(format, Calibrator::MinMax, None, None, Rescale::NONE)
            .unwrap();
        let packed = QLinear::packed("l.weight", format, (rows, cols), q, None, None).unwrap();
        float
            .fake_quantize(format, Calibrator::MinMax, None)
            .unwrap();
        let (p, f) = (out(&packed), out(&float));
        let plain: Vec<f32> = x
            .matmul(
                &float
                    .fake_weight(format, Calibrator::MinMax, None, None, Rescale::NONE)
                    .unwrap()
                    .t()
                    .unwrap(),
            )
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let scale = p.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = |a: &[f32]| {
            a.iter()
                .zip(&p)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
        };
        assert!(
            diff(&f) <= 2e-5 * scale,
            "{t:?}: fake {} vs packed, output scale {scale}",
            diff(&f)
        );
        assert!(
            diff(&plain) > 20.0 * diff(&f),
            "{t:?}: float input {} vs rounded {}",
            diff(&plain),
            diff(&f)
        );
    }
}

#[test]
fn observer_sees_the_flattened_input() {
    let l = layer();
    let rec = Arc::new(Recorder::default());
    l.set_observer(Some(rec.clone()));
    let x = Tensor::ones((2, 4, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
    l.forward(&x).unwrap();
    l.set_observer(None);
    l.forward(&x).unwrap();
    let seen = rec.take();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].0, "l.weight");
    assert_eq!(seen[0].1.dims(), &[8, 3]);
}

/// An embedding lookup on packed weights dequantizes exactly the rows the fake-quantized table
/// holds, for integer formats (per row and per group) and GGUF blocks; an id outside the table
/// is an error, not a panic.
#[test]
fn packed_rows_are_the_fake_quantized_rows() {
    let (rows, cols) = (40, 256);
    let w: Vec<f32> = (0..rows * cols)
        .map(|i| ((i * 7919 % 1009) as f32 / 1009.0 - 0.5) * 0.1)
        .collect();
    let w = Tensor::from_vec(w, (rows, cols), &Device::Cpu).unwrap();
    let ids = Tensor::new(&[[3u32, 0, 39], [3, 17, 1]], &Device::Cpu).unwrap();
    for f in [
        "int8-channel-sym",
        "int4-g32-asym",
        "int6-g64-asym",
        "q4_k",
        "q8_0",
    ] {
        let format: Format = f.parse().unwrap();
        let float = QLinear::new("t.weight", w.clone(), None).with_usage(Usage::Gather);
        let q = float
            .quantized(format, Calibrator::Mse, None, None, Rescale::NONE)
            .unwrap();
        let packed = QLinear::packed("t.weight", format, (rows, cols), q, None, None).unwrap();
        float.fake_quantize(format, Calibrator::Mse, None).unwrap();
        let got = packed.gather(&ids, None).unwrap();
        assert_eq!(got.dims(), &[2, 3, cols]);
        let want = float.gather(&ids, None).unwrap();
        let (a, b): (Vec<f32>, Vec<f32>) = (
            got.flatten_all().unwrap().to_vec1().unwrap(),
            want.flatten_all().unwrap().to_vec1().unwrap(),
        );
        assert_eq!(a, b, "{f}");
        assert!(a.iter().any(|v| *v != 0.0));
        let outside = Tensor::new(&[40u32], &Device::Cpu).unwrap();
        assert!(packed.gather(&outside, None).is_err(), "{f}");
    }
}
