//! Target profiles: the data file embedded in the binary (`targets.json`), its validation, and
//! the legality of a (weight format, activation) pair on a target.
//!
//! Every number in the file carries its source (`datasheet: ...`, `paper: ...` or
//! `assumed: <reason>`); measured targets (`host`, `llama-cpp`) leave peak rates, bandwidth,
//! overhead and unpack cost out of the file and get them from [`super::measure`].

use crate::error::{Error, Result, Subject};
use crate::quant::format::INT_BITS;
use crate::quant::{Activation, Format, Granularity, Scheme};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

/// The embedded profile data.
const TARGETS_JSON: &str = include_str!("targets.json");

/// Where errors in the embedded data are reported.
const TARGETS_PATH: &str = "src/hardware/targets.json (embedded)";

/// Source kinds a number may cite.
const SOURCE_KINDS: [&str; 4] = ["datasheet", "paper", "assumed", "measured"];

/// Whether `source` names a known kind and says something after it.
fn well_sourced(source: &str) -> bool {
    let kind = source.split(':').next().unwrap_or("").trim();
    SOURCE_KINDS.contains(&kind) && !source.trim_end().ends_with(':')
}

/// A number with the source it comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sourced {
    /// The value, in the unit the field name states.
    pub value: f64,
    /// `datasheet: ...`, `paper: ...`, `assumed: <reason>` or `measured: <how>`.
    pub source: String,
}

impl Sourced {
    /// A number measured on this machine, described by `how`.
    pub fn measured(value: f64, how: impl AsRef<str>) -> Self {
        Sourced {
            value,
            source: format!("measured: {}", how.as_ref()),
        }
    }

    /// The source kind: datasheet, paper, assumed or measured.
    pub fn kind(&self) -> &str {
        self.source.split(':').next().unwrap_or("").trim()
    }
}

/// The arithmetic precision a matmul runs at (selects peak rate and energy per MAC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// 8-bit integer multiplies, 32-bit accumulation.
    Int8,
    /// 16-bit integer multiplies (A16 activations).
    Int16,
    /// Half-precision float.
    Fp16,
    /// Single-precision float.
    Fp32,
}

impl Precision {
    /// Lowercase name as in the data file.
    pub fn name(self) -> &'static str {
        match self {
            Precision::Int8 => "int8",
            Precision::Int16 => "int16",
            Precision::Fp16 => "fp16",
            Precision::Fp32 => "fp32",
        }
    }
}

/// Energy figures shared by targets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnergyModel {
    /// Energy per multiply-accumulate at each precision, pJ.
    pub per_mac_pj: BTreeMap<Precision, Sourced>,
    /// Energy per byte moved from DRAM, pJ.
    pub per_dram_byte_pj: Sourced,
}

/// What a rule's weights entry names: every qpipe integer format of one width (`int4`), or
/// one GGUF or float format (`q4_k`, `f16`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightKind {
    /// Integer formats of this many bits, any granularity and scheme.
    Int(u32),
    /// Exactly this (GGUF or float) format.
    Exact(Format),
}

impl WeightKind {
    /// Whether `format` is of this kind.
    pub fn contains(self, format: &Format) -> bool {
        match (self, format) {
            (WeightKind::Int(bits), Format::Int(f)) => f.bits == bits,
            (WeightKind::Exact(kind), f) => kind == *f,
            _ => false,
        }
    }
}

impl fmt::Display for WeightKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WeightKind::Int(bits) => write!(f, "int{bits}"),
            WeightKind::Exact(format) => format.fmt(f),
        }
    }
}

impl FromStr for WeightKind {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let int_bits = s
            .strip_prefix("int")
            .and_then(|b| b.parse().ok())
            .filter(|b| INT_BITS.contains(b));
        match (int_bits, s.parse::<Format>()) {
            (Some(bits), _) => Ok(WeightKind::Int(bits)),
            (None, Ok(f)) if !matches!(f, Format::Int(_)) => Ok(WeightKind::Exact(f)),
            _ => Err(format!("rule weight '{s}' is not a format kind")),
        }
    }
}

impl Serialize for WeightKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        crate::quant::by_name::serialize(self, s)
    }
}

impl<'de> Deserialize<'de> for WeightKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        crate::quant::by_name::deserialize(d)
    }
}

/// Serde of an optional list of values by their names (`["sym", "pow2"]`), for rule filters
/// whose types serialise otherwise elsewhere.
mod names {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::fmt::Display;
    use std::str::FromStr;

