//! A Hugging Face tokenizer.json turned into llama.cpp's `tokenizer.ggml.*` metadata (the
//! inverse of [`crate::gguf::tokenizer::from_gguf`]).
//!
//! Only byte-level BPE vocabularies (`tokenizer.ggml.model = "gpt2"`) whose pre-tokenizer is one
//! llama.cpp knows ([`PreTokenizer`]) can be written; the token strings are already in GPT-2's
//! byte-to-character spelling, so they are copied as they are.

use crate::error::{Error, Result};
use crate::gguf::tokenizer::PreTokenizer;
use serde_json::Value as Json;
use std::path::Path;

/// `tokenizer.ggml.token_type` of an ordinary vocabulary token.
const NORMAL: i32 = 1;
/// ... of a special (control) token such as `<|endoftext|>`.
const CONTROL: i32 = 3;
/// ... of an added token that is not special (matched whole, printed when detokenizing).
const USER_DEFINED: i32 = 4;
/// ... of a padding slot between the tokenizer's last id and the embedding's rows.
const UNUSED: i32 = 5;

/// The tokenizer as GGUF metadata values.
#[derive(Debug)]
pub(super) struct Vocab {
    /// One string per id, `n_vocab` of them.
    pub tokens: Vec<String>,
    /// One `tokenizer.ggml.token_type` per id.
    pub types: Vec<i32>,
    /// Merges as `"a b"`, by rank.
    pub merges: Vec<String>,
    /// The `tokenizer.ggml.pre` name.
    pub pre: &'static str,
    /// Whether the tokenizer adds a BOS / EOS token around each sequence.
    pub add_bos: bool,
    /// See `add_bos`.
    pub add_eos: bool,
    /// The id of the unknown token, if the BPE model names one.
    pub unknown: Option<u32>,
}

/// Reads tokenizer.json at `path` for a model whose embedding has `n_vocab` rows.
pub(super) fn read(path: &Path, n_vocab: usize) -> Result<Vocab> {
    let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
    let json: Json = serde_json::from_str(&text)
        .map_err(|e| Error::invalid(path, format!("invalid JSON: {e}")))?;
    let model = &json["model"];
    let kind = model["type"].as_str().unwrap_or("BPE");
    if kind != "BPE" || model["byte_fallback"].as_bool() == Some(true) {
        return Err(Error::unsupported(
            path,
            format!(
                "tokenizer model {kind}{} cannot be written to GGUF: only byte-level BPE \
                 (llama.cpp's gpt2 tokenizer) is supported",
                if kind == "BPE" {
                    " with byte_fallback"
                } else {
                    ""
                }
            ),
        ));
    }
    let pre = PreTokenizer::from_tokenizer_json(&json["pre_tokenizer"], &json["normalizer"])
        .ok_or_else(|| {
            Error::unsupported(
                path,
                "the pre-tokenizer/normalizer is not one llama.cpp knows by name (supported: \
             byte-level GPT-2, digits + GPT-2 as SmolLM2, Llama 3's and Qwen2's regex splits)",
            )
        })?;

    let mut slots: Vec<Option<(String, i32)>> = Vec::new();
    let mut put = |id: u64, token: &str, kind: i32| -> Result<()> {
        let id = usize::try_from(id)
            .ok()
            .filter(|&i| i < n_vocab)
            .ok_or_else(|| {
                Error::invalid(
                    path,
                    format!(
                        "token \"{token}\" has id {id}, outside the embedding's {n_vocab} rows"
                    ),
                )
            })?;
        if slots.len() <= id {
            slots.resize(id + 1, None);
        }
        match &slots[id] {
            Some((other, _)) if other != token => Err(Error::invalid(
                path,
                format!("id {id} is both \"{other}\" and \"{token}\""),
            )),
            _ => {
                slots[id] = Some((token.to_string(), kind));
                Ok(())
            }
        }
    };
    let vocab = model["vocab"]
        .as_object()
        .ok_or_else(|| Error::invalid(path, "model.vocab is not an object"))?;
    for (token, id) in vocab {
        let id = id.as_u64().ok_or_else(|| {
            Error::invalid(path, format!("model.vocab[\"{token}\"] is not an id"))
        })?;
        put(id, token, NORMAL)?;
    }
    for added in json["added_tokens"].as_array().into_iter().flatten() {
        let (Some(id), Some(content)) = (added["id"].as_u64(), added["content"].as_str()) else {
            return Err(Error::invalid(
                path,
                "an added_tokens entry lacks id or content",
            ));
        };
        let special = added["special"].as_bool().unwrap_or(false);
        put(id, content, if special { CONTROL } else { USER_DEFINED })?;
    }
    slots.resize(n_vocab, None);
    let (tokens, types): (Vec<String>, Vec<i32>) = slots
        .into_iter()
        .enumerate()
        .map(|(id, slot)| slot.unwrap_or_else(|| (format!("[PAD{id}]"), UNUSED)))
        .unzip();

    let merges = model["merges"]
        .as_array()
        .ok_or_else(|| Error::invalid(path, "model.merges is missing"))?
        .iter()
        .enumerate()
        .map(|(i, m)| {
            merge(m).ok_or_else(|| {
                Error::invalid(
                    path,
                    format!("model.merges[{i}] is {m}, not two tokens without spaces"),
                )
            })
        })
        .collect::<Result<Vec<String>>>()?;

    let (add_bos, add_eos) = template_ends(&json["post_processor"]);
    let unknown = model["unk_token"]
        .as_str()
        .and_then(|u| tokens.iter().position(|t| t == u))
        .map(|id| id as u32);
    Ok(Vocab {
        tokens,
        types,
        merges,
        pre: pre.gguf_name(),
        add_bos,
        add_eos,
        unknown,
    })
}

