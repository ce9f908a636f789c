//! Writes safetensors files lazily and atomically (one tensor's bytes in memory at a time).
//!
//! The header comes from safetensors' own `Metadata`, so the file is valid by the crate's
//! rules. Bytes go to a hidden sibling temp file that is fsynced and then renamed over the
//! target; on any error the temp file is removed, so a failed write leaves neither a partial
//! file nor a changed target. (safetensors' `serialize_to_file` does the same dance but through
//! a 0600 temp file whose mode survives the rename; ours is created like any file, under the
//! user's umask.)

use crate::error::{Error, Result};
use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::Dtype;
use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// A tensor whose bytes are produced only when the writer reaches it.
pub struct LazyTensor<'a> {
    dtype: Dtype,
    shape: Vec<usize>,
    produce: Box<dyn Fn() -> Result<Vec<u8>> + Send + Sync + 'a>,
}

impl<'a> LazyTensor<'a> {
    /// A tensor of `dtype` and `shape` whose little-endian bytes `produce` returns on demand.
    pub fn new(
        dtype: Dtype,
        shape: Vec<usize>,
        produce: impl Fn() -> Vec<u8> + Send + Sync + 'a,
    ) -> Self {
        Self::try_new(dtype, shape, move || Ok(produce()))
    }

    /// A tensor whose bytes `produce` computes on demand and may fail to (a corrupt source, a
    /// format that cannot hold it); the error aborts the write and leaves no file behind.
    pub fn try_new(
        dtype: Dtype,
        shape: Vec<usize>,
        produce: impl Fn() -> Result<Vec<u8>> + Send + Sync + 'a,
    ) -> Self {
        LazyTensor {
            dtype,
            shape,
            produce: Box::new(produce),
        }
    }

    /// An f32 tensor whose values `produce` returns on demand.
    pub fn f32(shape: Vec<usize>, produce: impl Fn() -> Vec<f32> + Send + Sync + 'a) -> Self {
        Self::new(Dtype::F32, shape, move || {
            produce().iter().flat_map(|v| v.to_le_bytes()).collect()
        })
    }

    /// An f32 tensor whose values `produce` computes on demand and may fail to (a corrupt source);
    /// the error aborts the write and leaves no file behind.
    pub fn try_f32(
        shape: Vec<usize>,
        produce: impl Fn() -> Result<Vec<f32>> + Send + Sync + 'a,
    ) -> Self {
        Self::try_new(Dtype::F32, shape, move || {
            Ok(produce()?.iter().flat_map(|v| v.to_le_bytes()).collect())
        })
    }

    fn byte_len(&self) -> usize {
        (self.shape.iter().product::<usize>() * self.dtype.bitsize()).div_ceil(8)
    }
}

/// Temp files being written now, so an interrupted process can remove them
/// ([`remove_temp_files`]) and leave no half-written file behind.
static IN_FLIGHT: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// Removes every temp file a write in progress holds; for the binary's Ctrl-C / SIGTERM
/// handler, which exits right after.
pub fn remove_temp_files() {
    let mut in_flight = IN_FLIGHT.lock().unwrap_or_else(|e| e.into_inner());
    for p in in_flight.drain(..) {
        let _ = std::fs::remove_file(p);
    }
}

/// Registers a temp file while it is written; removes it unless the write completed.
struct TempGuard {
    path: PathBuf,
    done: bool,
}

impl TempGuard {
    fn new(path: PathBuf) -> Self {
        IN_FLIGHT
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(path.clone());
        TempGuard { path, done: false }
    }
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.path);
        }
        IN_FLIGHT
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|p| *p != self.path);
    }
}

/// Whether `path` is one of the temp files [`atomically`] writes (`.NAME.tmp-PID`).
pub fn is_temp_file(path: &Path) -> bool {
    path.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
        n.starts_with('.')
            && n.rsplit_once(".tmp-")
                .is_some_and(|(_, pid)| pid.parse::<u32>().is_ok())
    })
}

/// The hidden temp file beside `path` that a write goes to before the rename.
fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Creates `path` atomically: `write` fills a fresh temp file beside it (through a buffer), which
/// is fsynced and renamed over `path`; on any error the temp file is removed and `path` untouched.
pub(crate) fn atomically(
    path: &Path,
    write: impl FnOnce(&mut dyn Write, &Path) -> Result<()>,
) -> Result<()> {
    let tmp = temp_path(path);
    let mut guard = TempGuard::new(tmp.clone());
    let written = (|| {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(Error::io(&tmp))?;
        let mut out = BufWriter::with_capacity(1 << 20, &file);
        write(&mut out, &tmp)?;
        out.flush().map_err(Error::io(&tmp))?;
        drop(out);
        file.sync_all().map_err(Error::io(&tmp))
    })();
    // The user asked for `path`: an I/O error on the hidden temp file beside it names `path`.
    written.map_err(|e| match e {
        Error::Io { path: p, source } if p == tmp => Error::Io {
            path: path.to_path_buf(),
            source,
        },
        e => e,
    })?;
    std::fs::rename(&tmp, path).map_err(Error::io(path))?;
    guard.done = true;
    Ok(())
}

