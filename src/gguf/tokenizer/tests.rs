use super::*;
use candle_core::quantized::gguf_file::VersionedMagic;
use std::collections::HashMap;
use tokenizers::tokenizer::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer as _};

/// The GPT-2 split as llama.cpp spells it (`LLAMA_VOCAB_PRE_TYPE_GPT2`, plus the final `\s+`
/// its hand-written matcher also applies).
const GPT2_REGEX: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// GPT-2's byte-to-character map: the spelling of byte `b` in a byte-level vocabulary.
fn byte_char(b: u8) -> char {
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
    if printable(b) {
        return char::from(b);
    }
    let shift = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + shift).unwrap_or('?')
}

/// Three specials, all 256 byte tokens, then tokens merged from `MERGES`.
const SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<think>"];
const MERGES: [&str; 7] = ["h e", "l l", "he ll", "hell o", "Ġ h", "1 2", "12 3"];

/// Metadata of a tiny byte-level BPE vocabulary with tokenizer.ggml.pre = `pre`.
fn metadata(pre: Option<&str>) -> HashMap<String, Value> {
    let mut tokens: Vec<String> = SPECIALS.iter().map(|s| s.to_string()).collect();
    tokens.extend((0..=255u8).map(|b| byte_char(b).to_string()));
    tokens.extend(MERGES.iter().map(|m| m.replace(' ', "")));
    let mut types = vec![Value::I32(1); tokens.len()];
    types[0] = Value::I32(3);
    types[1] = Value::I32(3);
    types[2] = Value::I32(4);
    let strings = |v: Vec<String>| Value::Array(v.into_iter().map(Value::String).collect());
    let mut m = HashMap::new();
    m.insert("tokenizer.ggml.model".into(), Value::String("gpt2".into()));
    if let Some(pre) = pre {
        m.insert("tokenizer.ggml.pre".into(), Value::String(pre.into()));
    }
    m.insert("tokenizer.ggml.tokens".into(), strings(tokens));
    m.insert(
        "tokenizer.ggml.merges".into(),
        strings(MERGES.iter().map(|s| s.to_string()).collect()),
    );
    m.insert("tokenizer.ggml.token_type".into(), Value::Array(types));
    m.insert("tokenizer.ggml.bos_token_id".into(), Value::U32(1));
    m.insert("tokenizer.ggml.eos_token_id".into(), Value::U32(0));
    m.insert("tokenizer.ggml.add_bos_token".into(), Value::Bool(false));
    m
}

fn content(metadata: HashMap<String, Value>) -> Content {
    Content {
        magic: VersionedMagic::GgufV3,
        metadata,
        tensor_infos: HashMap::new(),
        tensor_data_offset: 0,
    }
}

fn build(metadata: HashMap<String, Value>) -> Result<Tokenizer> {
    from_gguf(&content(metadata), Path::new("tiny.gguf"))
}

/// Id of a token of the tiny vocabulary.
fn id(tokenizer: &Tokenizer, token: &str) -> u32 {
    tokenizer.token_to_id(token).unwrap()
}

fn encode(tokenizer: &Tokenizer, text: &str) -> Vec<u32> {
    tokenizer.encode(text, true).unwrap().get_ids().to_vec()
}