/// A merge (`"a b"` or `["a", "b"]`) as GGUF's `"a b"`, if both halves are free of spaces.
fn merge(m: &Json) -> Option<String> {
    let (a, b) = match m {
        Json::String(s) => s.split_once(' ')?,
        Json::Array(pair) => match pair.as_slice() {
            [a, b] => (a.as_str()?, b.as_str()?),
            _ => return None,
        },
        _ => return None,
    };
    let ok = |s: &str| !s.is_empty() && !s.contains(' ');
    (ok(a) && ok(b)).then(|| format!("{a} {b}"))
}

/// Whether the post-processor (or a `TemplateProcessing` inside a `Sequence`) puts a special
/// token before / after a single sequence: llama.cpp's add_bos / add_eos.
fn template_ends(post: &Json) -> (bool, bool) {
    let template = match post["type"].as_str() {
        Some("TemplateProcessing") => Some(post),
        Some("Sequence") => post["processors"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["type"].as_str() == Some("TemplateProcessing")),
        _ => None,
    };
    let Some(single) = template.and_then(|t| t["single"].as_array()) else {
        return (false, false);
    };
    let special = |piece: Option<&Json>| piece.is_some_and(|p| p.get("SpecialToken").is_some());
    (special(single.first()), special(single.last()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_in_either_spelling() {
        assert_eq!(merge(&serde_json::json!("Ġ t")).as_deref(), Some("Ġ t"));
        assert_eq!(
            merge(&serde_json::json!(["h", "e"])).as_deref(),
            Some("h e")
        );
        assert_eq!(merge(&serde_json::json!(["a b", "c"])), None);
        assert_eq!(merge(&serde_json::json!("abc")), None);
    }

    #[test]
    fn bos_and_eos_from_the_template() {
        let post = serde_json::json!({"type": "Sequence", "processors": [
            {"type": "ByteLevel"},
            {"type": "TemplateProcessing", "single": [
                {"SpecialToken": {"id": "<s>", "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}}]}]});
        assert_eq!(template_ends(&post), (true, false));
        assert_eq!(
            template_ends(&serde_json::json!({"type": "ByteLevel"})),
            (false, false)
        );
        assert_eq!(template_ends(&Json::Null), (false, false));
    }
}
