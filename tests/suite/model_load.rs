//! Loading models through the HF path on synthetic checkpoints (no fetched models needed): our
//! Llama against candle-transformers for tied/untied heads and BF16 storage, and clear errors
//! for unsupported architectures and configs that contradict the weights.

use crate::common;
use crate::common::synthetic::{write_llama, LlamaSpec};
use qpipe::checkpoint::Checkpoint;
use qpipe::model::llama::{sequence_logits, Llama};
use qpipe::model::Model;
use safetensors::Dtype;

#[test]
fn synthetic_llamas_match_candle_transformers() {
    let tokens: Vec<u32> = (0..40).map(|i| (i * 37 % 256) as u32).collect();
    for (tied, dtype) in [
        (true, Dtype::F32),
        (false, Dtype::F32),
        (false, Dtype::BF16),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let spec = LlamaSpec {
            tied,
            dtype,
            ..LlamaSpec::tiny()
        };
        write_llama(dir.path(), &spec, 7);
        let model = Llama::load(&Checkpoint::open(dir.path()).unwrap()).unwrap();
        assert_eq!(model.linears().len(), spec.layers * 7 + usize::from(!tied));
        let ours = sequence_logits(&model, &tokens).unwrap();
        let last = &ours[(tokens.len() - 1) * spec.vocab..];
        let reference = common::reference_llama_last_logits(dir.path(), &tokens);
        let rel = common::relative_max_diff(last, &reference);
        assert!(
            rel <= 1e-4,
            "tied {tied} {dtype:?}: relative max diff {rel}"
        );
    }
}

#[test]
fn unsupported_architecture_names_it_and_what_is_supported() {
    let dir = tempfile::tempdir().unwrap();
    write_llama(dir.path(), &LlamaSpec::tiny(), 1);
    std::fs::write(
        dir.path().join("config.json"),
        r#"{"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}"#,
    )
    .unwrap();
    let err = Model::load(&Checkpoint::open(dir.path()).unwrap())
        .err()
        .expect("GPT-2 is not supported")
        .to_string();
    assert!(err.contains("config.json"), "{err}");
    assert!(err.contains("'GPT2LMHeadModel' is not supported"), "{err}");
    assert!(
        err.contains("LlamaForCausalLM") && err.contains("BertModel"),
        "{err}"
    );
}

#[test]
fn config_that_contradicts_the_weights_names_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let spec = LlamaSpec::tiny();
    write_llama(dir.path(), &spec, 1);
    let wrong = LlamaSpec {
        intermediate: spec.intermediate + 8,
        ..spec
    };
    std::fs::write(dir.path().join("config.json"), wrong.config_json()).unwrap();
    let err = Model::load(&Checkpoint::open(dir.path()).unwrap())
        .err()
        .expect("shapes disagree")
        .to_string();
    assert!(err.contains("model.safetensors"), "{err}");
    assert!(err.contains("model.layers.0.mlp.gate_proj.weight"), "{err}");
    assert!(
        err.contains("[160, 64]") && err.contains("[168, 64]"),
        "{err}"
    );

    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    let err = Model::load(&Checkpoint::open(dir.path()).unwrap())
        .err()
        .expect("no config")
        .to_string();
    assert!(err.contains("config.json is missing"), "{err}");
}
