//! The library's modules are layers (docs/ARCHITECTURE.md): a module may use the modules
//! below it and never one above, so data flows one way and no two modules need each other.
//! This reads every `src/**/*.rs` of the library and fails on any `crate::X` path that climbs.

use std::path::{Path, PathBuf};

/// The layer order, lowest first. A new top-level module must be placed here.
const LAYERS: &[&str] = &[
    "error",
    "process",
    "checkpoint",
    "data",
    "quant",
    "packed",
    "model",
    "gguf",
    "import",
    "reference",
    "calib",
    "eval",
    "sensitivity",
    "hardware",
    "search",
    "export",
    "report",
    "pipeline",
];

/// Files of the binary, above every layer (they use the library as `qpipe::`).
const BINARY: &[&str] = &["main", "cli"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules `source` names through `crate::` paths (comments ignored), including
/// every member of a `crate::{a, b::c}` group.
fn crate_paths(source: &str) -> Vec<String> {
    let code: String = source
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut names = Vec::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().last();
        rest = &rest[i + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // `qpipe_kernels_crate::` or the like, not this crate
        }
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        names.push(ident(&item));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
            names.push(ident(&item));
        } else {
            names.push(ident(rest));
        }
    }
    names.retain(|n| !n.is_empty() && n != "self");
    names
}

/// Every edge of `module` (a top-level module) to a module at or above its own layer.
fn upward_edges(module: &str, source: &str) -> Vec<String> {
    let level = |m: &str| LAYERS.iter().position(|l| *l == m);
    let from = level(module).unwrap_or_else(|| panic!("module '{module}' is not in LAYERS"));
    crate_paths(source)
        .into_iter()
        .filter(|to| to != module)
        .filter(|to| match level(to) {
            Some(l) => l > from,
            // Items of lib.rs itself (the `Error` re-export): the lowest layer.
            None => !matches!(to.as_str(), "Error" | "Result" | "Subject"),
        })
        .collect()
}

#[test]
fn no_library_module_uses_one_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut violations = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = top.trim_end_matches(".rs");
        if module == "lib" || BINARY.contains(&module) {
            continue;
        }
        let source = std::fs::read_to_string(file).unwrap();
        for to in upward_edges(module, &source) {
            violations.push(format!("{} ({module}) uses crate::{to}", rel.display()));
        }
    }
    assert!(
        violations.is_empty(),
        "uses that climb the layer order {LAYERS:?}:\n{}",
        violations.join("\n")
    );
}

#[test]
fn every_library_module_has_a_layer() {
    let lib =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs")).unwrap();
    let declared: Vec<&str> = lib
        .lines()
        .filter_map(|l| l.strip_prefix("pub mod "))
        .map(|l| l.trim_end_matches(';'))
        .collect();
    assert!(!declared.is_empty());
    for m in &declared {
        assert!(
            LAYERS.contains(m),
            "src/lib.rs declares '{m}', which LAYERS does not place"
        );
    }
    for m in LAYERS {
        assert!(
            declared.contains(m),
            "LAYERS names '{m}', which src/lib.rs does not declare"
        );
    }
}

#[test]
fn the_checker_sees_single_grouped_and_inline_paths() {
    let source = "use crate::quant::Format;\nuse crate::{model, search::Point};\n\
                  let x = crate::report::human_bytes(1); // crate::pipeline in a comment\n";
    assert_eq!(
        crate_paths(source),
        ["quant", "model", "search", "report"].map(String::from)
    );
    assert_eq!(
        upward_edges("hardware", source),
        ["search", "report"].map(String::from)
    );
    assert!(upward_edges("pipeline", source).is_empty());
}
