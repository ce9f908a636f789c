//! Fixtures shared by the integration tests: the committed demo model and texts, synthetic
//! checkpoints, hand-assembled files for the bad-input tests, and the lock that keeps busy tests
//! out of timings.

pub mod fuzz;
pub mod synthetic;

use qpipe::calib::{self, Stats};
use qpipe::checkpoint::Checkpoint;
use qpipe::export::packed::{self, Choice, Folded, Others};
use qpipe::model::llama::{sequence_logits, Llama};
use qpipe::model::Model;
use qpipe::quant::{ActivationQuant, Calibrator, Format, Rescale, Symmetry, Transform};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// The CPUs, between the tests of this binary (which run concurrently): a test that times the
/// machine holds them exclusively ([`timing`]), every test that keeps a core busy for more than
/// a tenth of a second holds them shared ([`busy`]), so no such work lands in the timings. (It
/// would also run inside them: rayon's global pool is shared, and a thread waiting on its own
/// parallel work runs other tests' jobs.)
static CPU: RwLock<()> = RwLock::new(());

/// Held for the whole of a test that keeps a core busy for more than a tenth of a second.
pub fn busy() -> RwLockReadGuard<'static, ()> {
    CPU.read().unwrap_or_else(PoisonError::into_inner)
}

/// Held for the whole of a test that times the machine: waits for the [`busy`] tests under way
/// and holds off new ones.
pub fn timing() -> RwLockWriteGuard<'static, ()> {
    CPU.write().unwrap_or_else(PoisonError::into_inner)
}

/// The crate root, which the committed models, texts and fixtures are relative to.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The committed demo model `models/tiny` (trained by examples/train-tiny.rs).
pub fn tiny() -> PathBuf {
    root().join("models/tiny")
}

/// The committed text `calibration-data/{name}`.
pub fn calibration_data(name: &str) -> PathBuf {
    root().join("calibration-data").join(name)
}

