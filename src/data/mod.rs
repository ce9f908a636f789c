//! Token streams: calibration and evaluation text turned into token ids with the model's own
//! tokenizer, and cut into the fixed-length sequences forward passes run on.

pub mod text;

pub use text::{Builtin, Text};

use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use tokenizers::Tokenizer;

/// The tokenizer.json beside `checkpoint`'s weights, with its truncation and padding removed.
pub fn tokenizer(checkpoint: &Checkpoint) -> Result<Tokenizer> {
    let path = checkpoint.tokenizer_path().ok_or_else(|| {
        Error::invalid(
            checkpoint.dir().join("tokenizer.json"),
            "tokenizer.json is missing; token streams need the model's tokenizer",
        )
    })?;
    let mut tokenizer = Tokenizer::from_file(path)
        .map_err(|e| Error::invalid(path, format!("not a usable tokenizer: {e}")))?;
    // Token streams are cut into sequences here; a tokenizer.json's own truncation (MiniLM's
    // truncates to 128 tokens) or fixed padding would silently drop or pad the text.
    tokenizer
        .with_truncation(None)
        .map_err(|e| Error::invalid(path, format!("cannot disable truncation: {e}")))?;
    tokenizer.with_padding(None);
    Ok(tokenizer)
}

/// Token ids of `text`, without special tokens (the text is a continuous document, not a
/// prompt). A missing, non-UTF-8, empty or whitespace-only text is an error naming it.
pub fn encode(tokenizer: &Tokenizer, text: &Text) -> Result<Vec<u32>> {
    let encoding = tokenizer
        .encode(text.read()?.as_ref(), false)
        .map_err(|e| Error::invalid(text.subject(), format!("tokenizer failed: {e}")))?;
    Ok(encoding.get_ids().to_vec())
}

/// Consecutive non-overlapping windows of `seq_len` tokens, at most `max_tokens` tokens in all;
/// a trailing partial window is dropped so every sequence has the same length (one batch).
pub fn sequences(tokens: &[u32], seq_len: usize, max_tokens: usize) -> Vec<&[u32]> {
    let usable = tokens.len().min(max_tokens);
    tokens[..usable].chunks_exact(seq_len.max(1)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_truncating_padding_tokenizer_json_does_not_cut_the_stream() {
        let dir = tempfile::tempdir().unwrap();
        let vocab: Vec<(String, f64)> = vec![("<unk>".into(), 0.0), ("a".into(), -1.0)];
        let json = serde_json::json!({
            "version": "1.0",
            "truncation": {"direction": "Right", "max_length": 2, "strategy": "LongestFirst", "stride": 0},
            "padding": {"strategy": {"Fixed": 8}, "direction": "Right", "pad_to_multiple_of": null,
                        "pad_id": 0, "pad_type_id": 0, "pad_token": "<unk>"},
            "added_tokens": [], "normalizer": null,
            "pre_tokenizer": {"type": "Whitespace"},
            "post_processor": null, "decoder": null,
            "model": {"type": "Unigram", "unk_id": 0, "vocab": vocab, "byte_fallback": false}
        });
        std::fs::write(dir.path().join("tokenizer.json"), json.to_string()).unwrap();
        let raw = Tokenizer::from_file(dir.path().join("tokenizer.json")).unwrap();
        assert_eq!(raw.encode("a a a", false).unwrap().get_ids().len(), 8);
        let weights = vec![(
            "w".to_string(),
            crate::checkpoint::write::LazyTensor::f32(vec![1], || vec![0.0]),
        )];
        crate::checkpoint::write::write_safetensors(
            &dir.path().join("model.safetensors"),
            &weights,
            None,
        )
        .unwrap();
        let checkpoint = Checkpoint::open(dir.path()).unwrap();
        let tokenizer = tokenizer(&checkpoint).unwrap();
        let text = dir.path().join("t.txt");
        std::fs::write(&text, "a a a").unwrap();
        assert_eq!(
            encode(&tokenizer, &Text::File(text)).unwrap(),
            vec![1, 1, 1]
        );
    }

    #[test]
    fn sequences_are_full_windows_within_the_budget() {
        let t: Vec<u32> = (0..10).collect();
        assert_eq!(
            sequences(&t, 4, 100),
            vec![&[0, 1, 2, 3][..], &[4, 5, 6, 7]]
        );
        assert_eq!(sequences(&t, 4, 5), vec![&[0, 1, 2, 3][..]]);
        assert!(sequences(&t, 11, 100).is_empty());
    }
}
