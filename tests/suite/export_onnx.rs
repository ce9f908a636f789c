//! ONNX export run by onnxruntime (the PyPI package scripts/fetch-models.sh installs): the
//! graph passes onnx.checker's full check, and onnxruntime's logits are those of qpipe's own
//! forward pass on the same packed checkpoint: within 1e-3 (relative to the largest logit) for
//! float-input layers with every integer width and scheme, and with the same held-out mean KL
//! (within 3%) when A8 and A16 inputs are mixed.

use crate::common::{self, a, calibrated, llama, pack, tiny};
use qpipe::checkpoint::Checkpoint;
use qpipe::export::onnx;
use qpipe::export::packed::Others;
use qpipe::model::llama::sequence_logits;
use qpipe::model::Model;
use qpipe::packed::Packed;
use qpipe::quant::{ActivationQuant, FloatType, Format};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The Python packages of scripts/fetch-models.sh (the PYTHONPATH), if installed.
fn pylib() -> Option<PathBuf> {
    common::fetched("models/.pylib/onnxruntime").and_then(|p| p.parent().map(Path::to_path_buf))
}

/// How onnxruntime computes.
#[derive(Clone, Copy, PartialEq)]
enum Compute {
    /// Its defaults, which fuse QDQ patterns into its own kernels: int4 weight matmuls into
    /// MatMulNBits with int8 activations, A8 QDQ matmuls into integer ones.
    Default,
    /// The graph as written: basic optimisations only (constant folding), no fusions.
    Graph,
}

/// onnxruntime's logits of `model` on `windows` (equal lengths), one `[seq, vocab]` per window.
fn ort_logits(lib: &Path, model: &Path, windows: &[Vec<u32>], compute: Compute) -> Vec<Vec<f32>> {
    let dir = tempfile::tempdir().unwrap();
    let (tokens, out) = (dir.path().join("tokens.bin"), dir.path().join("logits.bin"));
    let ids: Vec<u8> = windows
        .iter()
        .flatten()
        .flat_map(|&t| i64::from(t).to_le_bytes())
        .collect();
    std::fs::write(&tokens, ids).unwrap();
    let run = std::process::Command::new("python3")
        .arg(common::root().join("tests/fixtures/onnx_run.py"))
        .arg(model)
        .arg(&tokens)
        .arg(windows.len().to_string())
        .arg(windows[0].len().to_string())
        .arg(&out)
        .args((compute == Compute::Graph).then_some("graph"))
        .env("PYTHONPATH", lib)
        .output()
        .expect("python3 runs");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let values: Vec<f32> = std::fs::read(&out)
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let per = values.len() / windows.len();
    values.chunks_exact(per).map(<[f32]>::to_vec).collect()
}

