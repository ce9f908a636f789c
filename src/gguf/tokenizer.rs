//! tokenizer.json rebuilt from a GGUF vocabulary and merges (GPT-2 byte-level BPE).
//!
//! A GGUF file carries no tokenizer.json, only llama.cpp's description of one: the token strings
//! (already in GPT-2's byte-to-character spelling, `Ġthe`), the merges as `"a b"` strings, a type
//! per token, the special token ids, and `tokenizer.ggml.pre`, the name of the pre-tokenizer
//! (how text is cut into words before BPE). [`from_gguf`] turns that back into a `tokenizers`
//! [`Tokenizer`] whose ids match both the model's original Hugging Face tokenizer and llama.cpp.
//!
//! Supported: `tokenizer.ggml.model = "gpt2"` with these `tokenizer.ggml.pre` families
//! ([`PreTokenizer`]):
//! - `smollm`, `starcoder`, `refact`, `command-r`, `codeshell`, `exaone`, `minerva-7b`: every
//!   digit is its own word, then the GPT-2 regex. llama.cpp splits `\p{N}` first; the
//!   `Digits(individual_digits)` + `ByteLevel` pre-tokenizer of SmolLM2's tokenizer.json is the
//!   same split. (With the GPT-2 regex alone, SmolLM2 would encode `"  1"` as `"Ġ", "Ġ", "1"`
//!   instead of `"ĠĠ", "1"`.)
//! - `gpt-2` (llama.cpp's name), `gpt2`, `default` or no key: the GPT-2 regex. For `default` or no key llama.cpp uses its own
//!   ad-hoc list of regexes instead (and warns, when the key is missing, that generation quality
//!   will be degraded); we use GPT-2's, as transformers does.
//! - `llama3`, `llama-v3`, `llama-bpe`, `smaug-bpe`: Llama 3's regex (digits in groups of up to 3),
//!   and for the `llama3` names llama.cpp's `ignore_merges` and default BOS.
//! - `qwen2`: Qwen2's regex (single digits) after NFC, as Qwen2's tokenizer.json does (llama.cpp
//!   skips NFC; the two differ only on text that is not already NFC).
//!
//! Control (type 3) tokens and the bos/eos/unknown/padding ids become special added tokens;
//! user-defined (type 4) tokens become non-special added tokens: llama.cpp always matches them
//! whole and prints them when detokenizing, which is what `special = false` means in `tokenizers`.
//! `tokenizer.ggml.add_bos_token` / `add_eos_token` add a template post-processor.
//! `tokenizer.ggml.add_space_prefix` is ignored, as llama.cpp ignores it for BPE vocabularies.

use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Merges, Vocab, BPE};
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::sequence::Sequence as ProcessorSequence;
use tokenizers::processors::template::{SpecialToken, TemplateProcessing};
use tokenizers::processors::PostProcessorWrapper;
use tokenizers::tokenizer::SplitDelimiterBehavior;
use tokenizers::{AddedToken, Tokenizer};

use crate::error::{Error, Result};

/// GGUF `tokenizer.ggml.token_type` of a control token (`<|endoftext|>`, `<|im_start|>`).
const TOKEN_TYPE_CONTROL: i64 = 3;
/// GGUF `tokenizer.ggml.token_type` of a user-defined token (an added token such as `<think>`).
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// Llama 3's split as llama.cpp spells it (`'[sS]` for the original's `(?i:'s)`).
const LLAMA3_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split as llama.cpp spells it: Llama 3's with single digits.
const QWEN2_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The case-insensitive contractions as Llama 3's and Qwen2's tokenizer.json spell them...
const HF_CONTRACTIONS: &str = "(?i:'s|'t|'re|'ve|'m|'ll|'d)";
/// ...and as llama.cpp spells them.
const LLAMA_CPP_CONTRACTIONS: &str = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])";

/// `tokenizer.ggml.pre` names accepted, by family (for error messages).
const SUPPORTED_PRE: &str = "smollm, starcoder, refact, command-r, codeshell, exaone, \
     minerva-7b (single digits + GPT-2 regex); gpt-2, gpt2, default or none (GPT-2 regex); llama3, llama-v3, \
     llama-bpe, smaug-bpe (Llama 3 regex); qwen2 (Qwen2 regex)";

/// How text is cut into words before BPE: one variant per llama.cpp pre-tokenizer family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreTokenizer {
    /// The GPT-2 regex alone (`gpt2`, `default`, no key).
    Gpt2,
    /// Every digit on its own, then the GPT-2 regex (`smollm`, `starcoder`, ...).
    DigitsThenGpt2,
    /// Llama 3's regex: digits in groups of up to three.
    Llama3,
    /// Qwen2's regex (single digits), after NFC normalization.
    Qwen2,
}

