//! GPTQ on the demo model: input Hessians shared by the layers that read the same input and
//! agreeing with the calibration statistics, GPTQ's held-out gain over rounding to nearest on
//! the whole model, and packed GPTQ weights equal to the values the search measured.

use crate::common::{self, calibrated, llama, mean_kld, tiny};
use qpipe::calib::{self, hessians};
use qpipe::model::Model;
use qpipe::quant::{Calibrator, Format, QuantizedTensor, Rescale};

fn hessian_tokens(model_tokens: &[u32]) -> Vec<&[u32]> {
    qpipe::data::sequences(model_tokens, 128, 4096)
}

#[test]
fn hessians_are_shared_by_the_layers_that_read_one_input_and_match_the_importance() {
    let _cpu = common::busy();
    let (model, cal) = common::tiny_and_calibration();
    let seqs = hessian_tokens(&cal);
    let hs = hessians::collect(&model, &seqs).unwrap();
    let layers = common::llama(&model).config().num_hidden_layers;
    // Per layer: q/k/v, o, gate/up, down; then the tied head.
    assert_eq!(hs.inputs.len(), 4 * layers + 1);
    let at = |n: &str| hs.of[n];
    for l in 0..layers {
        let p = |s: &str| format!("model.layers.{l}.{s}.weight");
        assert_eq!(at(&p("self_attn.q_proj")), at(&p("self_attn.k_proj")));
        assert_eq!(at(&p("self_attn.q_proj")), at(&p("self_attn.v_proj")));
        assert_eq!(at(&p("mlp.gate_proj")), at(&p("mlp.up_proj")));
        assert_ne!(at(&p("self_attn.q_proj")), at(&p("self_attn.o_proj")));
        assert_ne!(at(&p("mlp.gate_proj")), at(&p("mlp.down_proj")));
    }
    // The diagonal is the importance (mean x²) the statistics pass computes independently.
    let stats = calib::collect(&model, &seqs, 1).unwrap();
    for s in &stats.linears {
        let h = hs.get(&s.name).unwrap();
        assert_eq!(h.tokens(), (seqs.len() * 128) as u64, "{}", s.name);
        let n = h.dim();
        for (i, imp) in s.importance().iter().enumerate() {
            let d = h.values()[i * n + i];
            assert!(
                (d - imp).abs() <= 1e-4 * imp.abs() + 1e-9,
                "{} column {i}: {d} vs {imp}",
                s.name
            );
        }
    }
}

