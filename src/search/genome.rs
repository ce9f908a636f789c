//! The search space and its points: a [`Genome`] gives every quantizable tensor a format and a
//! weight calibrator, and every layer its activation format; a [`Space`] says which values each
//! tensor may take (legal on the target and for its shape) and counts exact bytes.

use crate::error::{Error, Result, Subject};
use crate::hardware::{Assignment, MatmulShape};
use crate::model::{Model, Usage};
use crate::quant::{activation, Activation, Calibrator, Format, Rounding, Transform};
use serde::{Deserialize, Serialize};

/// One tensor's choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Gene {
    /// Storage format.
    #[serde(with = "crate::quant::by_name")]
    pub format: Format,
    /// Calibrator choosing its ranges.
    #[serde(with = "crate::quant::by_name")]
    pub calibrator: Calibrator,
    /// How values are rounded onto the format's grid (`rtn` when absent).
    #[serde(
        default,
        skip_serializing_if = "Rounding::is_nearest",
        with = "crate::quant::by_name"
    )]
    pub rounding: Rounding,
    /// How its input channels are rescaled first (`none` when absent); the same for every
    /// tensor reading one input ([`FoldSlot`]).
    #[serde(
        default,
        skip_serializing_if = "Transform::is_none",
        with = "crate::quant::by_name"
    )]
    pub transform: Transform,
}

/// A whole-model quantization: one gene per tensor (forward order) and per layer the
/// activation format.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Genome {
    /// Per quantizable tensor, in forward order.
    pub genes: Vec<Gene>,
    /// Per layer (saved as bit widths, `null` for float).
    #[serde(rename = "activation_bits", with = "activation::by_bits")]
    pub activations: Vec<Activation>,
}