impl PreTokenizer {
    /// The family of a `tokenizer.ggml.pre` value (`None`: the key is absent), if supported.
    pub fn from_gguf_name(name: Option<&str>) -> Option<Self> {
        Some(match name {
            None | Some("gpt-2" | "gpt2" | "default") => Self::Gpt2,
            Some(
                "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone"
                | "minerva" | "minerva-7b",
            ) => Self::DigitsThenGpt2,
            Some("llama3" | "llama-v3" | "llama-bpe" | "smaug-bpe") => Self::Llama3,
            Some("qwen2") => Self::Qwen2,
            Some(_) => return None,
        })
    }

    /// The `tokenizer.ggml.pre` name llama.cpp knows this family by (what an export writes).
    pub fn gguf_name(self) -> &'static str {
        match self {
            // "gpt2" is llama.cpp's architecture name; as a pre-tokenizer it is "gpt-2".
            Self::Gpt2 => "gpt-2",
            Self::DigitsThenGpt2 => "smollm",
            Self::Llama3 => "llama-bpe",
            Self::Qwen2 => "qwen2",
        }
    }

    /// The family of a Hugging Face tokenizer.json's `pre_tokenizer` and `normalizer`, if it is
    /// exactly one of these (the structures [`Self::pre_tokenizer`] builds, or the regexes the
    /// original Llama 3 / Qwen2 files spell with `(?i:...)`).
    pub fn from_tokenizer_json(
        pre: &serde_json::Value,
        normalizer: &serde_json::Value,
    ) -> Option<Self> {
        fn kind(v: &serde_json::Value) -> Option<&str> {
            v.get("type").and_then(|t| t.as_str())
        }
        let flag = |v: &serde_json::Value, key: &str, default: bool| {
            v.get(key).and_then(|b| b.as_bool()).unwrap_or(default)
        };
        let byte_level = |v: &serde_json::Value, regex: bool| {
            kind(v) == Some("ByteLevel")
                && flag(v, "use_regex", true) == regex
                && !flag(v, "add_prefix_space", false)
        };
        let nfc = kind(normalizer) == Some("NFC");
        if !normalizer.is_null() && !nfc {
            return None;
        }
        let steps: Vec<&serde_json::Value> = match kind(pre) {
            Some("Sequence") => pre.get("pretokenizers")?.as_array()?.iter().collect(),
            _ => vec![pre],
        };
        let family = match steps.as_slice() {
            [b] if byte_level(b, true) => Self::Gpt2,
            [d, b]
                if kind(d) == Some("Digits")
                    && flag(d, "individual_digits", false)
                    && byte_level(b, true) =>
            {
                Self::DigitsThenGpt2
            }
            [s, b] if kind(s) == Some("Split") && byte_level(b, false) => {
                let isolated = s.get("behavior").and_then(|b| b.as_str()) == Some("Isolated");
                if !isolated || flag(s, "invert", false) {
                    return None;
                }
                let regex = s.get("pattern")?.get("Regex")?.as_str()?;
                let regex = regex.replace(HF_CONTRACTIONS, LLAMA_CPP_CONTRACTIONS);
                if regex == LLAMA3_REGEX {
                    Self::Llama3
                } else if regex == QWEN2_REGEX {
                    Self::Qwen2
                } else {
                    return None;
                }
            }
            _ => return None,
        };
        // Only Qwen2 normalizes (NFC); an NFC anywhere else would change the split.
        (nfc == (family == Self::Qwen2)).then_some(family)
    }

    /// The `tokenizers` pre-tokenizer for this family.
    fn pre_tokenizer(self) -> Result<PreTokenizerWrapper, tokenizers::Error> {
        Ok(match self {
            Self::Gpt2 => ByteLevel::new(false, true, true).into(),
            Self::DigitsThenGpt2 => Sequence::new(vec![
                Digits::new(true).into(),
                ByteLevel::new(false, true, true).into(),
            ])
            .into(),
            Self::Llama3 => Sequence::new(vec![
                regex_split(LLAMA3_REGEX)?,
                ByteLevel::new(false, true, false).into(),
            ])
            .into(),
            Self::Qwen2 => Sequence::new(vec![
                regex_split(QWEN2_REGEX)?,
                ByteLevel::new(false, false, false).into(),
            ])
            .into(),
        })
    }

    /// The byte-level post-processor (offsets only) and decoder the original tokenizer.json has.
    fn byte_level_ends(self) -> (ByteLevel, ByteLevelDecoder) {
        match self {
            Self::Qwen2 => (
                ByteLevel::new(false, false, false),
                ByteLevelDecoder::new(false, false, false),
            ),
            Self::Gpt2 | Self::DigitsThenGpt2 | Self::Llama3 => (
                ByteLevel::new(true, false, true),
                ByteLevelDecoder::new(true, true, true),
            ),
        }
    }
}