/// The encodings file of `written` holds every quantized weight's grid as AIMET reads it
/// (x = (q + offset) * scale over the unsigned codes of the stored width, scales per output
/// channel then per block) and every input's quantizer, under names the graph has: rebuilding
/// each weight from its packed codes and the file's scales and offsets gives qpipe's own
/// dequantized values exactly. Returns how many weights and inputs it checked.
fn check_encodings(packed: &Packed, written: &onnx::Written) -> (usize, usize) {
    use onnx_protobuf::Message;
    use qpipe::quant::QuantizedTensor;
    let e = written.encodings.as_ref().expect("an encodings file");
    assert_eq!(e.path, written.path.with_extension("encodings"));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&e.path).unwrap()).unwrap();
    assert_eq!(json["version"], "1.0.0");
    let graph = onnx_protobuf::ModelProto::parse_from_bytes(&std::fs::read(&written.path).unwrap())
        .unwrap()
        .graph
        .unwrap();
    let produced: std::collections::HashSet<&str> = graph
        .node
        .iter()
        .flat_map(|n| n.output.iter())
        .chain(graph.initializer.iter().map(|t| &t.name))
        .map(String::as_str)
        .collect();
    let entries = |section: &str| -> BTreeMap<String, serde_json::Value> {
        json[section]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| {
                let name = v["name"].as_str().unwrap().to_string();
                assert!(
                    produced.contains(name.as_str()),
                    "{name} is not in the graph"
                );
                (name, v.clone())
            })
            .collect()
    };
    let (params, activations) = (entries("param_encodings"), entries("activation_encodings"));
    let mut weights = 0;
    for (name, entry) in &packed.manifest.tensors {
        let QuantizedTensor::Int(q) = packed.weight(name).unwrap() else {
            continue;
        };
        let enc = &params[name];
        let bw = enc["bw"].as_u64().unwrap() as u32;
        assert!(bw == 4 || bw == 8, "{name}: bw {bw}");
        let scale: Vec<f32> = enc["scale"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let offset: Vec<i64> = enc["offset"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        let (rows, cols) = (q.rows, q.cols);
        let block = match enc["enc_type"].as_str().unwrap() {
            "PER_TENSOR" => rows * cols,
            "PER_CHANNEL" => cols,
            "PER_BLOCK" => enc["block_size"].as_u64().unwrap() as usize,
            other => panic!("{name}: {other}"),
        };
        let groups = cols.div_ceil(block).max(1);
        let signed = enc["is_sym"].as_bool().unwrap();
        let bits = q.format.bits;
        let expected = q.dequantize().unwrap();
        let row_bytes = q.packed.len() / rows;
        let mut codes = vec![0u8; cols];
        for r in 0..rows {
            qpipe_kernels::unpack(
                &q.packed[r * row_bytes..(r + 1) * row_bytes],
                bits,
                &mut codes,
            )
            .unwrap();
            for (c, &code) in codes.iter().enumerate() {
                // The stored width's unsigned code of the same value.
                let u = if signed {
                    i64::from(code) - (1 << (bits - 1)) + (1 << (bw - 1))
                } else {
                    i64::from(code)
                };
                assert!((0..1 << bw).contains(&u));
                let g = if block == rows * cols {
                    0
                } else {
                    r * groups + c / block
                };
                let x = (u + offset[g]) as f32 * scale[g];
                assert_eq!(x, expected[r * cols + c], "{name}[{r}, {c}]");
            }
        }
        if let Some(a) = entry.input_quant {
            let reads: Vec<_> = activations
                .values()
                .filter(|v| v["scale"][0].as_f64().map(|s| s as f32) == Some(a.scale))
                .collect();
            assert!(
                !reads.is_empty(),
                "{name}: no encoding with its input's scale"
            );
            assert!(reads
                .iter()
                .all(|v| v["bw"] == a.bits && v["offset"][0].as_i64() == Some(-(a.zero as i64))));
        }
        weights += 1;
    }
    assert_eq!(
        weights,
        params.values().filter(|v| v["dtype"] == "INT").count()
    );
    (weights, activations.len())
}

#[test]
fn onnxruntime_computes_what_qpipe_computes_on_the_packed_weights() {
    let _cpu = common::busy();
    let Some(lib) = pylib() else { return };
    let c = calibrated(&tiny(), 1024, 4);
    let dir = tempfile::tempdir().unwrap();
    let formats: Vec<Format> = [
        "int4-g32-sym",
        "int4-channel-sym",
        "int3-g32-asym",
        "int8-channel-sym",
        "int5-g32-asym",
        "int4-g64-asym",
        "int6-g128-sym",
        "int8-tensor-sym",
        "int2-g32-asym",
        "int4-g128-sym",
    ]
    .iter()
    .map(|f| f.parse().unwrap())
    .collect();

    // Float inputs: the logits agree within 1e-3 of the largest. The tied table in
    // int4-g32-asym, norms narrowed to F16.
    let table: Format = "int4-g32-asym".parse().unwrap();
    let f16 = Others::Narrowed(FloatType::F16);
    let path = pack(&tiny(), &c.model, dir.path(), f16, |i, _, matmul| {
        (
            if matmul {
                formats[i % formats.len()]
            } else {
                table
            },
            None,
        )
    });
    let packed = Packed::open(&path).unwrap();
    let model = Model::load_packed(&packed).unwrap();
    let aimet = Some(onnx::EncodingsFormat::Aimet);
    let written = onnx::write(
        &packed,
        &dir.path().join("model.onnx"),
        onnx::Data::Auto,
        aimet,
    )
    .unwrap();
    let (weights, inputs) = check_encodings(&packed, &written);
    assert_eq!((weights, inputs), (packed.manifest.tensors.len(), 0));
    let mut widened: Vec<&str> = written.widened.iter().map(|w| w.format.as_str()).collect();
    widened.sort();
    widened.dedup();
    assert_eq!(
        widened,
        [
            "int2-g32-asym",
            "int3-g32-asym",
            "int5-g32-asym",
            "int6-g128-sym"
        ]
    );
    let ours: Vec<Vec<f32>> = c
        .held_out
        .iter()
        .map(|w| sequence_logits(llama(&model), w).unwrap())
        .collect();
    let exact = ort_logits(&lib, &written.path, &c.held_out, Compute::Graph);
    for (a, b) in exact.iter().zip(&ours) {
        let err = common::relative_max_diff(a, b);
        eprintln!(
            "float inputs: onnxruntime vs qpipe logits, max difference {err:.2e} of the largest"
        );
        assert!(err <= 1e-3, "onnxruntime vs qpipe: {err:e}");
    }
    // The same model with its initializers as external data computes the same.
    let external = dir.path().join("external.onnx");
    let split = onnx::write(&packed, &external, onnx::Data::External, None).unwrap();
    assert!(split.encodings.is_none() && !external.with_extension("encodings").exists());
    let data = split.data_path.as_ref().unwrap();
    assert!(std::fs::metadata(&external).unwrap().len() < 64 * 1024);
    assert!(std::fs::metadata(data).unwrap().len() > 1_000_000);
    assert_eq!(
        ort_logits(&lib, &external, &c.held_out, Compute::Graph),
        exact,
        "external data"
    );
    // With onnxruntime's defaults (int8 activations in its int4 matmuls) the held-out KL
    // stays within 3% of qpipe's.
    let fused = ort_logits(&lib, &written.path, &c.held_out, Compute::Default);
    compare_kld(&c, &model, &fused, "float inputs");

    // A8 and A16 inputs alternating by layer: the same held-out KL within 3%.
    let layers = llama(&c.model).num_layers();
    let dir = tempfile::tempdir().unwrap();
    let path = pack(&tiny(), &c.model, dir.path(), f16, |i, name, matmul| {
        let bits = if (i / 7) % 2 == 0 { 8 } else { 16 };
        match matmul {
            true => (formats[i % 3], Some(a(&c.stats, name, bits))),
            false => (table, None),
        }
    });
    assert!(layers >= 2);
    let packed = Packed::open(&path).unwrap();
    let model = Model::load_packed(&packed).unwrap();
    let written = onnx::write(
        &packed,
        &dir.path().join("model.onnx"),
        onnx::Data::Auto,
        aimet,
    )
    .unwrap();
    // One encoding per quantized tensor: q, k and v (and gate and up) read one input, which
    // gets one QDQ where their quantizers agree and a copy per disagreeing reader.
    let (_, inputs) = check_encodings(&packed, &written);
    let read = |name: &str| packed.manifest.tensors[name].input_quant;
    let mut expected = 0;
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        for group in [
            &["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"][..],
            &["self_attn.o_proj"],
            &["mlp.gate_proj", "mlp.up_proj"],
            &["mlp.down_proj"],
        ] {
            let mut seen: Vec<ActivationQuant> = Vec::new();
            for w in group {
                let q = read(&format!("{p}.{w}.weight")).unwrap();
                if !seen.contains(&q) {
                    seen.push(q);
                }
            }
            expected += seen.len();
        }
    }
    assert_eq!(inputs, expected);
    let theirs = ort_logits(&lib, &written.path, &c.held_out, Compute::Default);
    compare_kld(&c, &model, &theirs, "A8/A16 inputs");
}