/// FNV-1a, 64 bit: a hash that is the same on every platform and Rust version, so cache keys
/// in saved state files stay valid.
fn fnv(bytes: impl IntoIterator<Item = u8>, mut h: u64) -> u64 {
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

impl Genome {
    /// Stable hash of the whole genome.
    pub fn key(&self) -> u64 {
        self.prefix_key(&[], usize::MAX)
    }

    /// Stable hash of what decides the hidden states entering layer `layer`: the genes of the
    /// tensors that act before it (`layer_of[i]` is the first layer tensor i changes, see
    /// [`Slot::enters`]) and the activations of earlier layers.
    pub fn prefix_key(&self, layer_of: &[usize], layer: usize) -> u64 {
        let mut h = FNV_OFFSET;
        for (i, g) in self.genes.iter().enumerate() {
            if layer_of.get(i).is_some_and(|&l| l >= layer) {
                continue;
            }
            // Rounding to nearest hashes as genes did before it was a gene.
            let rounding = match g.rounding {
                Rounding::Nearest => String::new(),
                r => format!("/{r}"),
            };
            let transform = match g.transform {
                Transform::None => String::new(),
                t => format!("/{t}"),
            };
            h = fnv(
                format!("{}/{}{rounding}{transform};", g.format, g.calibrator).into_bytes(),
                h,
            );
        }
        // Hashed as the `Option<u32>` of bits they were before, so saved keys stay valid.
        for a in self.activations.iter().take(layer) {
            h = fnv(format!("{:?};", a.bits()).into_bytes(), h);
        }
        h
    }
}

/// One quantizable tensor and the formats it may take.
#[derive(Debug, Clone, PartialEq)]
pub struct Slot {
    /// Checkpoint name of the weight.
    pub name: String,
    /// The layer whose activation option quantizes its input (an LM head: the layer after
    /// the last; an embedding table, which has no input: 0).
    pub layer: usize,
    /// `[rows, cols]`.
    pub shape: [usize; 2],
    /// Multiplied, looked up, or both.
    pub usage: Usage,
    /// Legal formats, fewest bytes first.
    pub formats: Vec<Format>,
    /// The fold its input belongs to (an index into [`Space::folds`]), if it has one.
    pub fold: Option<usize>,
}

/// A [`Fold`](crate::model::Fold) of the model in slot terms: the tensors reading one input,
/// which share a transform, and the quantizable weight producing it.
#[derive(Debug, Clone, PartialEq)]
pub struct FoldSlot {
    /// The consumers' slots.
    pub consumers: Vec<usize>,
    /// The producing weight's slot, whose format must be row-scalable under a transform.
    pub producer: Option<usize>,
    /// The model's fold.
    pub fold: crate::model::Fold,
}

impl Slot {
    /// The first layer whose input this tensor changes: 0 for an embedding table (a tied one
    /// too, though its head runs last), else its layer.
    pub fn enters(&self) -> usize {
        if self.usage.gathers() {
            0
        } else {
            self.layer
        }
    }

    /// Whether `format` may run with `activation` inputs here: an embedding looked up only has
    /// no input, so any activation option of its layer goes with any of its formats.
    pub fn pair_legal(&self, space: &Space, format: Format, activation: Activation) -> bool {
        !self.usage.multiplies() || space.pair_legal(format, activation)
    }

    /// Whether this tensor in `format` may be rounded with `rounding`: GPTQ needs an input.
    pub fn rounding_legal(&self, rounding: Rounding, format: Format) -> bool {
        rounding.applies_to(format) && (rounding == Rounding::Nearest || self.usage.multiplies())
    }

    /// The rounding a gene of this tensor in `format` takes: `wanted` if the space offers it
    /// and it applies, else the first offered one that applies, else to nearest (the fallback
    /// for formats no offered method applies to).
    pub fn rounding_for(&self, space: &Space, format: Format, wanted: Rounding) -> Rounding {
        std::iter::once(wanted)
            .chain(space.roundings.iter().copied())
            .find(|&r| space.roundings.contains(&r) && self.rounding_legal(r, format))
            .unwrap_or(Rounding::Nearest)
    }

    /// Exact storage bytes of this tensor in `format`.
    pub fn bytes(&self, format: Format) -> u64 {
        format.storage_bytes(self.shape[0], self.shape[1]) as u64
    }
}

/// The values a genome may take.
#[derive(Debug, Clone)]
pub struct Space {
    /// Every quantizable tensor in forward order.
    pub slots: Vec<Slot>,
    /// Weight calibrators to choose from.
    pub calibrators: Vec<Calibrator>,
    /// Rounding methods to choose from (to nearest unless [`Space::with_roundings`]).
    pub roundings: Vec<Rounding>,
    /// Input transforms to choose from (`none` unless [`Space::with_transforms`]).
    pub transforms: Vec<Transform>,
    /// Where transforms fold (none unless [`Space::with_transforms`]).
    pub folds: Vec<FoldSlot>,
    /// Activation options per layer.
    pub activations: Vec<Activation>,
    /// Number of layers genomes give activations to.
    pub layers: usize,
    /// Per format, the activation options (in `activations` order) it may run with; a format
    /// absent here runs with every option.
    pub activation_rule: std::collections::HashMap<Format, Vec<Activation>>,
    /// The model's other stored tensors (norms, biases, ...), whose bytes every genome pays.
    pub rest: Rest,
}

/// What the tensors outside the genome add to every genome's size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rest {
    /// Bytes they are stored in.
    pub bytes: u64,
    /// Their parameters.
    pub parameters: u64,
}

/// A genome with tensor names, for files people read and for reloading against a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NamedGenome {
    /// Per tensor: its name and gene.
    pub tensors: Vec<NamedGene>,
    /// Per layer activations (saved as bit widths, `null` for float).
    #[serde(rename = "activation_bits", with = "activation::by_bits")]
    pub activations: Vec<Activation>,
}

/// A gene with its tensor's name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NamedGene {
    /// Checkpoint name of the weight.
    pub name: String,
    /// Its format and calibrator.
    #[serde(flatten)]
    pub gene: Gene,
}

impl Space {
    /// `g`'s format and activations per matmul (embedding lookups are not matmuls; a tied
    /// embedding's head is), as the hardware cost model prices them.
    pub fn assignment(&self, g: &Genome) -> Vec<Assignment> {
        self.slots
            .iter()
            .zip(&g.genes)
            .filter(|(s, _)| s.usage.multiplies())
            .map(|(s, gene)| Assignment {
                shape: MatmulShape {
                    name: s.name.clone(),
                    rows: s.shape[0],
                    cols: s.shape[1],
                },
                format: gene.format,
                activation: g
                    .activations
                    .get(s.layer)
                    .copied()
                    .unwrap_or(Activation::Float),
            })
            .collect()
    }

