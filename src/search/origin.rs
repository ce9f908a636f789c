//! Where an evaluated genome came from: a uniform seed, a Lagrangian seed or evolution. Written
//! by name (`uniform int4-g32-sym a8`, `lagrangian 4.50 bpw gptq`, `uniform q4_0 smooth0.5`,
//! `evolved`) in `qpipe.json`, search state files and reports.

use crate::quant::{Activation, Format, Rounding, Transform};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// How a seed's tensors are rounded and their inputs transformed (where each applies).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Method {
    /// The rounding.
    pub rounding: Rounding,
    /// The input transform.
    pub transform: Transform,
}

/// Where a genome came from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Origin {
    /// Every tensor in one format, with one activation option for every layer.
    Uniform {
        /// The format.
        format: Format,
        /// The rounding and transform of every tensor they apply to.
        method: Method,
        /// The activations.
        activation: Activation,
    },
    /// The sensitivity results allocated within a bits-per-weight budget.
    Lagrangian {
        /// The budget in bits per weight, to the two decimals it is named with.
        bpw: f64,
        /// The rounding and transform of every tensor they apply to.
        method: Method,
        /// The activations of every layer.
        activation: Activation,
    },
    /// A child of the evolution.
    Evolved,
}

impl Origin {
    /// The Lagrangian allocation within `bpw`, its budget rounded to the two decimals it is
    /// named with, so that an origin read back from a state file equals the one written.
    pub fn lagrangian(bpw: f64, method: Method, activation: Activation) -> Origin {
        let named = format!("{bpw:.2}").parse().unwrap_or(bpw);
        Origin::Lagrangian {
            bpw: named,
            method,
            activation,
        }
    }

    /// Whether the genome is a seed (not evolved).
    pub fn is_seed(&self) -> bool {
        *self != Origin::Evolved
    }
}

/// ` gptq` (nothing for rounding to nearest), ` awq0.5` (nothing without a transform), then
/// ` a8` / ` a16` (nothing for float activations) after a seed's name.
struct Suffix(Method, Activation);

impl fmt::Display for Suffix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.rounding != Rounding::Nearest {
            write!(f, " {}", self.0.rounding)?;
        }
        if !self.0.transform.is_none() {
            write!(f, " {}", self.0.transform)?;
        }
        match self.1 {
            Activation::Float => Ok(()),
            a => write!(f, " {a}"),
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Uniform {
                format,
                method,
                activation,
            } => write!(f, "uniform {format}{}", Suffix(*method, *activation)),
            Origin::Lagrangian {
                bpw,
                method,
                activation,
            } => write!(f, "lagrangian {bpw:.2} bpw{}", Suffix(*method, *activation)),
            Origin::Evolved => f.write_str("evolved"),
        }
    }
}

impl FromStr for Origin {
    type Err = String;

    /// Parses what [`fmt::Display`] writes.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("unknown genome origin '{s}'");
        let words: Vec<&str> = s.split(' ').collect();
        let activation = |rest: &[&str]| match rest {
            [] => Ok(Activation::Float),
            [a] if *a != Activation::Float.name() => a.parse().map_err(|_| bad()),
            _ => Err(bad()),
        };
        // An optional rounding word other than the default, an optional transform other than
        // none, then the activation.
        let suffix = |rest: &[&str]| -> Result<(Method, Activation), String> {
            let (rounding, rest) = match rest.split_first() {
                Some((r, tail)) if *r == Rounding::Gptq.to_string() => (Rounding::Gptq, tail),
                _ => (Rounding::Nearest, rest),
            };
            let (transform, rest) = match rest.split_first() {
                Some((t, tail)) if t.starts_with("awq") || t.starts_with("smooth") => {
                    (t.parse().map_err(|_| bad())?, tail)
                }
                _ => (Transform::None, rest),
            };
            let method = Method {
                rounding,
                transform,
            };
            Ok((method, activation(rest)?))
        };
        match words.as_slice() {
            ["evolved"] => Ok(Origin::Evolved),
            ["uniform", format, rest @ ..] => {
                let (method, activation) = suffix(rest)?;
                Ok(Origin::Uniform {
                    format: format.parse().map_err(|_| bad())?,
                    method,
                    activation,
                })
            }
            ["lagrangian", bpw, "bpw", rest @ ..] => {
                let (method, activation) = suffix(rest)?;
                Ok(Origin::Lagrangian {
                    bpw: bpw.parse().map_err(|_| bad())?,
                    method,
                    activation,
                })
            }
            _ => Err(bad()),
        }
    }
}

impl Serialize for Origin {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        crate::quant::by_name::serialize(self, s)
    }
}

impl<'de> Deserialize<'de> for Origin {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        crate::quant::by_name::deserialize(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_written_and_read_by_their_names() {
        for name in [
            "uniform int4-channel-sym a8",
            "uniform int8-channel-sym a16",
            "uniform q4_k",
            "uniform int4-g32-sym gptq",
            "uniform int3-g32-asym gptq a16",
            "lagrangian 4.50 bpw gptq a8",
            "lagrangian 4.50 bpw a8",
            "lagrangian 7.39 bpw",
            "lagrangian 4.50 bpw smooth0.5 a8",
            "uniform q4_0 awq0.25",
            "evolved",
        ] {
            let origin: Origin = name.parse().unwrap();
            assert_eq!(origin.to_string(), name);
            let json = serde_json::to_string(&origin).unwrap();
            assert_eq!(json, format!("\"{name}\""));
            assert_eq!(serde_json::from_str::<Origin>(&json).unwrap(), origin);
        }
        let seed = Origin::lagrangian(4.499999, Method::default(), Activation::A16);
        assert_eq!(seed.to_string(), "lagrangian 4.50 bpw a16");
        assert_eq!(seed.to_string().parse::<Origin>().unwrap(), seed);
        assert!(seed.is_seed() && !Origin::Evolved.is_seed());
        for bad in [
            "uniform",
            "uniform int4-g32-sym float",
            "uniform int4-g32-sym a4",
            "lagrangian 4.50",
            "lagrangian x bpw",
            "evolved a8",
            "uniform q4_0 awq2",
            "uniform q4_0 a8 gptq",
            "",
        ] {
            assert!(bad.parse::<Origin>().is_err(), "{bad}");
        }
    }
}