    /// Writes the names, or nothing.
    pub fn serialize<T: Display, S: Serializer>(
        list: &Option<Vec<T>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match list {
            Some(list) => s.collect_seq(list.iter().map(T::to_string)),
            None => s.serialize_none(),
        }
    }

    /// Parses the names.
    pub fn deserialize<'de, T, D>(d: D) -> Result<Option<Vec<T>>, D::Error>
    where
        T: FromStr<Err: Display>,
        D: Deserializer<'de>,
    {
        Option::<Vec<String>>::deserialize(d)?
            .map(|list| {
                list.iter()
                    .map(|n| n.parse().map_err(serde::de::Error::custom))
                    .collect()
            })
            .transpose()
    }
}

/// One legality rule: weights (and optional scheme/granularity filters) x activations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Weight kinds: `int2`..`int8` (any qpipe integer format of that width), a GGUF type
    /// (`q4_k`), or a float type (`f16`).
    pub weights: Vec<WeightKind>,
    /// Allowed integer schemes (`sym`, `asym`, `pow2`); all when absent.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "names")]
    pub schemes: Option<Vec<Scheme>>,
    /// Allowed integer granularities (`tensor`, `channel`, `g32`..`g256`); all when absent.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "names")]
    pub granularities: Option<Vec<Granularity>>,
    /// Activation formats: `float`, `a8`, `a16`.
    pub activations: Vec<Activation>,
    /// Precision the matmul runs at.
    pub compute: Precision,
    /// Whether the weights are unpacked in software first (costs the target's unpack rate).
    #[serde(default)]
    pub emulated: bool,
    /// Where the rule comes from (`datasheet: ...`, `paper: ...`, `assumed: ...`), for rules
    /// added after the profile was first written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// How a target stores the tensors no weight format is chosen for (norms, biases).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtherTensors {
    /// The float type they are stored in.
    pub dtype: crate::quant::FloatType,
    /// Why: `datasheet: ...`, `paper: ...` or `assumed: ...`.
    pub source: String,
}

/// The file a target's toolchain loads, which `compress` writes beside the packed checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deploys {
    /// The format.
    pub format: DeployFormat,
    /// The quantization-encodings file its toolchain reads beside the model, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encodings: Option<EncodingsFormat>,
    /// Which toolchain loads it: `datasheet: ...`.
    pub source: String,
}

/// Quantization-encodings files a toolchain reads beside an ONNX model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EncodingsFormat {
    /// AIMET's encodings JSON, version 1.0.0 (Qualcomm's QNN converters and AI Hub).
    Aimet,
}

/// Formats a target's toolchain loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeployFormat {
    /// ONNX with QuantizeLinear/DequantizeLinear.
    Onnx,
}

/// Whether a filter allows `value`: a missing list allows everything.
fn allows<T: PartialEq>(list: &Option<Vec<T>>, value: &T) -> bool {
    list.as_ref().is_none_or(|l| l.contains(value))
}

/// `items` by name, separated by `sep`.
fn join<T: fmt::Display>(items: &[T], sep: &str) -> String {
    items.iter().map(T::to_string).collect::<Vec<_>>().join(sep)
}

impl Rule {
    fn matches(&self, format: &Format, activation: Activation) -> bool {
        let filters_allow = match format {
            Format::Int(f) => {
                allows(&self.schemes, &f.scheme) && allows(&self.granularities, &f.granularity)
            }
            _ => true,
        };
        self.weights.iter().any(|w| w.contains(format))
            && filters_allow
            && self.activations.contains(&activation)
    }

    /// One-line description, e.g. `int8 [sym|pow2] x a8 -> int8 native`.
    pub fn describe(&self) -> String {
        let schemes = self.schemes.as_deref().map(|s| join(s, "|"));
        let granularities = self.granularities.as_deref().map(|g| join(g, "|"));
        let filters: Vec<String> = schemes.into_iter().chain(granularities).collect();
        let filters = if filters.is_empty() {
            String::new()
        } else {
            format!(" [{}]", filters.join("; "))
        };
        format!(
            "{}{filters} x {} -> {} {}",
            join(&self.weights, " "),
            join(&self.activations, "|"),
            self.compute.name(),
            if self.emulated { "emulated" } else { "native" }
        )
    }
}

/// How a measured target's matmuls run on this machine (`measured` in the data file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Backend {
    /// qpipe-kernels' packed GEMV / GEMM.
    #[serde(rename = "qpipe-kernels")]
    Kernels,
    /// candle's `QMatMul` (llama.cpp's kernels).
    #[serde(rename = "candle-qmatmul")]
    Candle,
}