    /// The space of `model`'s quantizable tensors (matmuls and embedding tables) with, per
    /// tensor, the formats among `formats` that `legal(format, rows, cols)` accepts; an error
    /// names a tensor none fits. `legal(format, usage)` may keep formats from some uses (an
    /// embedding table, say). The other tensors count nothing until [`Space::with_rest`].
    pub fn new(
        model: &Model,
        formats: &[Format],
        legal: impl Fn(Format, Usage) -> bool,
        calibrators: Vec<Calibrator>,
        activations: Vec<Activation>,
    ) -> Result<Space> {
        let mut slots = Vec::new();
        let groups = model.quantizable_by_layer();
        for (layer, linears) in groups.iter().enumerate() {
            for l in linears {
                let (rows, cols) = l.shape();
                let mut ok: Vec<Format> = formats
                    .iter()
                    .copied()
                    .filter(|f| f.check(rows, cols).is_ok() && legal(*f, l.usage()))
                    .collect();
                ok.sort_by_key(|f| (f.storage_bytes(rows, cols), *f));
                ok.dedup();
                if ok.is_empty() {
                    return Err(Error::unsupported(
                        Subject::tensor(l.name()),
                        format!("none of the candidate formats can store this {rows}x{cols} weight on the target"),
                    ));
                }
                slots.push(Slot {
                    name: l.name().to_string(),
                    layer,
                    shape: [rows, cols],
                    usage: l.usage(),
                    formats: ok,
                    fold: None,
                });
            }
        }
        if calibrators.is_empty() || activations.is_empty() {
            return Err(Error::invalid(
                Subject::other("search space"),
                "needs at least one calibrator and one activation option",
            ));
        }
        Ok(Space {
            slots,
            calibrators,
            roundings: vec![Rounding::Nearest],
            transforms: vec![Transform::None],
            folds: Vec::new(),
            activations,
            layers: groups.len(),
            activation_rule: std::collections::HashMap::new(),
            rest: Rest::default(),
        })
    }

    /// Lets genes choose among `roundings` (GPTQ needs the inputs' factors at evaluation).
    pub fn with_roundings(mut self, roundings: Vec<Rounding>) -> Space {
        if !roundings.is_empty() {
            self.roundings = roundings;
        }
        self
    }

    /// Lets genes choose among `transforms` where `model`'s folds allow them (a fold whose
    /// tensors are not all in the space is left out).
    pub fn with_transforms(mut self, model: &Model, transforms: Vec<Transform>) -> Space {
        if transforms.iter().all(Transform::is_none) {
            return self;
        }
        let index = |name: &str| self.slots.iter().position(|s| s.name == name);
        let folds: Vec<FoldSlot> = model
            .folds()
            .into_iter()
            .filter_map(|fold| {
                let consumers = fold
                    .consumers
                    .iter()
                    .map(|c| index(c))
                    .collect::<Option<Vec<_>>>()?;
                let producer = match &fold.producer_weight {
                    Some(p) => Some(index(p)?),
                    None => None,
                };
                Some(FoldSlot {
                    consumers,
                    producer,
                    fold,
                })
            })
            .collect();
        for (k, f) in folds.iter().enumerate() {
            for &c in &f.consumers {
                self.slots[c].fold = Some(k);
            }
        }
        self.folds = folds;
        let mut transforms = transforms;
        if !transforms.contains(&Transform::None) {
            transforms.insert(0, Transform::None);
        }
        self.transforms = transforms;
        self
    }

    /// Whether fold `k`'s tensors may take `transform` in `g`: `none` always; another if
    /// offered, with the producing weight in a row-scalable format.
    pub fn transform_legal(&self, g: &Genome, k: usize, transform: Transform) -> bool {
        let f = &self.folds[k];
        transform.is_none()
            || (self.transforms.contains(&transform)
                && f.producer.is_none_or(|p| g.genes[p].format.row_scalable()))
    }

