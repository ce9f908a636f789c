//! The measurement cache: medians of timings on this machine, keyed by what this machine is
//! (CPU model, thread count) and what was timed, persisted as JSON and written atomically.

use crate::checkpoint::write::write_atomic;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Medians of timings on this machine, persisted as JSON.
#[derive(Debug)]
pub struct Cache {
    path: PathBuf,
    pub(super) medians_s: BTreeMap<String, f64>,
}

/// The cache file's layout.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CacheFile {
    version: u32,
    medians_s: BTreeMap<String, f64>,
}

impl Cache {
    /// `$QPIPE_CACHE`, else `$XDG_CACHE_HOME/qpipe/measurements.json`, else
    /// `~/.cache/qpipe/measurements.json`, else `.qpipe-cache/measurements.json`.
    pub fn default_path() -> PathBuf {
        if let Some(p) = std::env::var_os("QPIPE_CACHE") {
            return PathBuf::from(p);
        }
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")));
        match base {
            Some(b) => b.join("qpipe").join("measurements.json"),
            None => PathBuf::from(".qpipe-cache").join("measurements.json"),
        }
    }

    /// Opens the cache at `path` (empty if the file does not exist yet).
    pub fn open(path: &Path) -> Result<Self> {
        let medians_s = match std::fs::read_to_string(path) {
            Ok(text) => {
                let file: CacheFile = serde_json::from_str(&text)
                    .map_err(|e| Error::invalid(path, format!("invalid measurement cache: {e}")))?;
                if file.version != 1 {
                    return Err(Error::invalid(
                        path,
                        format!("measurement cache version {} (expected 1)", file.version),
                    ));
                }
                file.medians_s
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(Error::io(path)(e)),
        };
        Ok(Cache {
            path: path.to_path_buf(),
            medians_s,
        })
    }

    /// The file this cache lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(super) fn save(&self) -> Result<()> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
        }
        let file = CacheFile {
            version: 1,
            medians_s: self.medians_s.clone(),
        };
        let mut text = serde_json::to_string_pretty(&file).unwrap_or_default();
        text.push('\n');
        write_atomic(&self.path, text.as_bytes())
    }
}

/// What this machine is, for cache keys: CPU model and rayon thread count.
pub fn machine() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    format!("{model}, {} threads", rayon::current_num_threads())
}

/// The largest CPU cache (bytes) listed in sysfs, if any.
pub(super) fn last_level_cache() -> Option<u64> {
    let dir = Path::new("/sys/devices/system/cpu/cpu0/cache");
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("size")).ok())
        .filter_map(|s| {
            let s = s.trim();
            let (num, mult) = match s.chars().last()? {
                'K' => (&s[..s.len() - 1], 1 << 10),
                'M' => (&s[..s.len() - 1], 1 << 20),
                _ => (s, 1),
            };
            num.parse::<u64>().ok().map(|n| n * mult)
        })
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_round_trips_and_rejects_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/m.json");
        let mut c = Cache::open(&path).unwrap();
        c.medians_s.insert("k".into(), 1.5e-6);
        c.save().unwrap();
        assert_eq!(Cache::open(&path).unwrap().medians_s["k"], 1.5e-6);
        std::fs::write(&path, "{").unwrap();
        let e = Cache::open(&path).unwrap_err().to_string();
        assert!(e.contains("m.json: invalid measurement cache"), "{e}");
    }
}