/// The committed text file `relative` (to the crate root).
pub fn read_text(relative: &str) -> String {
    let path = root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `calibration-data/{name}` in the tokens of `ckpt`'s tokenizer.
pub fn tokens(ckpt: &Checkpoint, name: &str) -> Vec<u32> {
    let tok = qpipe::data::tokenizer(ckpt).unwrap();
    qpipe::data::encode(&tok, &calibration_data(name).into()).unwrap()
}

/// The demo model and its calibration text (sotu-calibration.txt) in its tokens.
pub fn tiny_and_calibration() -> (Model, Vec<u32>) {
    let ckpt = Checkpoint::open(tiny()).unwrap();
    (
        Model::load(&ckpt).unwrap(),
        tokens(&ckpt, "sotu-calibration.txt"),
    )
}

/// The first `n` tokens of the held-out text (moby-dick-eval.txt) for the model in `dir`.
pub fn held_out_tokens(dir: &Path, n: usize) -> Vec<u32> {
    tokens(&Checkpoint::open(dir).unwrap(), "moby-dick-eval.txt")[..n].to_vec()
}

/// The causal LM `model` is.
pub fn llama(model: &Model) -> &Llama {
    match model {
        Model::Llama(m) => m,
        Model::Bert(_) => panic!("a causal LM"),
    }
}

/// A causal LM with its calibration statistics, and held-out windows with their float logits.
pub struct Calibrated {
    /// The model, float weights.
    pub model: Model,
    /// Its calibration statistics.
    pub stats: Stats,
    /// Held-out windows of tokens.
    pub held_out: Vec<Vec<u32>>,
    /// The float model's logits on each window.
    pub reference: Vec<Vec<f32>>,
}

/// The model in `dir` calibrated on `calib_tokens` of sotu-calibration.txt (sequences of 128,
/// top-8 reference), and `eval_windows` windows of 128 tokens of moby-dick-eval.txt.
pub fn calibrated(dir: &Path, calib_tokens: usize, eval_windows: usize) -> Calibrated {
    let ckpt = Checkpoint::open(dir).unwrap();
    let model = Model::load(&ckpt).unwrap();
    let cal = tokens(&ckpt, "sotu-calibration.txt");
    let stats =
        calib::collect(&model, &qpipe::data::sequences(&cal, 128, calib_tokens), 8).unwrap();
    let eval = tokens(&ckpt, "moby-dick-eval.txt");
    let held_out: Vec<Vec<u32>> = qpipe::data::sequences(&eval, 128, eval_windows * 128)
        .into_iter()
        .map(|s| s.to_vec())
        .collect();
    let reference = held_out
        .iter()
        .map(|s| sequence_logits(llama(&model), s).unwrap())
        .collect();
    Calibrated {
        model,
        stats,
        held_out,
        reference,
    }
}

/// `f` on a rayon pool of `threads` threads, for the thread-count independence checks.
pub fn on_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

/// The sentence embedding `bert` computes for the single sequence `ids` (every token attended).
pub fn bert_embedding(bert: &qpipe::model::bert::Bert, ids: &[u32]) -> Vec<f32> {
    let t = candle_core::Tensor::new(ids, &candle_core::Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let e = bert.embed(&t, &t.ones_like().unwrap()).unwrap();
    e.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// The provenance tests write packed checkpoints with.
pub fn test_provenance() -> qpipe::packed::Provenance {
    qpipe::packed::Provenance {
        input_sha256: String::new(),
        calibration_sha256: String::new(),
        seed: 0,
        qpipe_version: "test".into(),
        command: Vec::new(),
    }
}

/// A safetensors file assembled by hand: 8-byte length, `header` padded to 8 bytes, `data`.
pub fn raw_safetensors(header: &str, data: &[u8]) -> Vec<u8> {
    let mut h = header.as_bytes().to_vec();
    h.resize(h.len().next_multiple_of(8), b' ');
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(data);
    out
}

/// Runs the qpipe binary with `args`; returns (exit code, stdout, stderr).
pub fn qpipe(args: &[&str]) -> (i32, String, String) {
    qpipe_in(root(), args)
}

/// [`qpipe`] run in the working directory `dir`. `QPIPE_BIN` names another binary to run
/// instead (an older build, to see a test fail where a fix is missing).
pub fn qpipe_in(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let bin = std::env::var_os("QPIPE_BIN")
        .map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_qpipe")), PathBuf::from);
    let out = std::process::Command::new(bin)
        .current_dir(dir)
        .args(args)
        .output()
        .expect("qpipe binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Path of a model fetched by `scripts/fetch-models.sh` (e.g. "all-minilm-l6-v2"), if present.
pub fn fetched_model(name: &str) -> Option<PathBuf> {
    fetched(&format!("models/{name}"))
}

/// The directory `relative` (to the crate root) that `scripts/fetch-models.sh` fills, if present.
///
/// Missing ones skip the test locally (with a note on stderr) but fail it under CI=true, where
/// `.ci/run` fetches them first: a test that silently skips in CI would prove nothing.
pub fn fetched(relative: &str) -> Option<PathBuf> {
    let dir = root().join(relative);
    if dir.is_dir() {
        return Some(dir);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "{} is missing: run scripts/fetch-models.sh (CI must run it before the tests)",
            dir.display()
        );
    }
    eprintln!(
        "skipping: {} not fetched (scripts/fetch-models.sh)",
        dir.display()
    );
    None
}

/// Last-position logits of candle-transformers' llama (it returns only those) for the HF
/// checkpoint in `dir`: the independent reference our Llama is tested against.
pub fn reference_llama_last_logits(dir: &Path, tokens: &[u32]) -> Vec<f32> {
    use candle_core::{DType, Device, Tensor};
    use candle_transformers::models::llama as reference;
    let cfg: reference::LlamaConfig =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    let cfg = cfg.into_config(false);
    let model = reference::Llama::load(reference_weights(dir), &cfg).unwrap();
    let mut cache = reference::Cache::new(false, DType::F32, &cfg, &Device::Cpu).unwrap();
    let ids = Tensor::new(tokens, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let logits = model.forward(&ids, 0, &mut cache).unwrap();
    logits.flatten_all().unwrap().to_vec1().unwrap()
}

/// max |a - b| / max |b|: the relative logit error the reference tests bound.
pub fn relative_max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let diff = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    diff / b.iter().map(|v| v.abs()).fold(0f32, f32::max)
}

/// candle-nn's own loader over `dir/model.safetensors` (F32), for the candle-transformers
/// reference models.
pub fn reference_weights(dir: &Path) -> candle_nn::VarBuilder<'static> {
    // SAFETY: the model file is not modified while mapped.
    unsafe {
        candle_nn::VarBuilder::from_mmaped_safetensors(
            &[dir.join("model.safetensors")],
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
        )
        .unwrap()
    }
}

/// The first `n` sentences of 5 to 60 words in calibration-data/sotu-eval.txt (held-out text).
pub fn sotu_sentences(n: usize) -> Vec<String> {
    let text = read_text("calibration-data/sotu-eval.txt");
    let text = text.replace(['\n', '\r'], " ");
    let out: Vec<String> = text
        .split(". ")
        .map(str::trim)
        .filter(|s| (5..=60).contains(&s.split_whitespace().count()))
        .take(n)
        .map(str::to_string)
        .collect();
    assert_eq!(out.len(), n);
    out
}

/// Mean over `windows` of the mean next-token KLD of `model` as it stands (quantized) against
/// `reference`, the float logits of the same windows.
pub fn mean_kld<W: AsRef<[u32]>>(model: &Llama, windows: &[W], reference: &[Vec<f32>]) -> f64 {
    mean_kld_of(model, windows, reference, |w| {
        sequence_logits(model, w).unwrap()
    })
}

/// [`mean_kld`] with the logits of a window (`[seq, vocab]` row-major) from `logits`.
pub fn mean_kld_of<W: AsRef<[u32]>>(
    model: &Llama,
    windows: &[W],
    reference: &[Vec<f32>],
    logits: impl Fn(&[u32]) -> Vec<f32>,
) -> f64 {
    let vocab = model.config().vocab_size;
    let mut total = 0.0;
    for (w, r) in windows.iter().zip(reference) {
        let w = w.as_ref();
        let q = logits(w);
        let n = w.len() - 1;
        total += qpipe::reference::metrics::compare_logits(
            &r[..n * vocab],
            &q[..n * vocab],
            vocab,
            &w[1..],
        )
        .unwrap()
        .mean_kld;
    }
    total / windows.len() as f64
}

/// llama.cpp's convert_hf_to_gguf.py `permute` (reshape to (heads, 2, d/2, cols), swap axes 1
/// and 2), transcribed independently of the importer's inverse.
pub fn llama_cpp_permute(hf: &[f32], heads: usize, cols: usize) -> Vec<f32> {
    let d = hf.len() / cols / heads;
    let mut out = Vec::with_capacity(hf.len());
    for h in 0..heads {
        for i in 0..d / 2 {
            for j in 0..2 {
                let row = h * d + j * (d / 2) + i;
                out.extend_from_slice(&hf[row * cols..(row + 1) * cols]);
            }
        }
    }
    out
}

/// The GGUF name of an HF Llama tensor name, spelled out independently of the library's table.
pub fn gguf_name(hf: &str) -> String {
    let fixed = [
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("model.norm.weight", "output_norm.weight"),
    ];
    if let Some((_, g)) = fixed.iter().find(|(h, _)| *h == hf) {
        return g.to_string();
    }
    let rest = hf.strip_prefix("model.layers.").unwrap();
    let (layer, rest) = rest.split_once('.').unwrap();
    let role = [
        ("input_layernorm.weight", "attn_norm.weight"),
        ("post_attention_layernorm.weight", "ffn_norm.weight"),
        ("self_attn.q_proj.weight", "attn_q.weight"),
        ("self_attn.q_proj.bias", "attn_q.bias"),
        ("self_attn.k_proj.weight", "attn_k.weight"),
        ("self_attn.k_proj.bias", "attn_k.bias"),
        ("self_attn.v_proj.weight", "attn_v.weight"),
        ("self_attn.o_proj.weight", "attn_output.weight"),
        ("mlp.gate_proj.weight", "ffn_gate.weight"),
        ("mlp.up_proj.weight", "ffn_up.weight"),
        ("mlp.down_proj.weight", "ffn_down.weight"),
    ]
    .iter()
    .find(|(h, _)| *h == rest)
    .unwrap()
    .1;
    format!("blk.{layer}.{role}")
}

/// The model of `source` (loaded as `model`) packed into `dir`: per quantizable weight `i`,
/// `choose(i, name, multiplies)`'s format and input quantizer; the other tensors as `others`.
pub fn pack(
    source: &Path,
    model: &Model,
    dir: &Path,
    others: Others,
    choose: impl Fn(usize, &str, bool) -> (Format, Option<ActivationQuant>),
) -> PathBuf {
    let ckpt = Checkpoint::open(source).unwrap();
    let choices: BTreeMap<String, Choice<'_>> = model
        .quantizable()
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let matmul = l.usage().multiplies() && !l.usage().gathers();
            let (format, input_quant) = choose(i, l.name(), matmul);
            let choice = Choice {
                format,
                calibrator: Calibrator::Mse,
                importance: None,
                gptq: None,
                input_quant,
                transform: Transform::None,
                rescale: Rescale::NONE,
            };
            (l.name().to_string(), choice)
        })
        .collect();
    let path = dir.join("model.qpipe.safetensors");
    std::fs::copy(source.join("config.json"), dir.join("config.json")).unwrap();
    let provenance = test_provenance();
    packed::write(
        &path,
        &ckpt,
        model,
        &choices,
        &provenance,
        others,
        &Folded::new(),
    )
    .unwrap();
    path
}

/// The input quantizer of `name` at `bits` from its calibration histogram.
pub fn a(stats: &qpipe::calib::Stats, name: &str, bits: u32) -> ActivationQuant {
    let h = &stats.linear(name).unwrap().histogram;
    ActivationQuant::calibrated(Calibrator::MinMax, h, bits, Symmetry::Asymmetric).unwrap()
}
