//! Memory-mapped safetensors checkpoints: single files, directories and sharded indexes.
//!
//! Opening maps every shard and validates every header (offsets in bounds, contiguous, sizes
//! matching shape x dtype, no duplicate names across shards, index consistent with the shards)
//! without touching tensor data, so it costs time proportional to the header size only.

pub mod codec;
mod header;
mod locate;
pub mod stats;
mod view;
pub mod write;

pub use codec::FloatType;
pub use safetensors::Dtype;
pub use view::TensorView;

use crate::error::{Error, Result};
use memmap2::Mmap;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One mapped safetensors file.
struct Shard {
    path: PathBuf,
    map: Mmap,
}

/// Where one tensor lives.
struct Entry {
    name: String,
    shard: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    range: Range<usize>,
}

/// An opened checkpoint: mapped weight files plus the side files found beside them.
pub struct Checkpoint {
    dir: PathBuf,
    shards: Vec<Shard>,
    entries: Vec<Entry>,
    by_name: HashMap<String, usize>,
    config: Option<serde_json::Value>,
    tokenizer: Option<PathBuf>,
    metadata: HashMap<String, String>,
}

impl Checkpoint {
    /// Opens `path`: a `.safetensors` file, a `*.safetensors.index.json`, or a directory with either.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let layout = locate::locate(path.as_ref())?;
        let mut shards = Vec::with_capacity(layout.files.len());
        let mut entries: Vec<Entry> = Vec::new();
        let mut by_name: HashMap<String, usize> = HashMap::new();
        let mut metadata = HashMap::new();
        for (shard_idx, file) in layout.files.iter().enumerate() {
            let map = map_file(file)?;
            let header = header::parse(&map).map_err(|m| Error::invalid(file, m))?;
            if let Some(m) = header.metadata.metadata() {
                metadata.extend(m.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
            for name in header.metadata.offset_keys() {
                let Some(info) = header.metadata.info(&name) else {
                    continue;
                };
                if let Some(&other) = by_name.get(&name) {
                    let first = &layout.files[entries[other].shard];
                    return Err(Error::invalid(
                        file,
                        format!(
                            "tensor '{name}' is also stored in {}: duplicate names across shards",
                            first.display()
                        ),
                    ));
                }
                let (s, e) = info.data_offsets;
                by_name.insert(name.clone(), entries.len());
                entries.push(Entry {
                    name,
                    shard: shard_idx,
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    range: header.data_start + s..header.data_start + e,
                });
            }
            shards.push(Shard {
                path: file.clone(),
                map,
            });
        }
        if let Some((index, weight_map)) = &layout.index {
            check_index(index, weight_map, &layout.dir, &shards, &entries)?;
        }
        if entries.is_empty() {
            return Err(Error::invalid(
                &layout.files[0],
                "checkpoint holds no tensors",
            ));
        }
        let config_path = layout.dir.join("config.json");
        let config = if config_path.is_file() {
            let text = std::fs::read_to_string(&config_path).map_err(Error::io(&config_path))?;
            Some(
                serde_json::from_str(&text)
                    .map_err(|e| Error::invalid(&config_path, format!("invalid JSON: {e}")))?,
            )
        } else {
            None
        };
        let tokenizer = Some(layout.dir.join("tokenizer.json")).filter(|p| p.is_file());
        Ok(Checkpoint {
            dir: layout.dir,
            shards,
            entries,
            by_name,
            config,
            tokenizer,
            metadata,
        })
    }

    /// Directory holding the weights and side files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The weight files, in load order.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.shards.iter().map(|s| s.path.as_path())
    }

    /// Parsed config.json beside the weights, if there is one.
    pub fn config(&self) -> Option<&serde_json::Value> {
        self.config.as_ref()
    }

    /// Path of tokenizer.json beside the weights, if there is one.
    pub fn tokenizer_path(&self) -> Option<&Path> {
        self.tokenizer.as_deref()
    }

    /// A `__metadata__` string of the weight files (shards merged), if present.
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).map(String::as_str)
    }

    /// The first weight file (for error messages about the checkpoint as a whole).
    pub fn first_file(&self) -> &Path {
        &self.shards[0].path
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the checkpoint holds no tensors (never true for an opened checkpoint).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// All tensors in file order (shard by shard, by offset).
    pub fn tensors(&self) -> impl ExactSizeIterator<Item = TensorView<'_>> {
        self.entries.iter().map(|e| self.view(e))
    }

    /// The tensor called `name`, if present.
    pub fn get(&self, name: &str) -> Option<TensorView<'_>> {
        self.by_name.get(name).map(|&i| self.view(&self.entries[i]))
    }

    /// The tensor called `name`, or an error naming the checkpoint.
    pub fn tensor(&self, name: &str) -> Result<TensorView<'_>> {
        self.get(name).ok_or_else(|| {
            Error::invalid(&self.shards[0].path, format!("no tensor named '{name}'"))
        })
    }

    fn view<'a>(&'a self, e: &'a Entry) -> TensorView<'a> {
        let shard = &self.shards[e.shard];
        TensorView {
            name: &e.name,
            dtype: e.dtype,
            shape: &e.shape,
            bytes: &shard.map[e.range.clone()],
            file: &shard.path,
        }
    }

    /// Total number of scalar parameters.
    pub fn parameter_count(&self) -> u64 {
        self.entries
            .iter()
            .map(|e| e.shape.iter().product::<usize>() as u64)
            .sum()
    }

    /// Bytes of tensor data per dtype name.
    pub fn bytes_by_dtype(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for e in &self.entries {
            *out.entry(format!("{:?}", e.dtype)).or_insert(0) += e.range.len() as u64;
        }
        out
    }
}

fn map_file(path: &Path) -> Result<Mmap> {
    let file = File::open(path).map_err(Error::io(path))?;
    let len = file.metadata().map_err(Error::io(path))?.len();
    if len < 8 {
        return Err(Error::invalid(
            path,
            format!(
                "file is {len} bytes, too short for a safetensors header (8-byte length prefix)"
            ),
        ));
    }
    // SAFETY: the map is read-only; a file truncated by another process while mapped would
    // fault, which is the documented risk of every mmap-based safetensors reader.
    let map = unsafe { Mmap::map(&file) }.map_err(Error::io(path))?;
    Ok(map)
}

/// Checks that the shard index and the shards agree tensor by tensor.
fn check_index(
    index: &Path,
    weight_map: &BTreeMap<String, String>,
    dir: &Path,
    shards: &[Shard],
    entries: &[Entry],
) -> Result<()> {
    let by_name: HashMap<&str, &Entry> = entries.iter().map(|e| (e.name.as_str(), e)).collect();
    for (name, shard) in weight_map {
        let Some(entry) = by_name.get(name.as_str()) else {
            return Err(Error::invalid(
                index,
                format!(
                    "tensor '{name}' is listed in shard '{shard}' but that shard does not hold it"
                ),
            ));
        };
        if shards[entry.shard].path != dir.join(shard) {
            return Err(Error::invalid(
                index,
                format!(
                    "tensor '{name}' is listed in shard '{shard}' but found in {}",
                    shards[entry.shard].path.display()
                ),
            ));
        }
    }
    if let Some(extra) = entries.iter().find(|e| !weight_map.contains_key(&e.name)) {
        return Err(Error::invalid(
            index,
            format!(
                "tensor '{}' in {} is missing from the index",
                extra.name,
                shards[extra.shard].path.display()
            ),
        ));
    }
    Ok(())
}