impl Backend {
    /// The name in the data file and in measurement cache keys.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Kernels => "qpipe-kernels",
            Backend::Candle => "candle-qmatmul",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A hardware target as described by the data file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// Short name used on the command line (`tensorrt`).
    pub name: String,
    /// The concrete device the numbers describe.
    pub device: String,
    /// One line on what the target supports, quoted in illegal-format errors.
    pub supports: String,
    /// The backend timed, for targets measured on this machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured: Option<Backend>,
    /// Peak multiply-accumulates per second at each precision.
    #[serde(default)]
    pub peak_macs_per_s: BTreeMap<Precision, Sourced>,
    /// DRAM bandwidth, bytes/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth_bytes_per_s: Option<Sourced>,
    /// On-chip memory (caches, SRAM, TCM), bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_chip_bytes: Option<Sourced>,
    /// Fixed cost of one matmul call (dispatch, thread fork/join), seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overhead_s_per_matmul: Option<Sourced>,
    /// Weights per second the target unpacks for emulated formats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unpack_weights_per_s: Option<Sourced>,
    /// Name of the energy model (resolved into `energy_model` on load).
    pub energy: String,
    /// The energy figures, resolved from `energy`.
    #[serde(default, skip_deserializing)]
    pub energy_model: Option<EnergyModel>,
    /// What its toolchain loads (beside the packed checkpoint), if qpipe writes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploys: Option<Deploys>,
    /// Legality rules, first match wins; no match is illegal.
    pub rules: Vec<Rule>,
    /// The float type of norms and biases where the target computes them narrower than they
    /// are stored; absent: kept as stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub other_tensors: Option<OtherTensors>,
}

/// How a legal (weights, activations) pair runs on a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Legality {
    /// Precision of the multiply-accumulates.
    pub compute: Precision,
    /// Whether the weights are unpacked in software first.
    pub emulated: bool,
}

/// Whether a legal pair runs natively or emulated, with the unpack cost.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Support {
    /// The hardware consumes the format directly.
    Native,
    /// Weights are unpacked in software first.
    Emulated {
        /// Seconds per weight spent unpacking (once per matmul call).
        unpack_s_per_weight: f64,
    },
}

impl Target {
    /// The rule that decides `format` with `activation` inputs, or an error naming the target,
    /// the format and what the target supports.
    pub fn legality(&self, format: &Format, activation: Activation) -> Result<Legality> {
        if let Some(rule) = self.rules.iter().find(|r| r.matches(format, activation)) {
            return Ok(Legality {
                compute: rule.compute,
                emulated: rule.emulated,
            });
        }
        let weights_ok = Activation::ALL
            .into_iter()
            .any(|a| self.rules.iter().any(|r| r.matches(format, a)));
        Err(self.illegal(if weights_ok {
            format!("{format} weights with {activation} activations are not supported")
        } else {
            format!("{format} weights are not supported")
        }))
    }

    /// Native or emulated (with the unpack cost) for a file-described target; measured targets
    /// get theirs from a [`super::measure::Calibration`].
    pub fn check(&self, format: &Format, activation: Activation) -> Result<Support> {
        let legal = self.legality(format, activation)?;
        if !legal.emulated {
            return Ok(Support::Native);
        }
        match &self.unpack_weights_per_s {
            Some(rate) => Ok(Support::Emulated {
                unpack_s_per_weight: 1.0 / rate.value,
            }),
            None => Err(self.illegal(format!(
                "{format} runs emulated here and its unpack cost is measured, not in the profile"
            ))),
        }
    }

    /// An `Unsupported` error naming this target, ending with what it supports.
    pub(crate) fn illegal(&self, problem: String) -> Error {
        Error::unsupported(
            Subject::other(&self.name),
            format!("{problem} ({})", self.supports),
        )
    }

