use super::*;

#[test]
fn embedded_profiles_load_and_every_number_has_a_source() {
    let all = targets().unwrap();
    let names: Vec<&str> = all.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "arm-neon",
            "arm-dot",
            "hexagon",
            "apple-ane",
            "tensorrt",
            "intel-vnni",
            "host",
            "llama-cpp"
        ]
    );
    for t in &all {
        for (label, s) in t.parameters() {
            assert!(
                ["datasheet", "paper", "assumed"].contains(&s.kind()),
                "{}: {label}: {}",
                t.name,
                s.source
            );
        }
    }
}

#[test]
fn legality_follows_the_rules() {
    use Activation::{Float, A16, A8};
    let f = |s: &str| s.parse::<Format>().unwrap();
    let trt = target("tensorrt").unwrap();
    assert_eq!(
        trt.check(&f("int4-g128-asym"), Float).unwrap(),
        Support::Native
    );
    assert_eq!(
        trt.legality(&f("int8-channel-sym"), A8).unwrap().compute,
        Precision::Int8
    );
    let e = trt.check(&f("int8-channel-sym"), A16).unwrap_err();
    let expected = "tensorrt: int8-channel-sym weights with a16 activations are not supported";
    assert!(e.to_string().starts_with(expected), "{e}");
    let e = trt
        .check(&f("int2-g32-sym"), Float)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("tensorrt: int2-g32-sym weights are not supported (TensorRT supports"),
        "{e}"
    );
    let neon = target("arm-neon").unwrap();
    assert!(matches!(
        neon.check(&f("int3-g32-sym"), A8).unwrap(),
        Support::Emulated { .. }
    ));
    assert!(neon.check(&f("q4_0"), Float).is_err());
    let llama = target("llama-cpp").unwrap();
    assert!(llama.legality(&f("q4_k"), Float).is_ok());
    assert!(llama.legality(&f("int4-g32-sym"), Float).is_err());
}

/// Every format qpipe knows: each integer width x granularity x scheme, the GGUF types and
/// the float types.
fn every_format() -> Vec<Format> {
    use crate::quant::format::{GROUP_SIZES, INT_BITS};
    use crate::quant::{FloatType, GgufType, Granularity, IntFormat, Scheme};
    let granularities = [Granularity::Tensor, Granularity::Channel]
        .into_iter()
        .chain(GROUP_SIZES.map(Granularity::Group));
    let schemes = [Scheme::Symmetric, Scheme::Asymmetric, Scheme::PowerOfTwo];
    let ints = INT_BITS.into_iter().flat_map(|bits| {
        granularities.clone().flat_map(move |granularity| {
            schemes.map(|scheme| {
                Format::Int(IntFormat {
                    bits,
                    granularity,
                    scheme,
                })
            })
        })
    });
    let others = GgufType::ALL
        .map(Format::Gguf)
        .into_iter()
        .chain([FloatType::F32, FloatType::F16, FloatType::BF16].map(Format::Float));
    ints.chain(others).collect()
}

/// The legality of every format with float, A8 and A16 activations on every target, as in
/// `legality.txt`: the compute precision, `*` when emulated, `-` when illegal. The table was
/// written by the matcher that split format names, before rules matched typed formats; a
/// change to the rules changes it.
#[test]
fn every_format_is_legal_where_the_table_says() {
    let targets = targets().unwrap();
    let mut table = format!("{:<18}", "format");
    for t in &targets {
        table += &format!(" {:<20}", t.name);
    }
    table = table.trim_end().to_string() + "\n";
    for f in every_format() {
        let mut line = format!("{:<18}", f.to_string());
        for t in &targets {
            let cells: Vec<String> = Activation::ALL
                .into_iter()
                .map(|a| match t.legality(&f, a) {
                    Ok(l) => {
                        format!("{}{}", l.compute.name(), if l.emulated { "*" } else { "" })
                    }
                    Err(_) => "-".to_string(),
                })
                .collect();
            line += &format!(" {:<20}", cells.join(" "));
        }
        table += line.trim_end();
        table += "\n";
    }
    let expected = include_str!("legality.txt");
    for (got, want) in table.lines().zip(expected.lines()) {
        assert_eq!(got, want);
    }
    assert_eq!(table.lines().count(), expected.lines().count());
}

#[test]
fn bad_profiles_are_rejected_with_the_target_named() {
    let json = TARGETS_JSON.replacen("\"compute\": \"int8\" }", "\"compute\": \"fp16\" }", 1);
    let e = parse_targets(&json, Path::new("t.json")).unwrap_err();
    assert!(
        e.to_string()
            .contains("target 'arm-neon': no peak rate for compute fp16"),
        "{e}"
    );
    let json = TARGETS_JSON.replacen(
        "\"source\": \"datasheet: Cortex-A72",
        "\"source\": \"Cortex-A72",
        1,
    );
    let e = parse_targets(&json, Path::new("t.json")).unwrap_err();
    assert!(
        e.to_string().contains("expected 'datasheet|paper|assumed"),
        "{e}"
    );
    let json = TARGETS_JSON.replacen("\"activations\": [\"a8\"]", "\"activations\": [\"a4\"]", 1);
    let e = parse_targets(&json, Path::new("t.json")).unwrap_err();
    assert!(e.to_string().contains("unknown variant `a4`"), "{e}");
    for (from, to, expected) in [
        (
            "[\"int8\"]",
            "[\"int7\"]",
            "rule weight 'int7' is not a format kind",
        ),
        (
            "[\"int8\"]",
            "[\"int8-g32-sym\"]",
            "rule weight 'int8-g32-sym' is not",
        ),
        ("\"pow2\"]", "\"pow3\"]", "unknown scheme 'pow3'"),
        ("\"g128\"]", "\"g100\"]", "unknown granularity 'g100'"),
    ] {
        let json = TARGETS_JSON.replacen(from, to, 1);
        let e = parse_targets(&json, Path::new("t.json")).unwrap_err();
        assert!(e.to_string().contains(expected), "{e}");
    }
}