fn invalid_message(result: Result<Tokenizer>) -> String {
    match result {
        Err(Error::Invalid { message, .. }) => message,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn smollm_splits_every_digit_and_round_trips() {
    let t = build(metadata(Some("smollm"))).unwrap();
    let ids = encode(&t, "hello 123");
    let expected: Vec<u32> = ["hello", "Ġ", "1", "2", "3"]
        .iter()
        .map(|s| id(&t, s))
        .collect();
    assert_eq!(ids, expected);
    assert_eq!(t.decode(&ids, false).unwrap(), "hello 123");
    // No prefix space is added to the text: "hello" at the start stays "hello".
    assert_eq!(encode(&t, "hello"), vec![id(&t, "hello")]);
}

#[test]
fn gpt2_keeps_digit_runs_together() {
    for pre in [Some("gpt-2"), Some("gpt2"), Some("default"), None] {
        let t = build(metadata(pre)).unwrap();
        let expected: Vec<u32> = ["hello", "Ġ", "123"].iter().map(|s| id(&t, s)).collect();
        assert_eq!(encode(&t, "hello 123"), expected, "pre {pre:?}");
    }
}

#[test]
fn llama3_groups_digits_by_three_and_qwen2_splits_them() {
    let mut m = metadata(Some("llama3"));
    m.remove("tokenizer.ggml.add_bos_token");
    let t = build(m).unwrap();
    // llama3 adds BOS by default; "1234" is "123" + "4".
    let expected: Vec<u32> = ["<|im_start|>", "123", "4"]
        .iter()
        .map(|s| id(&t, s))
        .collect();
    assert_eq!(encode(&t, "1234"), expected);
    let t = build(metadata(Some("qwen2"))).unwrap();
    let expected: Vec<u32> = ["1", "2", "3", "4"].iter().map(|s| id(&t, s)).collect();
    assert_eq!(encode(&t, "1234"), expected);
}

#[test]
fn special_and_user_defined_tokens_stay_whole() {
    let t = build(metadata(Some("smollm"))).unwrap();
    let ids = encode(&t, "<|im_start|>hello<think><|endoftext|>");
    assert_eq!(ids, vec![1, id(&t, "hello"), 2, 0]);
    assert_eq!(t.decode(&ids, true).unwrap(), "hello<think>");
    assert_eq!(
        t.decode(&ids, false).unwrap(),
        "<|im_start|>hello<think><|endoftext|>"
    );
}

#[test]
fn add_bos_and_eos_follow_the_metadata() {
    let mut m = metadata(Some("smollm"));
    m.insert("tokenizer.ggml.add_bos_token".into(), Value::Bool(true));
    m.insert("tokenizer.ggml.add_eos_token".into(), Value::Bool(true));
    let t = build(m).unwrap();
    assert_eq!(encode(&t, "hello"), vec![1, id(&t, "hello"), 0]);
    assert_eq!(
        t.encode("hello", false).unwrap().get_ids(),
        [id(&t, "hello")]
    );

    let mut m = metadata(Some("smollm"));
    m.insert("tokenizer.ggml.add_eos_token".into(), Value::Bool(true));
    m.remove("tokenizer.ggml.eos_token_id");
    assert!(invalid_message(build(m)).contains("eos_token_id"));
}

#[test]
fn serialized_json_reloads_to_the_same_ids() {
    let text = "<|im_start|>hello 123 he'll\n\n  hello<|endoftext|>";
    for pre in ["smollm", "gpt2", "llama3", "qwen2"] {
        let mut m = metadata(Some(pre));
        m.insert("tokenizer.ggml.add_eos_token".into(), Value::Bool(true));
        let t = build(m).unwrap();
        let json = t.to_string(false).unwrap();
        let reloaded: Tokenizer = json.parse().unwrap();
        assert_eq!(encode(&reloaded, text), encode(&t, text), "pre {pre}");
    }
}

#[test]
fn unsupported_kinds_name_the_value_and_the_alternatives() {
    let mut m = metadata(None);
    m.insert("tokenizer.ggml.model".into(), Value::String("llama".into()));
    match build(m) {
        Err(Error::Unsupported { message, .. }) => {
            assert!(
                message.contains("\"llama\"") && message.contains("gpt2"),
                "{message}"
            )
        }
        other => panic!("expected Unsupported, got {other:?}"),
    }
    match build(metadata(Some("deepseek-llm"))) {
        Err(Error::Unsupported { message, .. }) => {
            assert!(
                message.contains("deepseek-llm") && message.contains("smollm"),
                "{message}"
            )
        }
        other => panic!("expected Unsupported, got {other:?}"),
    }
}

#[test]
fn broken_metadata_is_invalid() {
    let mut m = metadata(None);
    m.remove("tokenizer.ggml.model");
    assert!(invalid_message(build(m)).contains("tokenizer.ggml.model"));

    let mut m = metadata(None);
    m.remove("tokenizer.ggml.tokens");
    assert!(invalid_message(build(m)).contains("tokenizer.ggml.tokens"));

    let mut m = metadata(None);
    m.insert("tokenizer.ggml.tokens".into(), Value::Array(vec![]));
    assert!(invalid_message(build(m)).contains("empty"));

    let mut m = metadata(None);
    m.insert(
        "tokenizer.ggml.tokens".into(),
        Value::Array(vec![Value::U32(7)]),
    );
    assert!(invalid_message(build(m)).contains("tokenizer.ggml.tokens[0]"));

    let mut m = metadata(None);
    m.remove("tokenizer.ggml.merges");
    assert!(invalid_message(build(m)).contains("merges"));

    for bad in ["hello", "h e l", " e", "x y"] {
        let mut m = metadata(None);
        m.insert(
            "tokenizer.ggml.merges".into(),
            Value::Array(vec![Value::String(bad.into())]),
        );
        assert!(
            invalid_message(build(m)).contains("merges"),
            "merge {bad:?}"
        );
    }

    let mut m = metadata(None);
    m.insert("tokenizer.ggml.bos_token_id".into(), Value::U32(100_000));
    assert!(invalid_message(build(m)).contains("100000"));

    let mut m = metadata(None);
    m.insert("tokenizer.ggml.eos_token_id".into(), Value::I32(-1));
    assert!(invalid_message(build(m)).contains("eos_token_id"));

    let mut m = metadata(None);
    m.insert(
        "tokenizer.ggml.token_type".into(),
        Value::Array(vec![Value::I32(1)]),
    );
    assert!(invalid_message(build(m)).contains("token_type"));

    let mut m = metadata(None);
    m.insert("tokenizer.ggml.pre".into(), Value::U32(1));
    assert!(invalid_message(build(m)).contains("tokenizer.ggml.pre"));

    let mut m = metadata(None);
    let Some(Value::Array(tokens)) = m.get_mut("tokenizer.ggml.tokens") else {
        unreachable!()
    };
    tokens[3] = Value::String("hello".into());
    assert!(invalid_message(build(m)).contains("twice"));
}

#[test]
fn tokenizer_json_pre_tokenizers_map_to_their_family() {
    let null = serde_json::Value::Null;
    let nfc = serde_json::json!({"type": "NFC"});
    for pre in [
        PreTokenizer::Gpt2,
        PreTokenizer::DigitsThenGpt2,
        PreTokenizer::Llama3,
        PreTokenizer::Qwen2,
    ] {
        let json = serde_json::to_value(pre.pre_tokenizer().unwrap()).unwrap();
        let normalizer = if pre == PreTokenizer::Qwen2 {
            &nfc
        } else {
            &null
        };
        assert_eq!(
            PreTokenizer::from_tokenizer_json(&json, normalizer),
            Some(pre)
        );
        assert_eq!(
            PreTokenizer::from_gguf_name(Some(pre.gguf_name())),
            Some(pre)
        );
        let other = if pre == PreTokenizer::Qwen2 {
            &null
        } else {
            &nfc
        };
        assert_eq!(PreTokenizer::from_tokenizer_json(&json, other), None);
    }
    // Llama 3's own tokenizer.json spells the contractions case-insensitively.
    let hf_llama3 = serde_json::json!({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": LLAMA3_REGEX.replace(LLAMA_CPP_CONTRACTIONS, HF_CONTRACTIONS)},
         "behavior": "Isolated", "invert": false},
        {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]});
    assert_eq!(
        PreTokenizer::from_tokenizer_json(&hf_llama3, &null),
        Some(PreTokenizer::Llama3)
    );
    let whitespace = serde_json::json!({"type": "Whitespace"});
    assert_eq!(PreTokenizer::from_tokenizer_json(&whitespace, &null), None);
}

/// The words `pre` cuts `text` into (byte-level spelling).
fn words(pre: &PreTokenizerWrapper, text: &str) -> Vec<String> {
    let mut pretokenized = PreTokenizedString::from(text);
    pre.pre_tokenize(&mut pretokenized).unwrap();
    pretokenized
        .get_splits(OffsetReferential::Original, OffsetType::Byte)
        .into_iter()
        .map(|(word, _, _)| word.to_string())
        .collect()
}

#[test]
fn pre_tokenizers_match_llama_cpp_regex_lists() {
    // llama.cpp applies its regexes one after the other, each on the pieces of the last.
    let llama_cpp = |regexes: &[&str]| -> PreTokenizerWrapper {
        let mut steps: Vec<PreTokenizerWrapper> =
            regexes.iter().map(|r| regex_split(r).unwrap()).collect();
        steps.push(ByteLevel::new(false, false, false).into());
        Sequence::new(steps).into()
    };
    let text = "Call me Ishmael. In 1851,  he'd   paid $3.50\n\n\tfor 12 OF THEM'S 4th\r\n  x  \
                \u{00e9}t\u{00e9} \u{0661}\u{0662} don't  ";
    let cases = [
        (
            PreTokenizer::DigitsThenGpt2,
            llama_cpp(&[r"\p{N}", GPT2_REGEX]),
        ),
        (PreTokenizer::Gpt2, llama_cpp(&[GPT2_REGEX])),
        (PreTokenizer::Llama3, llama_cpp(&[LLAMA3_REGEX])),
        (PreTokenizer::Qwen2, llama_cpp(&[QWEN2_REGEX])),
    ];
    for (pre, reference) in cases {
        let ours = pre.pre_tokenizer().unwrap();
        assert_eq!(words(&ours, text), words(&reference, text), "{pre:?}");
    }
    let ours = PreTokenizer::DigitsThenGpt2.pre_tokenizer().unwrap();
    assert_eq!(words(&ours, " 1851,"), ["\u{120}", "1", "8", "5", "1", ","]);
}