    /// Every sourced number of the profile with a label, in a fixed order.
    pub fn parameters(&self) -> Vec<(String, &Sourced)> {
        let mut out: Vec<(String, &Sourced)> = self
            .peak_macs_per_s
            .iter()
            .map(|(p, s)| (format!("peak {} MAC/s", p.name()), s))
            .collect();
        let singles = [
            ("bandwidth B/s", &self.bandwidth_bytes_per_s),
            ("on-chip bytes", &self.on_chip_bytes),
            ("overhead s/matmul", &self.overhead_s_per_matmul),
            ("unpack weights/s", &self.unpack_weights_per_s),
        ];
        out.extend(
            singles
                .into_iter()
                .filter_map(|(label, s)| s.as_ref().map(|s| (label.to_string(), s))),
        );
        if let Some(e) = &self.energy_model {
            out.extend(
                e.per_mac_pj
                    .iter()
                    .map(|(p, s)| (format!("energy {} pJ/MAC", p.name()), s)),
            );
            out.push(("energy DRAM pJ/byte".to_string(), &e.per_dram_byte_pj));
        }
        out
    }

    fn validate(&self) -> std::result::Result<(), String> {
        let bad = |what: String| Err(format!("target '{}': {what}", self.name));
        if self.rules.is_empty() {
            return bad("has no rules".into());
        }
        for (label, s) in self.parameters() {
            if !(s.value.is_finite() && s.value > 0.0) {
                return bad(format!(
                    "{label} must be a positive number, got {}",
                    s.value
                ));
            }
            if !well_sourced(&s.source) {
                return bad(format!(
                    "{label} has source '{}', expected 'datasheet|paper|assumed: ...'",
                    s.source
                ));
            }
        }
        let needs_file_numbers = self.measured.is_none();
        if needs_file_numbers
            && (self.bandwidth_bytes_per_s.is_none()
                || self.on_chip_bytes.is_none()
                || self.overhead_s_per_matmul.is_none())
        {
            return bad("needs bandwidth, on-chip memory and overhead (or 'measured')".into());
        }
        if let Some(o) = self
            .other_tensors
            .as_ref()
            .filter(|o| !well_sourced(&o.source))
        {
            return bad(format!(
                "other_tensors has source '{}', expected 'datasheet|paper|assumed: ...'",
                o.source
            ));
        }
        for rule in &self.rules {
            if let Some(s) = rule.source.as_deref().filter(|s| !well_sourced(s)) {
                return bad(format!(
                    "a rule has source '{s}', expected 'datasheet|paper|assumed: ...'"
                ));
            }
            if needs_file_numbers && !self.peak_macs_per_s.contains_key(&rule.compute) {
                return bad(format!("no peak rate for compute {}", rule.compute.name()));
            }
            if needs_file_numbers && rule.emulated && self.unpack_weights_per_s.is_none() {
                return bad("an emulated rule needs unpack_weights_per_s".into());
            }
            let energy = self.energy_model.as_ref();
            if !energy.is_some_and(|e| e.per_mac_pj.contains_key(&rule.compute)) {
                return bad(format!("no energy per MAC for {}", rule.compute.name()));
            }
        }
        Ok(())
    }
}

/// The data file's layout.
/// (Its `about` key documents the file for readers and is not parsed.)
#[derive(Debug, Deserialize)]
struct Profiles {
    energy_models: BTreeMap<String, EnergyModel>,
    targets: Vec<Target>,
}

/// Parses and validates profile JSON (the embedded file, or another one in tests).
pub fn parse_targets(json: &str, path: &Path) -> Result<Vec<Target>> {
    let profiles: Profiles = serde_json::from_str(json)
        .map_err(|e| Error::invalid(path, format!("invalid target profiles: {e}")))?;
    let mut targets = profiles.targets;
    for t in &mut targets {
        t.energy_model = profiles.energy_models.get(&t.energy).cloned();
        if t.energy_model.is_none() {
            return Err(Error::invalid(
                path,
                format!("target '{}': unknown energy model '{}'", t.name, t.energy),
            ));
        }
        t.validate().map_err(|m| Error::invalid(path, m))?;
    }
    for (i, t) in targets.iter().enumerate() {
        if targets[..i].iter().any(|o| o.name == t.name) {
            return Err(Error::invalid(path, format!("target '{}' twice", t.name)));
        }
    }
    Ok(targets)
}

/// All targets of the embedded profile file, in file order.
pub fn targets() -> Result<Vec<Target>> {
    parse_targets(TARGETS_JSON, Path::new(TARGETS_PATH))
}

/// The target called `name`, or an error listing the known ones.
pub fn target(name: &str) -> Result<Target> {
    let all = targets()?;
    let names: Vec<String> = all.iter().map(|t| t.name.clone()).collect();
    all.into_iter().find(|t| t.name == name).ok_or_else(|| {
        Error::unsupported(
            Subject::other(name),
            format!("unknown target; known targets: {}", names.join(", ")),
        )
    })
}

#[cfg(test)]
mod tests;
