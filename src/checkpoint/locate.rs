//! Resolves what the user named (a file, a directory, or a shard index) into the weight files to map.

use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

/// The weight files making up one checkpoint, and where its side files live.
#[derive(Debug)]
pub(crate) struct Layout {
    /// Directory holding the weights (and, if present, config.json and tokenizer.json).
    pub dir: PathBuf,
    /// Safetensors files, in load order.
    pub files: Vec<PathBuf>,
    /// For sharded checkpoints: the index file and its tensor-name -> shard-file map.
    pub index: Option<(PathBuf, BTreeMap<String, String>)>,
}

const INDEX_SUFFIX: &str = ".safetensors.index.json";

/// Finds the weights for `path`: a `.safetensors` file, an index JSON, or a directory with either.
pub(crate) fn locate(path: &Path) -> Result<Layout> {
    let meta = std::fs::metadata(path).map_err(Error::io(path))?;
    if meta.is_dir() {
        return locate_in_dir(path);
    }
    let dir = parent_dir(path);
    if path.to_string_lossy().ends_with(".index.json") {
        return read_index(path, dir);
    }
    Ok(Layout {
        dir,
        files: vec![path.to_path_buf()],
        index: None,
    })
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn locate_in_dir(dir: &Path) -> Result<Layout> {
    let index = dir.join(format!("model{INDEX_SUFFIX}"));
    if index.is_file() {
        return read_index(&index, dir.to_path_buf());
    }
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(Layout {
            dir: dir.to_path_buf(),
            files: vec![single],
            index: None,
        });
    }
    let mut indexes = Vec::new();
    let mut weights = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(Error::io(dir))? {
        let entry = entry.map_err(Error::io(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(INDEX_SUFFIX) {
            indexes.push(entry.path());
        } else if name.ends_with(".safetensors") {
            weights.push(entry.path());
        }
    }
    indexes.sort();
    weights.sort();
    match (indexes.as_slice(), weights.as_slice()) {
        ([index], _) => read_index(index, dir.to_path_buf()),
        ([], [one]) => Ok(Layout {
            dir: dir.to_path_buf(),
            files: vec![one.clone()],
            index: None,
        }),
        ([], []) => Err(Error::invalid(
            dir,
            "directory holds no .safetensors weights (expected model.safetensors or a *.safetensors.index.json)",
        )),
        ([], many) => Err(Error::invalid(
            dir,
            format!(
                "directory holds {} .safetensors files but no *{INDEX_SUFFIX}; pass one file or add the index",
                many.len()
            ),
        )),
        (many, _) => Err(Error::invalid(
            dir,
            format!("directory holds {} shard indexes; pass one of them", many.len()),
        )),
    }
}

#[derive(serde::Deserialize)]
struct IndexFile {
    weight_map: BTreeMap<String, String>,
}

fn read_index(index: &Path, dir: PathBuf) -> Result<Layout> {
    let text = std::fs::read_to_string(index).map_err(Error::io(index))?;
    let parsed: IndexFile = serde_json::from_str(&text)
        .map_err(|e| Error::invalid(index, format!("invalid shard index JSON: {e}")))?;
    if parsed.weight_map.is_empty() {
        return Err(Error::invalid(index, "shard index has an empty weight_map"));
    }
    let mut files: Vec<PathBuf> = Vec::new();
    for shard in parsed.weight_map.values() {
        let rel = Path::new(shard);
        if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
            return Err(Error::invalid(
                index,
                format!("shard name '{shard}' must be a relative path inside the model directory"),
            ));
        }
        let file = dir.join(rel);
        if !files.contains(&file) {
            if !file.is_file() {
                return Err(Error::invalid(
                    index,
                    format!(
                        "shard '{shard}' is listed but missing from {}",
                        dir.display()
                    ),
                ));
            }
            files.push(file);
        }
    }
    files.sort();
    Ok(Layout {
        dir,
        files,
        index: Some((index.to_path_buf(), parsed.weight_map)),
    })
}
