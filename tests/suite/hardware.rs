//! Hardware cost models: memory never grows with fewer bits, illegal formats are refused naming
//! the target, and latency is monotone in bytes where memory-bound. The measured host model's
//! accuracy is in hardware_host.rs, which holds the CPUs alone so no other test competes with
//! its timings.

use crate::common::{self, qpipe};
use qpipe::checkpoint::Checkpoint;
use qpipe::hardware::{self, model_shapes, uniform, Bound, CostModel, MatmulShape, Target};
use qpipe::quant::format::{GROUP_SIZES, INT_BITS};
use qpipe::quant::{Activation, Format, Granularity, IntFormat, Scheme};

fn tiny_shapes() -> Vec<MatmulShape> {
    let dir = common::tiny();
    model_shapes(&Checkpoint::open(dir).unwrap())
}

/// The targets whose numbers come from the profile file (not measured).
fn file_targets() -> Vec<Target> {
    hardware::targets()
        .unwrap()
        .into_iter()
        .filter(|t| t.measured.is_none())
        .collect()
}

fn granularities() -> Vec<Granularity> {
    [Granularity::Tensor, Granularity::Channel]
        .into_iter()
        .chain(GROUP_SIZES.map(Granularity::Group))
        .collect()
}

/// Every qpipe integer format plus the float ones.
fn all_formats() -> Vec<Format> {
    let mut out = Vec::new();
    for g in granularities() {
        for scheme in [Scheme::Symmetric, Scheme::Asymmetric, Scheme::PowerOfTwo] {
            for bits in INT_BITS {
                out.push(Format::Int(IntFormat {
                    bits,
                    granularity: g,
                    scheme,
                }));
            }
        }
    }
    for f in ["f16", "bf16", "f32"] {
        out.push(f.parse().unwrap());
    }
    out
}

#[test]
fn fewer_bits_never_increase_memory() {
    let _cpu = common::busy();
    let shapes = tiny_shapes();
    let mut compared = 0;
    for t in file_targets() {
        let model = CostModel::new(&t);
        for g in granularities() {
            for scheme in [Scheme::Symmetric, Scheme::Asymmetric, Scheme::PowerOfTwo] {
                for act in Activation::ALL {
                    let memory: Vec<(u32, u64)> = INT_BITS
                        .iter()
                        .filter_map(|&bits| {
                            let f = Format::Int(IntFormat {
                                bits,
                                granularity: g,
                                scheme,
                            });
                            let e = model.estimate(&uniform(&shapes, f, act), 16).ok()?;
                            Some((bits, e.memory_bytes))
                        })
                        .collect();
                    for pair in memory.windows(2) {
                        assert!(
                            pair[0].1 <= pair[1].1,
                            "{}: {g:?} {scheme:?} {act:?}: {pair:?}",
                            t.name
                        );
                        compared += 1;
                    }
                }
            }
        }
    }
    assert!(compared > 50, "only {compared} comparisons");
}

#[test]
fn an_illegal_format_is_rejected_naming_the_target() {
    let shapes = tiny_shapes();
    let trt = hardware::target("tensorrt").unwrap();
    let int2: Format = "int2-g32-sym".parse().unwrap();
    let e = CostModel::new(&trt)
        .estimate(&uniform(&shapes, int2, Activation::Float), 16)
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "tensorrt: int2-g32-sym weights are not supported (TensorRT supports INT4 weight-only \
         (per-channel or groups of 64/128) and INT8 (symmetric, W8A8 or weight-only), F16, BF16, F32)"
    );
    let ane = hardware::target("apple-ane").unwrap();
    let e = CostModel::new(&ane)
        .estimate(
            &uniform(&shapes, "q4_0".parse().unwrap(), Activation::Float),
            16,
        )
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("apple-ane: q4_0 weights are not supported"),
        "{e}"
    );
    // The same through the CLI: one line on stderr, exit 2.
    let tiny = common::tiny();
    let (code, out, err) = qpipe(&[
        "targets",
        "--model",
        tiny.to_str().unwrap(),
        "--format",
        "int4-g128-sym",
        "--activations",
        "8",
        "--target",
        "tensorrt",
    ]);
    assert_eq!((code, out.as_str()), (2, ""), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(
            "qpipe: error: tensorrt: int4-g128-sym weights with a8 activations are not supported"
        ),
        "{err}"
    );
}

#[test]
fn latency_is_monotone_in_bytes_for_memory_bound_shapes() {
    // One decode step of a 4096x4096 matmul: few MACs per byte.
    let shape = MatmulShape {
        name: "w".into(),
        rows: 4096,
        cols: 4096,
    };
    for t in file_targets() {
        let model = CostModel::new(&t);
        let mut points: Vec<(u64, f64, String)> = Vec::new();
        for f in all_formats() {
            for act in Activation::ALL {
                let Ok(c) = model.matmul(&uniform(std::slice::from_ref(&shape), f, act)[0], 1)
                else {
                    continue;
                };
                if c.bound == Bound::Memory {
                    points.push((
                        c.weight_bytes + c.activation_bytes,
                        c.latency_s,
                        format!("{f} {act:?}"),
                    ));
                }
            }
        }
        assert!(points.len() >= 2, "{}: {points:?}", t.name);
        points.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
        for p in points.windows(2) {
            assert!(p[0].1 <= p[1].1, "{}: {:?} then {:?}", t.name, p[0], p[1]);
        }
    }
}

#[test]
fn a_measured_target_prints_its_validation_as_json() {
    let _cpu = common::busy();
    // Fits are keyed by format, and JSON keys must be strings: before they were written by
    // name, `--json` printed an empty document (and exit 0) for `host` and `llama-cpp`.
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("measurements.json");
    let tiny = common::tiny();
    let (code, out, err) = qpipe(&[
        "targets",
        "--model",
        tiny.to_str().unwrap(),
        "--format",
        "int8-channel-sym",
        "--target",
        "host",
        "--tokens",
        "8",
        "--cache",
        cache.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let validation = &v[0]["validation"];
    let fit = &validation["calibration"]["fits"]["int8-channel-sym"]["prefill"];
    assert!(fit["s_per_mac"].as_f64().unwrap() > 0.0, "{fit}");
    // The tiny model's four distinct shapes, each at one token and at eight.
    let checks = validation["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 8, "{validation}");
    for c in checks {
        let (p, m) = (
            c["predicted_s"].as_f64().unwrap(),
            c["measured_s"].as_f64().unwrap(),
        );
        assert!(p > 0.0 && m > 0.0, "{c}");
        assert!(
            (c["error"].as_f64().unwrap() - (p / m - 1.0)).abs() < 1e-9,
            "{c}"
        );
    }
    assert!(cache.is_file(), "the measurements are cached");
}
