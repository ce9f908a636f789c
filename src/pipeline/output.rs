//! The output directory of a compress run and `qpipe.json`, its report: what every file is
//! called, how each is written (atomically, so a failed run leaves finished files only), and
//! the schema of the report users and CI jobs read.

use super::policy::Validated;
use crate::calib::{Hessians, Stats};
use crate::checkpoint::write::{check_writable, write_atomic};
use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result, Subject};
use crate::eval::Comparison;
use crate::export::packed::Written;
use crate::hardware::CostEstimate;
use crate::packed::Provenance;
use crate::quant::Format;
use crate::search::genome::NamedGenome;
use crate::search::{self, Constraints, Origin, Settings};
use crate::sensitivity::{Options, Sensitivity};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One genome evaluated on the held-out tokens.
#[derive(Debug, Clone, Serialize)]
pub struct HeldOut {
    /// Where it came from.
    pub origin: String,
    /// Bits per weight of the whole model (every stored tensor's bytes x 8 / parameters).
    pub bits_per_weight: f64,
    /// Bytes of every stored tensor of the model.
    pub bytes: u64,
    /// Loss on the calibration tokens (what the search saw).
    pub calibration_loss: f64,
    /// Held-out metrics (fake-quantized forward passes).
    pub held_out: Comparison,
}

/// The shipped file's size, and the input's: what a user compares first.
#[derive(Debug, Clone, Serialize)]
pub struct Size {
    /// Parameters of the model (the elements of every tensor).
    pub parameters: u64,
    /// Bytes of every stored tensor: codes, scales, zero-points, float tensors (not the
    /// file's header).
    pub tensor_bytes: u64,
    /// `tensor_bytes` x 8 / `parameters`.
    pub bits_per_weight: f64,
    /// Bytes of `model.qpipe.safetensors`.
    pub file_bytes: u64,
    /// Bytes of the input checkpoint's files.
    pub input_bytes: u64,
    /// `input_bytes` / `file_bytes`.
    pub compression: f64,
}

impl Size {
    /// The size of `written`, a model of `parameters`, made from files of `input_bytes`.
    pub fn new(written: &Written, parameters: u64, input_bytes: u64) -> Size {
        Size {
            parameters,
            tensor_bytes: written.tensor_bytes,
            bits_per_weight: written.tensor_bytes as f64 * 8.0 / parameters.max(1) as f64,
            file_bytes: written.file_bytes,
            input_bytes,
            compression: input_bytes as f64 / written.file_bytes.max(1) as f64,
        }
    }
}

/// `qpipe.json`: what was chosen, why, and how good it measured.
#[derive(Debug, Serialize)]
pub struct CompressReport {
    /// Target name.
    pub target: String,
    /// Device the target describes.
    pub device: String,
    /// Metric of every loss (`mean KL` or `1 - cos`).
    pub metric: String,
    /// The calibration text (a file, or `NAME (built in)`).
    pub calibration_text: String,
    /// The held-out evaluation text.
    pub evaluation_text: String,
    /// Constraints the selection met.
    pub constraints: Constraints,
    /// Search settings.
    pub settings: Settings,
    /// Candidate formats.
    pub formats: Vec<String>,
    /// The selected genome.
    pub genome: NamedGenome,
    /// Its objectives on the calibration tokens (latency and energy are estimates).
    pub selected: search::Fitness,
    /// Where the selected genome came from.
    pub origin: Origin,
    /// Cost-model estimates for the selected genome (decode step and prefill of `seq_len`).
    pub estimate: Option<CostEstimate>,
    /// Held-out metrics of the packed checkpoint, run on the packed weights.
    pub packed: Comparison,
    /// The genomes the choice was among, on further calibration tokens.
    pub validation: Vec<Validated>,
    /// Every seed and the selected genome on the held-out tokens (fake-quantized).
    pub held_out: Vec<HeldOut>,
    /// The Pareto front (calibration loss, bytes, estimated latency and energy).
    pub front: Vec<search::Point>,
    /// Genome evaluations asked for and answered from the cache.
    pub requests: u64,
    /// Cache hits among them.
    pub cache_hits: u64,
    /// The packed file (removed at the end when `qpipe` is not among the exports).
    pub written: Written,
    /// The files shipped in the output directory.
    pub exports: Vec<super::policy::Export>,
    /// Its size, whole model, against the input's.
    pub size: Size,
    /// The GGUF file (`--target llama-cpp`).
    pub gguf: Option<crate::gguf::writer::Written>,
    /// The ONNX file (targets whose toolchains load ONNX), and its encodings file.
    pub onnx: Option<crate::export::onnx::Written>,
    /// Where it all came from.
    pub provenance: Provenance,
}

