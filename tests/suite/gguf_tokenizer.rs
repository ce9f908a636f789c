//! The tokenizer rebuilt from SmolLM2's GGUF against llama.cpp's own ids and round trips on the
//! calibration text.

use crate::common;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Content;
use tokenizers::Tokenizer;

const GGUF_NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The GGUF file, if fetched.
fn gguf_path() -> Option<PathBuf> {
    common::fetched_model("smollm2-135m-gguf").map(|dir| dir.join(GGUF_NAME))
}

/// The tokenizer rebuilt from SmolLM2's GGUF metadata.
fn smollm2(path: &Path) -> Tokenizer {
    let mut file = std::fs::File::open(path).expect("open the GGUF file");
    let content = Content::read(&mut file).expect("read the GGUF header");
    qpipe::gguf::tokenizer::from_gguf(&content, path).expect("rebuild the tokenizer")
}

fn ids(tokenizer: &Tokenizer, text: &str) -> Vec<u32> {
    tokenizer
        .encode(text, true)
        .expect("encode")
        .get_ids()
        .to_vec()
}

/// Asserts that `text` encodes and decodes back to itself, and returns its ids.
fn assert_round_trip(tokenizer: &Tokenizer, text: &str, what: &str) -> Vec<u32> {
    let ids = ids(tokenizer, text);
    let decoded = tokenizer.decode(&ids, false).expect("decode");
    if decoded != text {
        let at = decoded
            .char_indices()
            .zip(text.chars())
            .find(|((_, a), b)| a != b)
            .map_or(decoded.len().min(text.len()), |((i, _), _)| i);
        let context = |s: &str| {
            s.get(at.saturating_sub(40)..(at + 40).min(s.len()))
                .map(str::to_string)
        };
        panic!(
            "{what}: decode(encode(text)) differs at byte {at}: {:?} vs {:?}",
            context(&decoded),
            context(text)
        );
    }
    ids
}

#[test]
fn moby_dick_and_sotu_round_trip() {
    let _cpu = common::busy();
    let Some(path) = gguf_path() else { return };
    let tokenizer = smollm2(&path);
    let moby = common::read_text("calibration-data/moby-dick-eval.txt");
    let ids = assert_round_trip(&tokenizer, &moby, "moby-dick-eval.txt");
    // English prose: roughly 4 characters per token. A broken vocabulary falls to bytes (~1).
    let chars_per_token = moby.chars().count() as f64 / ids.len() as f64;
    assert!(
        chars_per_token > 3.5,
        "{chars_per_token:.2} characters per token"
    );

    let sotu = common::read_text("calibration-data/sotu-eval.txt");
    let sample: String = sotu.chars().take(100_000).collect();
    assert!(sample.chars().filter(char::is_ascii_digit).count() > 100);
    assert_round_trip(
        &tokenizer,
        &sample,
        "sotu-eval.txt (first 100000 characters)",
    );
}

#[test]
fn every_digit_is_its_own_token() {
    let _cpu = common::busy();
    let Some(path) = gguf_path() else { return };
    let tokenizer = smollm2(&path);
    let digit = |d: &str| tokenizer.token_to_id(d).expect("digit token");
    let expected: Vec<u32> = ["1", "8", "5", "1"].into_iter().map(digit).collect();
    assert_eq!(ids(&tokenizer, "1851"), expected);

    // The space before a number stays apart ("Ġ"), and a run of spaces before it stays whole.
    let space = tokenizer.token_to_id("Ġ").expect("Ġ");
    let two_spaces = tokenizer.token_to_id("ĠĠ").expect("ĠĠ");
    assert_eq!(ids(&tokenizer, " 1851")[..2], [space, digit("1")]);
    assert_eq!(ids(&tokenizer, "  7")[..], [two_spaces, digit("7")]);
    assert_eq!(ids(&tokenizer, "1,000,000").len(), 9);
}

#[test]
fn special_tokens_and_no_implicit_bos() {
    let _cpu = common::busy();
    let Some(path) = gguf_path() else { return };
    let tokenizer = smollm2(&path);
    // add_bos_token and add_eos_token are false: asking for special tokens adds none.
    let plain = tokenizer.encode("Call me Ishmael.", false).expect("encode");
    assert_eq!(ids(&tokenizer, "Call me Ishmael."), plain.get_ids());

    let chat = "<|im_start|>user\nHi<|im_end|>\n";
    let chat_ids = ids(&tokenizer, chat);
    assert_eq!(chat_ids[0], 1, "<|im_start|> is id 1");
    assert!(chat_ids.contains(&2), "<|im_end|> is id 2");
    assert_eq!(
        tokenizer.decode(&chat_ids, true).expect("decode"),
        "user\nHi\n"
    );
    assert_eq!(tokenizer.get_vocab_size(true), 49152);
}

/// One passage of the reference fixture.
#[derive(serde::Deserialize)]
struct Case {
    name: String,
    text: String,
    ids: Vec<u32>,
}

/// `tests/fixtures/smollm2_tokenizer_reference.json` (see its `note`).
#[derive(serde::Deserialize)]
struct Reference {
    generator: String,
    cases: Vec<Case>,
}

/// Panics with the first differing token, shown as text, if `ours` is not `reference`.
fn assert_same_ids(tokenizer: &Tokenizer, case: &Case, ours: &[u32], source: &str) {
    if ours == case.ids {
        return;
    }
    let at = ours
        .iter()
        .zip(&case.ids)
        .position(|(a, b)| a != b)
        .unwrap_or(ours.len().min(case.ids.len()));
    let show = |ids: &[u32]| -> Vec<String> {
        ids.iter()
            .skip(at.saturating_sub(3))
            .take(8)
            .map(|&id| format!("{id}:{:?}", tokenizer.id_to_token(id).unwrap_or_default()))
            .collect()
    };
    panic!(
        "{} ({source}): {} ids vs {} from the reference; first difference at {at}:\n  ours      {:?}\n  reference {:?}",
        case.name,
        ours.len(),
        case.ids.len(),
        show(ours),
        show(&case.ids)
    );
}

#[test]
fn ids_match_llama_cpp() {
    let _cpu = common::busy();
    let Some(path) = gguf_path() else { return };
    let tokenizer = smollm2(&path);
    let reference: Reference = serde_json::from_str(&common::read_text(
        "tests/fixtures/smollm2_tokenizer_reference.json",
    ))
    .expect("parse the fixture");
    assert!(reference.generator.starts_with("llama-cpp-python"));
    assert!(reference.cases.iter().map(|c| c.ids.len()).sum::<usize>() > 900);

    // The tokenizer.json that `qpipe import` writes must load and agree too.
    let json = tokenizer.to_string(false).expect("serialize");
    let reloaded: Tokenizer = json.parse().expect("reload tokenizer.json");
    for case in &reference.cases {
        assert_same_ids(&tokenizer, case, &ids(&tokenizer, &case.text), "rebuilt");
        assert_same_ids(
            &tokenizer,
            case,
            &ids(&reloaded, &case.text),
            "reloaded json",
        );
        assert_eq!(
            tokenizer.decode(&case.ids, false).expect("decode"),
            case.text
        );
    }
}