/// The held-out mean KL of onnxruntime's logits `theirs` against the float model is within 3%
/// of that of qpipe's forward pass on the packed `model`.
fn compare_kld(c: &common::Calibrated, model: &Model, theirs: &[Vec<f32>], what: &str) {
    let ours = common::mean_kld(llama(model), &c.held_out, &c.reference);
    let next = std::cell::Cell::new(0);
    let ort = common::mean_kld_of(llama(model), &c.held_out, &c.reference, |_| {
        next.set(next.get() + 1);
        theirs[next.get() - 1].clone()
    });
    eprintln!("{what}: held-out KL qpipe {ours:.5e}, onnxruntime {ort:.5e}");
    assert!(
        (ort - ours).abs() <= 0.03 * ours,
        "{what}: onnxruntime {ort} vs qpipe {ours}"
    );
}

/// all-MiniLM-L6-v2 as intel-vnni runs it (W8A8: int8-channel-sym weights, A8 inputs): the
/// sentence embeddings onnxruntime computes have the held-out mean 1 - cos against the float
/// model's of qpipe's packed forward, within 3%; with float inputs (int4 and int8 weights) the
/// embeddings agree within 1e-3.
#[test]
fn onnxruntime_runs_minilm_as_qpipe_does() {
    let _cpu = common::busy();
    let (Some(lib), Some(dir)) = (pylib(), common::fetched_model("all-minilm-l6-v2")) else {
        return;
    };
    let ckpt = Checkpoint::open(&dir).unwrap();
    let model = Model::load(&ckpt).unwrap();
    let cal = common::tokens(&ckpt, "sotu-calibration.txt");
    let stats = qpipe::calib::collect(&model, &qpipe::data::sequences(&cal, 128, 2048), 8).unwrap();
    let eval = common::tokens(&ckpt, "moby-dick-eval.txt");
    let windows: Vec<Vec<u32>> = qpipe::data::sequences(&eval, 128, 8 * 128)
        .into_iter()
        .map(<[u32]>::to_vec)
        .collect();
    let embed = |m: &Model| -> Vec<Vec<f32>> {
        let Model::Bert(bert) = m else {
            panic!("an encoder")
        };
        windows
            .iter()
            .map(|w| common::bert_embedding(bert, w))
            .collect()
    };
    let reference = embed(&model);
    let one_minus_cos = |got: &[Vec<f32>]| -> f64 {
        got.iter()
            .zip(&reference)
            .map(|(a, b)| {
                let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(x * y)).sum();
                1.0 - dot
            })
            .sum::<f64>()
            / got.len() as f64
    };
    let int8: Format = "int8-channel-sym".parse().unwrap();
    let int4: Format = "int4-g32-sym".parse().unwrap();
    for w8a8 in [false, true] {
        let out = tempfile::tempdir().unwrap();
        let path = pack(
            &dir,
            &model,
            out.path(),
            Others::AsStored,
            |i, name, matmul| match (matmul, w8a8) {
                (true, true) => (int8, Some(a(&stats, name, 8))),
                (true, false) => (if i % 2 == 0 { int8 } else { int4 }, None),
                (false, _) => (int8, None),
            },
        );
        let packed = Packed::open(&path).unwrap();
        let ours = embed(&Model::load_packed(&packed).unwrap());
        let encodings = w8a8.then_some(onnx::EncodingsFormat::Aimet);
        let written = onnx::write(
            &packed,
            &out.path().join("model.onnx"),
            onnx::Data::Auto,
            encodings,
        )
        .unwrap();
        if w8a8 {
            check_encodings(&packed, &written);
        }
        let theirs = ort_logits(&lib, &written.path, &windows, Compute::Graph);
        let fused = ort_logits(&lib, &written.path, &windows, Compute::Default);
        let (q, o, d) = (
            one_minus_cos(&ours),
            one_minus_cos(&theirs),
            one_minus_cos(&fused),
        );
        eprintln!(
            "all-MiniLM-L6-v2 w8a8 {w8a8}: held-out 1 - cos qpipe {q:.5e}, onnxruntime {o:.5e} \
             (its default fusions: {d:.5e})"
        );
        if w8a8 {
            assert!((o - q).abs() <= 0.03 * q, "onnxruntime {o} vs qpipe {q}");
        } else {
            for (a, b) in theirs.iter().zip(&ours) {
                let err = a
                    .iter()
                    .zip(b)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0f32, f32::max);
                assert!(err <= 1e-3, "embeddings differ by {err}");
            }
        }
    }
}