impl CompressReport {
    /// The report as `qpipe.json` holds it (pretty JSON with a final newline).
    pub fn json(&self) -> Result<String> {
        serde_json::to_string_pretty(self)
            .map(|s| s + "\n")
            .map_err(|e| Error::invalid(Subject::other(REPORT), format!("cannot encode JSON: {e}")))
    }
}

/// The report's file name.
const REPORT: &str = "qpipe.json";
/// The calibration results kept for `--resume`, in a directory of their own so the output
/// directory still loads as one checkpoint.
const CALIBRATION: &str = "calibration";
/// The calibration statistics, in [`CALIBRATION`].
const STATS: &str = "statistics.json";
/// The input Hessians (GPTQ), in [`CALIBRATION`].
const HESSIANS: &str = "hessians.safetensors";

/// A value saved with the key of the inputs it was computed from.
#[derive(Serialize, Deserialize)]
struct Saved<K, T> {
    key: K,
    value: T,
}

/// Every file a compress run writes, by name: at the end each is moved from the staging
/// directory into the output directory, and any of them the run did not write is removed there
/// (the leftover of an earlier run with other exports).
const OUTPUTS: &[&str] = &[
    "model.qpipe.safetensors",
    "model.gguf",
    "model.onnx",
    "model.onnx.data",
    "model.encodings",
    "config.json",
    "tokenizer.json",
    REPORT,
    "pareto.svg",
    "sensitivity.json",
    "sensitivity.svg",
    "search-state.json",
    RESUME,
    CALIBRATION,
];

/// What a resumable run was made from, checked by `--resume` before it reuses anything.
const RESUME: &str = "resume.json";

/// A compress run's output directory and the files in it. A run writes into a staging
/// directory beside it (`.NAME.qpipe-partial`) and moves its files into place only when it
/// succeeds ([`OutDir::finish`]), so a failed run leaves the output directory as it found it;
/// an interrupted one leaves the staging directory, which `--resume` continues from.
pub struct OutDir {
    dir: PathBuf,
    staging: PathBuf,
}

impl OutDir {
    /// The directory `dir`, created if missing, written directly (`qpipe sensitivity --out`).
    pub fn create(dir: &Path) -> Result<OutDir> {
        std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
        check_writable(dir)?;
        Ok(OutDir {
            dir: dir.to_path_buf(),
            staging: dir.to_path_buf(),
        })
    }