/// A `Split` pre-tokenizer keeping every regex match as its own word.
fn regex_split(regex: &str) -> Result<PreTokenizerWrapper, tokenizers::Error> {
    Ok(Split::new(
        SplitPattern::Regex(regex.to_string()),
        SplitDelimiterBehavior::Isolated,
        false,
    )?
    .into())
}

/// Rebuilds the Hugging Face tokenizer described by a GGUF file's `tokenizer.ggml.*` metadata.
///
/// `path` is the GGUF file, named in errors. Unsupported tokenizer kinds are
/// `Error::Unsupported`; missing or malformed metadata is `Error::Invalid`.
pub fn from_gguf(content: &Content, path: &Path) -> Result<Tokenizer> {
    let meta = Metadata { content, path };
    let model = meta.string("tokenizer.ggml.model")?.ok_or_else(|| {
        Error::invalid(
            path,
            "no tokenizer in the GGUF metadata (tokenizer.ggml.model is missing)",
        )
    })?;
    if model != "gpt2" {
        return Err(Error::unsupported(
            path,
            format!(
                "tokenizer.ggml.model \"{model}\" is not supported: only \"gpt2\" (byte-level BPE) \
                 tokenizers can be rebuilt, with tokenizer.ggml.pre one of: {SUPPORTED_PRE}"
            ),
        ));
    }
    let pre_name = meta.string("tokenizer.ggml.pre")?;
    let pre = PreTokenizer::from_gguf_name(pre_name).ok_or_else(|| {
        Error::unsupported(
            path,
            format!(
                "tokenizer.ggml.pre \"{}\" is not supported; supported: {SUPPORTED_PRE}",
                pre_name.unwrap_or_default()
            ),
        )
    })?;

    let tokens = meta
        .strings("tokenizer.ggml.tokens")?
        .ok_or_else(|| Error::invalid(path, "tokenizer.ggml.tokens is missing"))?;
    if tokens.is_empty() {
        return Err(Error::invalid(path, "tokenizer.ggml.tokens is empty"));
    }
    let merges = meta.strings("tokenizer.ggml.merges")?.ok_or_else(|| {
        Error::invalid(
            path,
            "tokenizer.ggml.merges is missing (needed by a gpt2 tokenizer)",
        )
    })?;
    let merges = parse_merges(&merges, path)?;
    let token_types = meta.token_types(tokens.len())?;
    let n_tokens = tokens.len();
    let bos = meta.token_id("tokenizer.ggml.bos_token_id", n_tokens)?;
    let eos = meta.token_id("tokenizer.ggml.eos_token_id", n_tokens)?;
    let unknown = meta.token_id("tokenizer.ggml.unknown_token_id", n_tokens)?;
    let padding = meta.token_id("tokenizer.ggml.padding_token_id", n_tokens)?;
    // llama.cpp adds a BOS by default for the Llama 3 names only; the keys override it.
    let llama3_name = matches!(pre_name, Some("llama3" | "llama-v3" | "llama-bpe"));
    let add_bos = meta
        .bool("tokenizer.ggml.add_bos_token")?
        .unwrap_or(llama3_name);
    let add_eos = meta.bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false);

    let mut vocab = Vocab::with_capacity(tokens.len());
    for (id, token) in tokens.iter().enumerate() {
        if let Some(first) = vocab.insert(token.to_string(), id as u32) {
            return Err(Error::invalid(
                path,
                format!("tokenizer.ggml.tokens holds \"{token}\" twice (ids {first} and {id})"),
            ));
        }
    }
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(llama3_name)
        .build()
        .map_err(|e| Error::invalid(path, format!("tokenizer.ggml.merges: {e}")))?;

    let mut tokenizer = Tokenizer::new(bpe);
    let build_error = |e: tokenizers::Error| Error::invalid(path, format!("tokenizer: {e}"));
    if pre == PreTokenizer::Qwen2 {
        tokenizer.with_normalizer(Some(NFC)).map_err(build_error)?;
    }
    tokenizer.with_pre_tokenizer(Some(pre.pre_tokenizer().map_err(build_error)?));
    let (byte_level_processor, decoder) = pre.byte_level_ends();
    tokenizer.with_decoder(Some(decoder));

    let template = match (add_bos, add_eos) {
        (false, false) => None,
        _ => Some(template_processor(
            &tokens,
            add_bos
                .then_some(bos)
                .map(|id| required(id, "bos", path))
                .transpose()?,
            add_eos
                .then_some(eos)
                .map(|id| required(id, "eos", path))
                .transpose()?,
            path,
        )?),
    };
    let processor: PostProcessorWrapper = match template {
        None => byte_level_processor.into(),
        Some(template) => {
            ProcessorSequence::new(vec![byte_level_processor.into(), template.into()]).into()
        }
    };
    tokenizer.with_post_processor(Some(processor));

    add_special_tokens(
        &mut tokenizer,
        &tokens,
        &token_types,
        [bos, eos, unknown, padding].into_iter().flatten(),
        path,
    )?;
    Ok(tokenizer)
}