/// SmolLM2-135M as hexagon runs it (W4A16: int4-g32-sym weights, A16 inputs, int8 table, F16
/// norms): model.onnx runs in onnxruntime with qpipe's held-out KL (within 3%), and is within
/// 5% of the packed checkpoint's size.
#[test]
#[ignore = "needs scripts/fetch-models.sh; about 2 minutes"]
fn smollm2_w4a16_onnx_runs_in_onnxruntime() {
    let _cpu = common::busy();
    let (Some(lib), Some(dir)) = (pylib(), common::fetched_model("smollm2-135m")) else {
        return;
    };
    let c = calibrated(&dir, 1024, 4);
    let out = tempfile::tempdir().unwrap();
    let (w4, w8): (Format, Format) = (
        "int4-g32-sym".parse().unwrap(),
        "int8-channel-sym".parse().unwrap(),
    );
    let f16 = Others::Narrowed(FloatType::F16);
    let path = pack(
        &dir,
        &c.model,
        out.path(),
        f16,
        |_, name, matmul| match matmul {
            true => (w4, Some(a(&c.stats, name, 16))),
            false => (w8, None),
        },
    );
    let packed = Packed::open(&path).unwrap();
    let model = Model::load_packed(&packed).unwrap();
    let written = onnx::write(
        &packed,
        &out.path().join("model.onnx"),
        onnx::Data::Auto,
        Some(onnx::EncodingsFormat::Aimet),
    )
    .unwrap();
    check_encodings(&packed, &written);
    let packed_bytes = std::fs::metadata(&path).unwrap().len();
    eprintln!(
        "SmolLM2 W4A16: model.onnx {} bytes, packed {packed_bytes} bytes ({:+.2}%)",
        written.file_bytes,
        100.0 * (written.file_bytes as f64 / packed_bytes as f64 - 1.0)
    );
    assert!(written.file_bytes as f64 <= 1.05 * packed_bytes as f64);
    for compute in [Compute::Graph, Compute::Default] {
        let theirs = ort_logits(&lib, &written.path, &c.held_out, compute);
        let what = if compute == Compute::Graph {
            "SmolLM2 W4A16 (graph)"
        } else {
            "SmolLM2 W4A16 (onnxruntime defaults)"
        };
        compare_kld(&c, &model, &theirs, what);
    }
}