    /// The output directory `dir` of a compress run, staged: a fresh run starts an empty
    /// staging directory; a resumed one continues the staging directory an interrupted run
    /// left (its stale temp files removed) or, after a finished run, starts one holding that
    /// run's resumable files. Fails before any work if the files could not be written.
    pub fn staged(dir: &Path, start: super::Start) -> Result<OutDir> {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| Error::invalid(dir, "not a directory name to write into"))?;
        let parent = match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if dir.exists() && !dir.is_dir() {
            return Err(Error::invalid(dir, "exists and is not a directory"));
        }
        std::fs::create_dir_all(&parent).map_err(Error::io(&parent))?;
        check_writable(&parent)?;
        if dir.is_dir() {
            check_writable(dir)?;
        }
        let staging = parent.join(format!(".{name}.qpipe-partial"));
        let out = OutDir {
            dir: dir.to_path_buf(),
            staging,
        };
        let continuing = start == super::Start::Resume && out.staging.is_dir();
        if !continuing && out.staging.exists() {
            std::fs::remove_dir_all(&out.staging).map_err(Error::io(&out.staging))?;
        }
        std::fs::create_dir_all(out.staging.join(CALIBRATION)).map_err(Error::io(&out.staging))?;
        if continuing {
            out.remove_stale_temp_files()?;
        } else if start == super::Start::Resume {
            out.link_resumable()?;
        }
        Ok(out)
    }

    /// Removes the temp files a killed run left in the staging directory (a run removes its
    /// own on Ctrl-C, but not when it is killed).
    fn remove_stale_temp_files(&self) -> Result<()> {
        for dir in [self.staging.clone(), self.staging.join(CALIBRATION)] {
            let entries = std::fs::read_dir(&dir).map_err(Error::io(&dir))?;
            for entry in entries {
                let path = entry.map_err(Error::io(&dir))?.path();
                if crate::checkpoint::write::is_temp_file(&path) {
                    std::fs::remove_file(&path).map_err(Error::io(&path))?;
                }
            }
        }
        Ok(())
    }

    /// Hard links (or copies, across file systems) of a finished run's resumable files into
    /// the staging directory.
    fn link_resumable(&self) -> Result<()> {
        let files = ["search-state.json", "sensitivity.json", RESUME]
            .map(PathBuf::from)
            .into_iter()
            .chain([STATS, HESSIANS].map(|f| Path::new(CALIBRATION).join(f)));
        for f in files {
            let (from, to) = (self.dir.join(&f), self.staging.join(&f));
            if from.is_file() && std::fs::hard_link(&from, &to).is_err() {
                std::fs::copy(&from, &to).map_err(Error::io(&from))?;
            }
        }
        Ok(())
    }

    /// Moves every file the run wrote from the staging directory into the output directory
    /// (replacing an earlier run's), removes the qpipe files it did not write there, and
    /// removes the staging directory.
    pub fn finish(self) -> Result<()> {
        if self.staging == self.dir {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir).map_err(Error::io(&self.dir))?;
        for name in OUTPUTS {
            let (from, to) = (self.staging.join(name), self.dir.join(name));
            if to.is_dir() {
                std::fs::remove_dir_all(&to).map_err(Error::io(&to))?;
            } else if to.exists() {
                std::fs::remove_file(&to).map_err(Error::io(&to))?;
            }
            if from.exists() {
                std::fs::rename(&from, &to).map_err(Error::io(&to))?;
            }
        }
        std::fs::remove_dir_all(&self.staging).map_err(Error::io(&self.staging))
    }

    /// Where `staged`, a path written in the staging directory, will be after [`OutDir::finish`].
    pub fn final_path(&self, staged: &Path) -> PathBuf {
        staged
            .strip_prefix(&self.staging)
            .map_or_else(|_| staged.to_path_buf(), |rest| self.dir.join(rest))
    }

    /// `resume.json`: what this run is made from (`fields`, named values), for a later
    /// `--resume`. A resumed run first checks the saved fields in order and refuses to reuse
    /// anything made from other inputs, naming the first that differs.
    pub fn claim(&self, fields: &[(&str, serde_json::Value)], resume: bool) -> Result<()> {
        let path = self.staging.join(RESUME);
        if resume {
            if let Ok(bytes) = std::fs::read(&path) {
                let saved: serde_json::Value = serde_json::from_slice(&bytes)
                    .map_err(|e| Error::invalid(&path, format!("not a qpipe resume file: {e}")))?;
                if let Some((field, want)) = fields.iter().find(|(f, v)| saved.get(*f) != Some(v)) {
                    let had = saved.get(*field).unwrap_or(&serde_json::Value::Null);
                    return Err(Error::invalid(
                        self.dir.as_path(),
                        format!(
                            "--resume: the saved run was made with another {field} ({had} there, \
                             {want} now); rerun without --resume or into another --out"
                        ),
                    ));
                }
            }
        }
        let object: serde_json::Map<String, serde_json::Value> = fields
            .iter()
            .map(|(f, v)| (f.to_string(), v.clone()))
            .collect();
        let text = serde_json::to_string_pretty(&object)
            .map_err(|e| Error::invalid(&path, e.to_string()))?;
        write_atomic(&path, format!("{text}\n").as_bytes())
    }

    /// The packed checkpoint.
    pub fn packed(&self) -> PathBuf {
        self.staging.join("model.qpipe.safetensors")
    }

    /// The GGUF file for llama.cpp.
    pub fn gguf(&self) -> PathBuf {
        self.staging.join("model.gguf")
    }

    /// The ONNX file for the targets whose toolchains load ONNX.
    pub fn onnx(&self) -> PathBuf {
        self.staging.join("model.onnx")
    }

    /// The search state `--resume` continues.
    pub fn search_state(&self) -> PathBuf {
        search::state_path(&self.staging)
    }

    fn sensitivity_json(&self) -> PathBuf {
        self.staging.join("sensitivity.json")
    }

    /// Writes `name` in the directory, atomically.
    fn write(&self, name: &str, bytes: &[u8]) -> Result<()> {
        write_atomic(&self.staging.join(name), bytes)
    }

    /// `sensitivity.json` and its chart, `sensitivity.svg`.
    pub fn write_sensitivity(&self, s: &Sensitivity) -> Result<()> {
        let path = self.sensitivity_json();
        let json =
            serde_json::to_string_pretty(s).map_err(|e| Error::invalid(&path, e.to_string()))?;
        write_atomic(&path, format!("{json}\n").as_bytes())?;
        self.write(
            "sensitivity.svg",
            crate::report::sensitivity::chart(s).as_bytes(),
        )
    }

    /// The sensitivity an earlier run saved here, when it was measured with the same formats,
    /// calibrator and tokens (anything unreadable or different is measured again).
    pub fn saved_sensitivity(
        &self,
        options: &Options,
        sequences: &[&[u32]],
    ) -> Option<Sensitivity> {
        let bytes = std::fs::read(self.sensitivity_json()).ok()?;
        let s: Sensitivity = serde_json::from_slice(&bytes).ok()?;
        let formats: Vec<Format> = {
            let mut f: Vec<Format> = s.entries.iter().map(|e| e.format).collect();
            f.sort();
            f.dedup();
            f
        };
        let mut want: Vec<Format> = options
            .formats
            .iter()
            .chain(&options.estimated)
            .copied()
            .collect();
        want.sort();
        (s.sequences == sequences.len()
            && s.seq_len == sequences.first().map_or(0, |q| q.len())
            && s.calibrator == options.calibrator
            && formats == want)
            .then_some(s)
    }

    /// The calibration statistics an earlier run saved here under `key` (anything missing,
    /// unreadable or computed from other inputs is computed again).
    pub fn saved_stats(&self, key: &str) -> Option<Stats> {
        let bytes = std::fs::read(self.staging.join(CALIBRATION).join(STATS)).ok()?;
        let saved: Saved<String, Stats> = serde_json::from_slice(&bytes).ok()?;
        (saved.key == key && saved.value.version == crate::calib::FORMAT_VERSION)
            .then_some(saved.value)
    }

    /// `calibration/statistics.json`: the statistics under `key`, for [`OutDir::saved_stats`].
    pub fn write_stats(&self, stats: &Stats, key: &str) -> Result<()> {
        let saved = Saved { key, value: stats };
        let path = self.calibration()?.join(STATS);
        let json = serde_json::to_vec(&saved).map_err(|e| Error::invalid(&path, e.to_string()))?;
        write_atomic(&path, &json)
    }

    /// The directory of the calibration results, created if missing.
    fn calibration(&self) -> Result<PathBuf> {
        let dir = self.staging.join(CALIBRATION);
        std::fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
        Ok(dir)
    }

    /// The input Hessians an earlier run saved here under `key` (anything missing, unreadable
    /// or computed from other inputs is computed again).
    pub fn saved_hessians(&self, key: &str) -> Option<Hessians> {
        let (h, saved) = Hessians::load(&self.staging.join(CALIBRATION).join(HESSIANS)).ok()?;
        (saved == key).then_some(h)
    }

    /// `calibration/hessians.safetensors`: the input Hessians under `key`.
    pub fn write_hessians(&self, hessians: &Hessians, key: &str) -> Result<()> {
        hessians.save(&self.calibration()?.join(HESSIANS), key)
    }

    /// `pareto.svg`.
    pub fn write_pareto(&self, svg: &str) -> Result<()> {
        self.write("pareto.svg", svg.as_bytes())
    }

    /// config.json and tokenizer.json beside the packed file, so it loads on its own.
    pub fn copy_side_files(&self, checkpoint: &Checkpoint) -> Result<()> {
        for name in ["config.json", "tokenizer.json"] {
            let src = checkpoint.dir().join(name);
            if src.is_file() {
                let bytes = std::fs::read(&src).map_err(Error::io(&src))?;
                self.write(name, &bytes)?;
            }
        }
        Ok(())
    }

    /// `qpipe.json`; returns its text.
    pub fn write_report(&self, report: &CompressReport) -> Result<String> {
        let json = report.json()?;
        self.write(REPORT, json.as_bytes())?;
        Ok(json)
    }
}