#[test]
fn saved_hessians_read_back_identical_and_bad_files_are_one_line_errors() {
    let _cpu = common::busy();
    let (model, cal) = common::tiny_and_calibration();
    let hs = hessians::collect(&model, &qpipe::data::sequences(&cal, 128, 512)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hessians.safetensors");
    hs.save(&path, "key").unwrap();
    // The upper triangles hold it all: the Hessians are exactly symmetric.
    let (back, key) = calib::Hessians::load(&path).unwrap();
    assert!(back == hs);
    assert_eq!(key, "key");
    let bytes = std::fs::read(&path).unwrap();
    let name = path.display().to_string();
    let error = |bytes: &[u8]| {
        std::fs::write(&path, bytes).unwrap();
        calib::Hessians::load(&path).unwrap_err().to_string()
    };
    let e = error(&bytes[..bytes.len() - 100]);
    assert!(e.contains(&name) && !e.contains('\n'), "{e}");
    // A header claiming a dimension its tensor does not have.
    let mut lying = bytes.clone();
    let at = lying.windows(6).position(|w| w == b"[[256,").unwrap();
    lying[at + 4] = b'5';
    let e = error(&lying);
    assert!(e.contains(&name) && e.contains("input.0"), "{e}");
    // A NaN in a value.
    let mut nan = bytes.clone();
    let at = nan.len() - 4;
    nan[at..].copy_from_slice(&f32::NAN.to_le_bytes());
    let e = error(&nan);
    assert!(e.contains("NaN"), "{e}");
}

/// The GPTQ factors of `c`'s model from 4096 tokens of the calibration text of `dir`.
fn factors(c: &common::Calibrated, dir: &std::path::Path) -> calib::Factors {
    let cal = common::tokens(
        &qpipe::checkpoint::Checkpoint::open(dir).unwrap(),
        "sotu-calibration.txt",
    );
    let hs = hessians::collect(&c.model, &hessian_tokens(&cal)).unwrap();
    hs.factors().unwrap()
}

/// Every multiplied weight `format` fits fake-quantized in it, rounded by GPTQ with `gptq`'s
/// factors or else to nearest; returns the mean held-out KL and the weights quantized.
fn whole_model_kld(
    c: &common::Calibrated,
    format: Format,
    gptq: Option<&calib::Factors>,
) -> (f64, usize) {
    let mut quantized = 0;
    for l in c.model.linears() {
        // The k-quants' 256-blocks do not fit every tensor: those stay float for both roundings.
        if format.check(l.shape().0, l.shape().1).is_err() {
            continue;
        }
        let imp = c.stats.linear(l.name()).unwrap().importance();
        let f = gptq.map(|f| f.get(l.name()).unwrap().as_ref());
        let w = l
            .fake_weight(format, Calibrator::Mse, Some(&imp), f, Rescale::NONE)
            .unwrap();
        l.set_weight(qpipe::model::WeightSource::Fake(format), w)
            .unwrap();
        quantized += 1;
    }
    let kld = mean_kld(llama(&c.model), &c.held_out, &c.reference);
    c.model.linears().iter().for_each(|l| l.reset());
    (kld, quantized)
}

#[test]
fn gptq_lowers_the_held_out_kl_of_rounding_to_nearest() {
    let _cpu = common::busy();
    // Held out: moby-dick-eval.txt, another author and century than the calibration text.
    let c = calibrated(&tiny(), 1024, 6);
    let f = factors(&c, &tiny());
    for (format, most) in [
        ("int4-channel-sym", 0.7),
        ("int3-g32-asym", 0.65),
        ("q4_0", 0.8),
        ("q3_k", 0.6),
    ] {
        let format: Format = format.parse().unwrap();
        let ((rtn, _), (gptq, _)) = (
            whole_model_kld(&c, format, None),
            whole_model_kld(&c, format, Some(&f)),
        );
        println!("{format}: held-out KL rtn {rtn:.4e}, gptq {gptq:.4e}");
        assert!(gptq < most * rtn, "{format}: gptq {gptq} vs rtn {rtn}");
    }
}

/// SmolLM2's k-quants where their 256-blocks fit (only down_proj: its other rows are 576
/// wide), the other weights float: GPTQ onto the imatrix grids against their own rounding.
#[test]
#[ignore = "needs scripts/fetch-models.sh; about 4 minutes"]
fn gptq_lowers_smollm2s_held_out_kl_in_the_k_quants() {
    let _cpu = common::busy();
    let Some(dir) = common::fetched_model("smollm2-135m") else {
        return;
    };
    let c = calibrated(&dir, 1024, 8);
    let f = factors(&c, &dir);
    // Measured: q3_k 0.76x, q4_k 0.96x (the source weights sit on a 4-bit grid already).
    for (format, most) in [("q3_k", 0.85), ("q4_k", 1.0)] {
        let format: Format = format.parse().unwrap();
        let ((rtn, n), (gptq, _)) = (
            whole_model_kld(&c, format, None),
            whole_model_kld(&c, format, Some(&f)),
        );
        println!(
            "{format} on {n} weights: held-out KL rtn {rtn:.4e}, gptq {gptq:.4e} ({:.2}x)",
            gptq / rtn
        );
        assert!(gptq < most * rtn, "{format}: gptq {gptq} vs rtn {rtn}");
    }
}

#[test]
fn packed_gptq_weights_are_the_values_the_search_measured_on_any_thread_count() {
    let _cpu = common::busy();
    let (model, cal) = common::tiny_and_calibration();
    let hs = hessians::collect(&model, &hessian_tokens(&cal)).unwrap();
    let factors = hs.factors().unwrap();
    let Model::Llama(m) = &model else {
        unreachable!()
    };
    let l = &m.linears()[5];
    let f = factors.get(l.name()).unwrap().as_ref();
    for format in [
        "int4-g32-sym",
        "int3-g32-asym",
        "int4-channel-sym",
        "int8-tensor-sym",
        "q4_0",
        "q5_1",
        "q8_0",
        "q4_k",
        "q3_k",
        "q6_k",
    ] {
        let format: Format = format.parse().unwrap();
        let fake: Vec<f32> = l
            .fake_weight(format, Calibrator::Mse, None, Some(f), Rescale::NONE)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let packed = |threads| {
            common::on_threads(threads, || {
                l.quantized(format, Calibrator::Mse, None, Some(f), Rescale::NONE)
                    .unwrap()
            })
        };
        let (one, two) = (packed(1), packed(2));
        let bytes = |q: &QuantizedTensor| match q {
            QuantizedTensor::Int(q) => {
                let scales = q.scales.iter().flat_map(|s| s.to_le_bytes());
                [q.packed.clone(), q.zeros.clone(), scales.collect()].concat()
            }
            QuantizedTensor::Gguf(q) => q.data().unwrap().to_vec(),
            QuantizedTensor::Float(..) => unreachable!(),
        };
        assert_eq!(bytes(&one), bytes(&two), "{format}: 1 and 2 threads");
        assert_eq!(one.dequantize().unwrap(), fake, "{format}");
        assert_eq!(
            one.storage_bytes(),
            format.storage_bytes(l.shape().0, l.shape().1)
        );
    }
    // GPTQ is refused where it does not apply (float storage), naming the format.
    let e = l
        .quantized(
            "f16".parse().unwrap(),
            Calibrator::Mse,
            None,
            Some(f),
            Rescale::NONE,
        )
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("GPTQ rounding does not apply to f16"), "{e}");
}