/// `id`, or an error saying `tokenizer.ggml.add_{name}_token` needs it.
fn required(id: Option<u32>, name: &str, path: &Path) -> Result<u32> {
    id.ok_or_else(|| {
        Error::invalid(
            path,
            format!("tokenizer.ggml.add_{name}_token is true but tokenizer.ggml.{name}_token_id is missing"),
        )
    })
}

/// `"a b"` merge strings as pairs; anything else is an error.
fn parse_merges(merges: &[&str], path: &Path) -> Result<Merges> {
    merges
        .iter()
        .enumerate()
        .map(|(i, merge)| match merge.split_once(' ') {
            Some((a, b)) if !a.is_empty() && !b.is_empty() && !b.contains(' ') => {
                Ok((a.to_string(), b.to_string()))
            }
            _ => Err(Error::invalid(
                path,
                format!("tokenizer.ggml.merges[{i}] is \"{merge}\", not two tokens \"a b\""),
            )),
        })
        .collect()
}

/// A post-processor adding BOS before and/or EOS after each sequence, as llama.cpp does.
fn template_processor(
    tokens: &[&str],
    bos: Option<u32>,
    eos: Option<u32>,
    path: &Path,
) -> Result<TemplateProcessing> {
    // Template pieces name special tokens by a local id ("bos"), so token text never needs to
    // survive the template syntax (`$A`, `:1`).
    let mut specials = Vec::new();
    let (mut single, mut pair) = (Vec::new(), Vec::new());
    let bos = bos.map(|id| ("bos", id));
    let eos = eos.map(|id| ("eos", id));
    for (name, id) in bos.iter().chain(eos.iter()) {
        let text = tokens[*id as usize].to_string();
        let special = SpecialToken::new(name.to_string(), vec![*id], vec![text])
            .map_err(|e| Error::invalid(path, format!("post-processor: {e}")))?;
        specials.push(special);
    }
    for (sequence, type_id) in [("$A", 0), ("$B", 1)] {
        let mut pieces = Vec::new();
        pieces.extend(bos.map(|(name, _)| format!("{name}:{type_id}")));
        pieces.push(format!("{sequence}:{type_id}"));
        pieces.extend(eos.map(|(name, _)| format!("{name}:{type_id}")));
        if type_id == 0 {
            single = pieces.clone();
        }
        pair.extend(pieces);
    }
    TemplateProcessing::builder()
        .try_single(single)
        .and_then(|b| b.try_pair(pair))
        .map_err(|e| Error::invalid(path, format!("post-processor: {e}")))?
        .special_tokens(specials)
        .build()
        .map_err(|e| Error::invalid(path, format!("post-processor: {e}")))
}