    /// `g` with every fold's consumers sharing its first consumer's transform where that is
    /// legal, else none: what a mutation or crossover leaves becomes a legal genome.
    pub fn settled(&self, mut g: Genome) -> Genome {
        for (k, f) in self.folds.iter().enumerate() {
            let t = g.genes[f.consumers[0]].transform;
            let t = if self.transform_legal(&g, k, t) {
                t
            } else {
                Transform::None
            };
            for &c in &f.consumers {
                g.genes[c].transform = t;
            }
        }
        g
    }

    /// `g` with fold `k` transformed by `t`, settled.
    pub fn transformed(&self, mut g: Genome, k: usize, t: Transform) -> Genome {
        for &c in &self.folds[k].consumers {
            g.genes[c].transform = t;
        }
        self.settled(g)
    }

    /// Counts `rest` (the model's other stored tensors) in every genome's size.
    pub fn with_rest(mut self, rest: Rest) -> Space {
        self.rest = rest;
        self
    }

    /// Restricts which activation options each format may run with (a target's legality
    /// matrix); seeds and mutations then only produce legal pairs.
    pub fn with_activation_rule(mut self, legal: impl Fn(Format, Activation) -> bool) -> Space {
        let mut formats: Vec<Format> = self.slots.iter().flat_map(|s| s.formats.clone()).collect();
        formats.sort();
        formats.dedup();
        self.activation_rule = formats
            .into_iter()
            .map(|f| {
                let ok = self
                    .activations
                    .iter()
                    .copied()
                    .filter(|a| legal(f, *a))
                    .collect();
                (f, ok)
            })
            .collect();
        self
    }

    /// Whether `format` may run with `activation` inputs.
    pub fn pair_legal(&self, format: Format, activation: Activation) -> bool {
        self.activation_rule
            .get(&format)
            .is_none_or(|ok| ok.contains(&activation))
    }

    /// The first layer each slot changes ([`Slot::enters`]), in slot order.
    pub fn layer_of(&self) -> Vec<usize> {
        self.slots.iter().map(Slot::enters).collect()
    }

    /// Parameters in the quantizable tensors.
    pub fn quantizable_parameters(&self) -> u64 {
        self.slots
            .iter()
            .map(|s| (s.shape[0] * s.shape[1]) as u64)
            .sum()
    }

    /// Parameters of the whole model: the quantizable tensors and the rest.
    pub fn parameters(&self) -> u64 {
        self.quantizable_parameters() + self.rest.parameters
    }

    /// Exact bytes of every stored tensor of the model with the quantizable ones stored as
    /// `g` says: codes, scales, zero-points and the other tensors (not the file's header).
    pub fn bytes(&self, g: &Genome) -> u64 {
        self.slots
            .iter()
            .zip(&g.genes)
            .map(|(s, gene)| s.bytes(gene.format))
            .sum::<u64>()
            + self.rest.bytes
    }

    /// Bits per weight of the whole model: [`Self::bytes`] x 8 / [`Self::parameters`].
    pub fn bits_per_weight(&self, g: &Genome) -> f64 {
        self.bytes(g) as f64 * 8.0 / self.parameters().max(1) as f64
    }