/// Errors naming `path` if the directory it would be written into cannot take a file (see
/// [`check_writable`]).
pub fn check_writable_file(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    check_writable(dir).map_err(|e| match e {
        Error::Io { source, .. } => Error::Io {
            path: path.to_path_buf(),
            source,
        },
        e => e,
    })
}

/// Errors naming `dir` if a file cannot be created in it (it is missing, not a directory, or
/// not writable): checked before long work whose results would go there.
pub fn check_writable(dir: &Path) -> Result<()> {
    let probe = dir.join(format!(".qpipe-write-check-{}", std::process::id()));
    let created = OpenOptions::new().write(true).create_new(true).open(&probe);
    match created {
        Ok(_) => std::fs::remove_file(&probe).map_err(Error::io(&probe)),
        Err(source) => Err(Error::Io {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

/// Writes a small file (config, report) atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    atomically(path, |out, tmp| {
        out.write_all(bytes).map_err(Error::io(tmp))
    })
}

/// Writes `tensors` (and string `metadata`) to `path` atomically.
///
/// Tensors are laid out by descending element size (stable, so the given order holds within a
/// dtype), which keeps every tensor aligned to its element size as the crate's writer does.
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, LazyTensor<'_>)],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let mut order: Vec<&(String, LazyTensor<'_>)> = tensors.iter().collect();
    order.sort_by_key(|(_, t)| std::cmp::Reverse(t.dtype.bitsize()));
    let mut offset = 0;
    let infos = order
        .iter()
        .map(|(name, t)| {
            let info = TensorInfo {
                dtype: t.dtype,
                shape: t.shape.clone(),
                data_offsets: (offset, offset + t.byte_len()),
            };
            offset += t.byte_len();
            (name.clone(), info)
        })
        .collect();
    // Through a JSON value, whose maps are sorted: the metadata is a HashMap, and serialising
    // it directly would order its keys differently from run to run.
    let header = Metadata::new(metadata, infos)
        .and_then(|m| Ok(serde_json::to_string(&serde_json::to_value(&m)?)?))
        .map_err(|e| Error::invalid(path, format!("cannot build safetensors header: {e}")))?;
    let mut header = header.into_bytes();
    header.resize(header.len().next_multiple_of(8), b' ');

    atomically(path, |out, tmp| {
        out.write_all(&(header.len() as u64).to_le_bytes())
            .and_then(|()| out.write_all(&header))
            .map_err(Error::io(tmp))?;
        for (name, t) in &order {
            let bytes = (t.produce)()?;
            if bytes.len() != t.byte_len() {
                return Err(Error::invalid(
                    path,
                    format!(
                        "tensor '{name}' produced {} bytes, expected {}",
                        bytes.len(),
                        t.byte_len()
                    ),
                ));
            }
            out.write_all(&bytes).map_err(Error::io(tmp))?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::Checkpoint;

    /// Metadata with many keys (a HashMap, iterated in a random order per map) is written in
    /// the same order every time: same inputs, same bytes.
    #[test]
    fn metadata_keys_are_written_in_one_order() {
        let dir = std::env::temp_dir().join(format!("qpipe-meta-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str| {
            let path = dir.join(name);
            let tensors = vec![("t".to_string(), LazyTensor::f32(vec![1], || vec![1.0]))];
            let meta = (0..16)
                .map(|i| (format!("key{i}"), i.to_string()))
                .collect();
            write_safetensors(&path, &tensors, Some(meta)).unwrap();
            std::fs::read(path).unwrap()
        };
        let first = write("a.safetensors");
        for i in 0..8 {
            assert!(write(&format!("b{i}.safetensors")) == first);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn writes_a_valid_aligned_file_under_the_umask() {
        let dir = std::env::temp_dir().join(format!("qpipe-write-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.safetensors");
        let tensors = vec![
            (
                "b_u8".to_string(),
                LazyTensor::new(Dtype::U8, vec![3], || vec![1, 2, 3]),
            ),
            (
                "a_f32".to_string(),
                LazyTensor::f32(vec![2], || vec![1.5, -2.0]),
            ),
        ];
        let meta = HashMap::from([("k".to_string(), "v".to_string())]);
        write_safetensors(&path, &tensors, Some(meta)).unwrap();
        let c = Checkpoint::open(&path).unwrap();
        let t = c.tensor("a_f32").unwrap();
        assert_eq!(t.to_f32_vec().unwrap(), vec![1.5, -2.0]);
        assert_eq!(
            t.bytes.as_ptr() as usize % 4,
            0,
            "f32 data laid out first, aligned"
        );
        assert_eq!(c.tensor("b_u8").unwrap().bytes, &[1, 2, 3]);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let umask = status
            .lines()
            .find_map(|l| l.strip_prefix("Umask:"))
            .unwrap()
            .trim();
        let umask = u32::from_str_radix(umask, 8).unwrap();
        assert_eq!(
            mode,
            0o666 & !umask,
            "created like any file, under the umask"
        );
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no temp file left"
        );

        // A producer that lies about its size fails the write and leaves the old file intact.
        let bad = vec![(
            "x".to_string(),
            LazyTensor::new(Dtype::F32, vec![4], || vec![0; 3]),
        )];
        let err = write_safetensors(&path, &bad, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("produced 3 bytes, expected 16"), "{err}");
        assert!(Checkpoint::open(&path).unwrap().get("a_f32").is_some());
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "temp file removed"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