/// Registers control tokens and `special_ids` as special, user-defined tokens as plain added
/// tokens, and checks each kept the id the GGUF gives it.
fn add_special_tokens(
    tokenizer: &mut Tokenizer,
    tokens: &[&str],
    token_types: &[i64],
    special_ids: impl Iterator<Item = u32>,
    path: &Path,
) -> Result<()> {
    let mut special: Vec<u32> = token_types
        .iter()
        .enumerate()
        .filter(|(_, t)| **t == TOKEN_TYPE_CONTROL)
        .map(|(id, _)| id as u32)
        .chain(special_ids)
        .collect();
    special.sort_unstable();
    special.dedup();
    let user_defined: Vec<u32> = token_types
        .iter()
        .enumerate()
        .filter(|(id, t)| {
            **t == TOKEN_TYPE_USER_DEFINED && special.binary_search(&(*id as u32)).is_err()
        })
        .map(|(id, _)| id as u32)
        .collect();

    let added = |ids: &[u32], is_special: bool| -> Vec<AddedToken> {
        ids.iter()
            .map(|&id| AddedToken::from(tokens[id as usize], is_special).normalized(false))
            .collect()
    };
    let build_error = |e: tokenizers::Error| Error::invalid(path, format!("added tokens: {e}"));
    tokenizer
        .add_special_tokens(added(&special, true))
        .map_err(build_error)?;
    tokenizer
        .add_tokens(added(&user_defined, false))
        .map_err(build_error)?;
    for &id in special.iter().chain(&user_defined) {
        let token = tokens[id as usize];
        if tokenizer.token_to_id(token) != Some(id) {
            return Err(Error::invalid(
                path,
                format!("added token \"{token}\" (id {id}) did not keep its id"),
            ));
        }
    }
    Ok(())
}

/// Typed reads of `tokenizer.ggml.*` metadata, with errors naming the file and key.
struct Metadata<'a> {
    /// The parsed GGUF header.
    content: &'a Content,
    /// The GGUF file, for errors.
    path: &'a Path,
}

impl<'a> Metadata<'a> {
    /// An error saying `key` holds `value` where `expected` was wanted.
    fn wrong_type(&self, key: &str, expected: &str, value: &Value) -> Error {
        Error::invalid(
            self.path,
            format!("{key} should be {expected}, found {:?}", value.value_type()),
        )
    }

    /// A string value, `None` if absent.
    fn string(&self, key: &str) -> Result<Option<&'a str>> {
        match self.content.metadata.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(v) => Err(self.wrong_type(key, "a string", v)),
        }
    }

    /// A boolean value, `None` if absent.
    fn bool(&self, key: &str) -> Result<Option<bool>> {
        match self.content.metadata.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.wrong_type(key, "a boolean", v)),
        }
    }

    /// An array of strings, `None` if absent.
    fn strings(&self, key: &str) -> Result<Option<Vec<&'a str>>> {
        let Some(value) = self.content.metadata.get(key) else {
            return Ok(None);
        };
        let Value::Array(items) = value else {
            return Err(self.wrong_type(key, "an array of strings", value));
        };
        items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(s) => Ok(s.as_str()),
                v => Err(self.wrong_type(&format!("{key}[{i}]"), "a string", v)),
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// A token id below `n_tokens`, `None` if absent.
    fn token_id(&self, key: &str, n_tokens: usize) -> Result<Option<u32>> {
        let Some(value) = self.content.metadata.get(key) else {
            return Ok(None);
        };
        match integer(value) {
            Some(id) if id >= 0 && (id as u64) < n_tokens as u64 => Ok(Some(id as u32)),
            Some(id) => Err(Error::invalid(
                self.path,
                format!("{key} is {id}, outside the {n_tokens} tokens of the vocabulary"),
            )),
            None => Err(self.wrong_type(key, "an integer", value)),
        }
    }

    /// `tokenizer.ggml.token_type` (one integer per token), all normal if absent.
    fn token_types(&self, n_tokens: usize) -> Result<Vec<i64>> {
        const KEY: &str = "tokenizer.ggml.token_type";
        let Some(value) = self.content.metadata.get(KEY) else {
            return Ok(vec![1; n_tokens]);
        };
        let Value::Array(items) = value else {
            return Err(self.wrong_type(KEY, "an array of integers", value));
        };
        if items.len() != n_tokens {
            return Err(Error::invalid(
                self.path,
                format!("{KEY} has {} entries for {n_tokens} tokens", items.len()),
            ));
        }
        items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                integer(item)
                    .ok_or_else(|| self.wrong_type(&format!("{KEY}[{i}]"), "an integer", item))
            })
            .collect()
    }
}

/// Any GGUF integer value as `i64` (`None` for other types and u64 values past `i64::MAX`).
fn integer(value: &Value) -> Option<i64> {
    Some(match value {
        Value::U8(v) => i64::from(*v),
        Value::I8(v) => i64::from(*v),
        Value::U16(v) => i64::from(*v),
        Value::I16(v) => i64::from(*v),
        Value::U32(v) => i64::from(*v),
        Value::I32(v) => i64::from(*v),
        Value::U64(v) => i64::try_from(*v).ok()?,
        Value::I64(v) => *v,
        _ => return None,
    })
}

#[cfg(test)]
mod tests;