    /// Every matmul in `format` with `calibrator`, `rounding` (where it applies) and
    /// `activation` inputs, if legal for all; an embedding table that may not take `format`
    /// gets its smallest format with at least as many bits per weight (else its largest).
    pub fn uniform(
        &self,
        format: Format,
        calibrator: Calibrator,
        rounding: Rounding,
        activation: Activation,
    ) -> Option<Genome> {
        let genes = self
            .slots
            .iter()
            .map(|s| {
                if s.formats.contains(&format) {
                    return Some(format);
                }
                if !s.usage.gathers() {
                    return None;
                }
                let [rows, cols] = s.shape;
                let bpw = format.bits_per_weight(rows, cols);
                s.formats
                    .iter()
                    .find(|f| f.bits_per_weight(rows, cols) >= bpw)
                    .or(s.formats.last())
                    .copied()
            })
            .zip(&self.slots)
            .map(|(f, s)| {
                f.map(|format| Gene {
                    format,
                    calibrator,
                    rounding: s.rounding_for(self, format, rounding),
                    transform: Transform::None,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Genome {
            genes,
            activations: vec![activation; self.layers],
        })
    }

    /// Whether every value of `g` is allowed here; the error says which is not.
    pub fn check(&self, g: &Genome) -> std::result::Result<(), String> {
        if g.genes.len() != self.slots.len() || g.activations.len() != self.layers {
            return Err(format!(
                "genome has {} tensors and {} layers, the model {} and {}",
                g.genes.len(),
                g.activations.len(),
                self.slots.len(),
                self.layers
            ));
        }
        for (s, gene) in self.slots.iter().zip(&g.genes) {
            if !s.formats.contains(&gene.format) {
                return Err(format!("{}: format {} is not allowed", s.name, gene.format));
            }
            if !self.calibrators.contains(&gene.calibrator) {
                return Err(format!(
                    "{}: calibrator {} is not allowed",
                    s.name, gene.calibrator
                ));
            }
            if s.rounding_for(self, gene.format, gene.rounding) != gene.rounding {
                return Err(format!(
                    "{}: rounding {} is not allowed with {}",
                    s.name, gene.rounding, gene.format
                ));
            }
            if s.fold.is_none() && !gene.transform.is_none() {
                return Err(format!(
                    "{}: transform {} has nowhere to fold",
                    s.name, gene.transform
                ));
            }
        }
        for (k, f) in self.folds.iter().enumerate() {
            let t = g.genes[f.consumers[0]].transform;
            if let Some(&c) = f.consumers.iter().find(|&&c| g.genes[c].transform != t) {
                return Err(format!(
                    "{}: transform {} differs from {}'s {t}, which reads the same input",
                    self.slots[c].name, g.genes[c].transform, self.slots[f.consumers[0]].name
                ));
            }
            if !self.transform_legal(g, k, t) {
                return Err(format!(
                    "{}: transform {t} is not allowed here (a producer format that cannot \
                     take divided rows, or not offered)",
                    self.slots[f.consumers[0]].name
                ));
            }
        }
        match g.activations.iter().find(|a| !self.activations.contains(a)) {
            Some(a) => Err(format!("activation bits {:?} are not allowed", a.bits())),
            None => Ok(()),
        }
    }

    /// `g` with tensor names.
    pub fn named(&self, g: &Genome) -> NamedGenome {
        NamedGenome {
            tensors: self
                .slots
                .iter()
                .zip(&g.genes)
                .map(|(s, gene)| NamedGene {
                    name: s.name.clone(),
                    gene: *gene,
                })
                .collect(),
            activations: g.activations.clone(),
        }
    }

    /// The genome of a named one, checked against this space (names in the same order).
    pub fn unnamed(&self, n: &NamedGenome) -> std::result::Result<Genome, String> {
        if let Some((s, t)) = self
            .slots
            .iter()
            .zip(&n.tensors)
            .find(|(s, t)| s.name != t.name)
        {
            return Err(format!("expected tensor {}, found {}", s.name, t.name));
        }
        let g = Genome {
            genes: n.tensors.iter().map(|t| t.gene).collect(),
            activations: n.activations.clone(),
        };
        self.check(&g)?;
        Ok(g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gene(f: &str) -> Gene {
        Gene {
            format: f.parse().unwrap(),
            calibrator: Calibrator::Mse,
            rounding: Rounding::Nearest,
            transform: Transform::None,
        }
    }

    #[test]
    fn keys_are_stable_and_prefix_keys_ignore_later_layers() {
        let a = Genome {
            genes: vec![
                gene("int4-g32-asym"),
                gene("int8-channel-sym"),
                gene("int2-g32-asym"),
            ],
            activations: vec![Activation::Float, Activation::A8],
        };
        let mut b = a.clone();
        b.genes[2] = gene("int3-g32-asym");
        let layer_of = [0, 0, 1];
        assert_ne!(a.key(), b.key());
        assert_eq!(a.prefix_key(&layer_of, 1), b.prefix_key(&layer_of, 1));
        assert_ne!(a.prefix_key(&layer_of, 2), b.prefix_key(&layer_of, 2));
        b.activations[0] = Activation::A16;
        assert_ne!(a.prefix_key(&layer_of, 1), b.prefix_key(&layer_of, 1));
        // A fixed value: keys saved in state files must not change between builds.
        let one = Genome {
            genes: vec![gene("int4-g32-asym")],
            activations: vec![Activation::Float],
        };
        assert_eq!(one.key(), fnv(*b"int4-g32-asym/mse;None;", FNV_OFFSET));
        let a16 = Genome {
            activations: vec![Activation::A16],
            ..one.clone()
        };
        assert_eq!(a16.key(), fnv(*b"int4-g32-asym/mse;Some(16);", FNV_OFFSET));
        let json = serde_json::to_string(&one).unwrap();
        assert_eq!(
            json,
            r#"{"genes":[{"format":"int4-g32-asym","calibrator":"mse"}],"activation_bits":[null]}"#
        );
        assert_eq!(serde_json::from_str::<Genome>(&json).unwrap(), one);
        // GPTQ is part of the key and of the file.
        let mut gptq = one.clone();
        gptq.genes[0].rounding = Rounding::Gptq;
        assert_eq!(
            gptq.key(),
            fnv(*b"int4-g32-asym/mse/gptq;None;", FNV_OFFSET)
        );
        let json = serde_json::to_string(&gptq).unwrap();
        assert!(json.contains(r#""rounding":"gptq""#), "{json}");
        assert_eq!(serde_json::from_str::<Genome>(&json).unwrap(), gptq);
        // So is a transform.
        let mut smooth = one.clone();
        smooth.genes[0].transform = Transform::Smooth(80);
        assert_eq!(
            smooth.key(),
            fnv(*b"int4-g32-asym/mse/smooth0.8;None;", FNV_OFFSET)
        );
        let json = serde_json::to_string(&smooth).unwrap();
        assert!(json.contains(r#""transform":"smooth0.8""#), "{json}");
        assert_eq!(serde_json::from_str::<Genome>(&json).unwrap(), smooth);
    }

    /// Consumers of one input share its transform, whatever their rounding; a producer format
    /// that cannot take divided rows, or a space that does not offer it, rules one out.
    #[test]
    fn transforms_are_shared_per_input_and_dropped_where_they_cannot_fold() {
        let f = |s: &str| s.parse::<Format>().unwrap();
        let formats = vec![f("int8-tensor-sym"), f("int4-g32-asym")];
        let slot = |name: &str, fold| Slot {
            name: name.into(),
            layer: 0,
            shape: [64, 64],
            usage: Usage::Matmul,
            formats: formats.clone(),
            fold,
        };
        let fold = |consumers: &[&str], producer: Option<&str>| crate::model::Fold {
            consumers: consumers.iter().map(|c| c.to_string()).collect(),
            producers: vec![producer.unwrap_or("norm").to_string()],
            producer_weight: producer.map(str::to_string),
        };
        let smooth = Transform::Smooth(50);
        let space = Space {
            slots: vec![
                slot("gate", Some(0)),
                slot("up", Some(0)),
                slot("down", Some(1)),
            ],
            calibrators: vec![Calibrator::Mse],
            roundings: Rounding::ALL.to_vec(),
            transforms: vec![Transform::None, smooth],
            folds: vec![
                FoldSlot {
                    consumers: vec![0, 1],
                    producer: None,
                    fold: fold(&["gate", "up"], None),
                },
                FoldSlot {
                    consumers: vec![2],
                    producer: Some(1),
                    fold: fold(&["down"], Some("up")),
                },
            ],
            activations: vec![Activation::Float],
            layers: 1,
            activation_rule: std::collections::HashMap::new(),
            rest: Rest::default(),
        };
        let g = space
            .uniform(
                f("int4-g32-asym"),
                Calibrator::Mse,
                Rounding::Gptq,
                Activation::Float,
            )
            .unwrap();
        // Both consumers take it, keeping their GPTQ rounding (rounded against the rescaled
        // input's Hessian).
        let t = space.transformed(g.clone(), 0, smooth);
        assert!(t.genes[..2]
            .iter()
            .all(|g| g.transform == smooth && g.rounding == Rounding::Gptq));
        assert!(space.check(&t).is_ok());
        let mut split = t.clone();
        split.genes[1].transform = Transform::None;
        assert!(space.check(&split).unwrap_err().contains("differs"));
        // Settling gives every consumer the first one's transform.
        assert!(space.settled(split).genes[..2]
            .iter()
            .all(|g| g.transform == smooth));
        // down's producer (up) per tensor: its rows cannot take the divisors.
        let mut d = space.transformed(t.clone(), 1, smooth);
        assert_eq!(d.genes[2].transform, smooth);
        d.genes[1].format = f("int8-tensor-sym");
        assert!(space.check(&d).is_err());
        assert!(space.settled(d).genes[2].transform.is_none());
        // A transform the space does not offer is dropped.
        let plain = Space {
            transforms: vec![Transform::None],
            ..space.clone()
        };
        let none = plain.transformed(g, 0, smooth);
        assert!(plain.check(&none).is_ok());
        assert!(none.genes.iter().all(|g| g.transform.is_none()));
    }

    #[test]
    fn sizes_count_the_rest_and_a_uniform_genome_gives_tables_their_nearest_format() {
        let f = |s: &str| s.parse::<Format>().unwrap();
        let slot = |name: &str, layer, usage, formats: &[&str]| Slot {
            name: name.into(),
            layer,
            shape: [64, 64],
            usage,
            formats: formats.iter().map(|s| f(s)).collect(),
            fold: None,
        };
        let space = Space {
            slots: vec![
                slot(
                    "emb",
                    0,
                    Usage::Gather,
                    &["int4-g32-asym", "int8-channel-sym"],
                ),
                slot("q", 0, Usage::Matmul, &["int2-g32-asym", "int4-g32-asym"]),
                slot("head", 1, Usage::GatherAndMatmul, &["int4-g32-asym"]),
            ],
            calibrators: vec![Calibrator::Mse],
            roundings: Rounding::ALL.to_vec(),
            transforms: vec![Transform::None],
            folds: Vec::new(),
            activations: vec![Activation::Float],
            layers: 2,
            activation_rule: std::collections::HashMap::new(),
            rest: Rest {
                bytes: 100,
                parameters: 50,
            },
        };
        // A tied table changes the model from layer 0 on, though its head runs last.
        assert_eq!(space.layer_of(), vec![0, 0, 0]);
        let g = space
            .uniform(
                f("int2-g32-asym"),
                Calibrator::Mse,
                Rounding::Gptq,
                Activation::Float,
            )
            .unwrap();
        let formats: Vec<String> = g.genes.iter().map(|g| g.format.to_string()).collect();
        assert_eq!(formats, ["int4-g32-asym", "int2-g32-asym", "int4-g32-asym"]);
        // GPTQ needs an input: a table only looked up is rounded to nearest.
        let roundings: Vec<Rounding> = g.genes.iter().map(|g| g.rounding).collect();
        assert_eq!(
            roundings,
            [Rounding::Nearest, Rounding::Gptq, Rounding::Gptq]
        );
        assert!(space.check(&g).is_ok());
        let mut bad = g.clone();
        bad.genes[0].rounding = Rounding::Gptq;
        assert!(space.check(&bad).unwrap_err().contains("rounding gptq"));
        // Offering GPTQ alone: the table falls back to nearest, the others must take GPTQ.
        let only = space.clone().with_roundings(vec![Rounding::Gptq]);
        assert!(only.check(&g).is_ok());
        let mut nearest = g.clone();
        nearest.genes[1].rounding = Rounding::Nearest;
        assert!(only.check(&nearest).unwrap_err().contains("rounding rtn"));
        let s = &space.slots;
        let bytes = s[0].bytes(f("int4-g32-asym"))
            + s[1].bytes(f("int2-g32-asym"))
            + s[2].bytes(f("int4-g32-asym"))
            + 100;
        assert_eq!(space.bytes(&g), bytes);
        assert_eq!(space.parameters(), 3 * 64 * 64 + 50);
        assert_eq!(
            space.bits_per_weight(&g),
            bytes as f64 * 8.0 / (3 * 64 * 64 + 50) as f64
        );
        // Only the multiplied slots are priced as matmuls.
        let priced: Vec<String> = space
            .assignment(&g)
            .into_iter()
            .map(|a| a.shape.name)
            .collect();
        assert_eq!(priced, ["q", "head"]);
        // A matmul that may not take the format: no uniform genome.
        assert!(space
            .uniform(
                f("int8-channel-sym"),
                Calibrator::Mse,
                Rounding::Nearest,
                Activation::Float
            )
            .is_none());
    }
}