/// `qpipe export` on a bad packed checkpoint (a corrupt manifest; an architecture without an
/// ONNX builder) exits 2 with one line naming the problem, and writes nothing.
#[test]
fn export_of_a_bad_packed_checkpoint_exits_2_and_writes_nothing() {
    let _cpu = common::busy();
    let (model, _) = common::tiny_and_calibration();
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good");
    std::fs::create_dir(&good).unwrap();
    let int4: Format = "int4-g32-sym".parse().unwrap();
    let path = pack(&tiny(), &model, &good, Others::AsStored, |_, _, _| {
        (int4, None)
    });
    let (code, stdout, stderr) =
        common::qpipe(&["export", path.to_str().unwrap(), "--format", "onnx"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("model.onnx"), "{stdout}");
    assert!(good.join("model.onnx").is_file());

    let bytes = std::fs::read(&path).unwrap();
    let config = std::fs::read_to_string(good.join("config.json")).unwrap();
    let case = |name: &str, bytes: &[u8], config: &str| -> (PathBuf, String) {
        let d = dir.path().join(name);
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("model.qpipe.safetensors"), bytes).unwrap();
        std::fs::write(d.join("config.json"), config).unwrap();
        let out = d.join("out.onnx");
        let (code, _, stderr) = common::qpipe(&[
            "export",
            d.to_str().unwrap(),
            "--format",
            "onnx",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_eq!(code, 2, "{name}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(!out.exists(), "{name}: a partial file was left");
        (d, stderr)
    };
    // A format name in the manifest no qpipe knows (same length, so the header stays valid).
    let at = bytes
        .windows(12)
        .position(|w| w == b"int4-g32-sym")
        .unwrap();
    let mut corrupt = bytes.clone();
    corrupt[at..at + 12].copy_from_slice(b"int4-g32-syx");
    let (d, e) = case("corrupt", &corrupt, &config);
    assert!(
        e.contains("manifest") && e.contains(d.to_str().unwrap()),
        "{e}"
    );
    let gpt2 = config.replace("LlamaForCausalLM", "GPT2LMHeadModel");
    let (_, e) = case("gpt2", &bytes, &gpt2);
    assert!(
        e.contains("GPT2LMHeadModel") && e.contains("no ONNX builder"),
        "{e}"
    );
    // GGUF blocks have no ONNX operator: the error names the weight's type.
    let gguf = dir.path().join("gguf-src");
    std::fs::create_dir(&gguf).unwrap();
    let q4_0: Format = "q4_0".parse().unwrap();
    let path = pack(&tiny(), &model, &gguf, Others::AsStored, |_, _, m| {
        (if m { q4_0 } else { int4 }, None)
    });
    let (_, e) = case("gguf", &std::fs::read(path).unwrap(), &config);
    assert!(e.contains("q4_0") && e.contains("no operator"), "{e}");
}
