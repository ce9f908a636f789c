//! Where an evaluated genome came from: a uniform seed, a Lagrangian seed or evolution. Written
//! by name (`uniform int4-g32-sym a8`, `lagrangian 4.50 bpw`, `evolved`) in `qpipe.json`,
//! search state files and reports.

use crate::quant::{Activation, Format, Rounding};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// Where a genome came from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Origin {
    /// Every tensor in one format, with one activation option for every layer.
    Uniform {
        /// The format.
        format: Format,
        /// The rounding of every tensor it applies to.
        rounding: Rounding,
        /// The activations.
        activation: Activation,
    },
    /// The sensitivity results allocated within a bits-per-weight budget.
    Lagrangian {
        /// The budget in bits per weight, to the two decimals it is named with.
        bpw: f64,
        /// The rounding of every tensor it applies to.
        rounding: Rounding,
        /// The activations of every layer.
        activation: Activation,
    },
    /// A child of the evolution.
    Evolved,
}

impl Origin {
    /// The Lagrangian allocation within `bpw`, its budget rounded to the two decimals it is
    /// named with, so that an origin read back from a state file equals the one written.
    pub fn lagrangian(bpw: f64, rounding: Rounding, activation: Activation) -> Origin {
        let named = format!("{bpw:.2}").parse().unwrap_or(bpw);
        Origin::Lagrangian {
            bpw: named,
            rounding,
            activation,
        }
    }

    /// Whether the genome is a seed (not evolved).
    pub fn is_seed(&self) -> bool {
        *self != Origin::Evolved
    }
}

/// ` gptq` (nothing for rounding to nearest), then ` a8` / ` a16` (nothing for float
/// activations) after a seed's name.
struct Suffix(Rounding, Activation);

impl fmt::Display for Suffix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 != Rounding::Nearest {
            write!(f, " {}", self.0)?;
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
                rounding,
                activation,
            } => write!(f, "uniform {format}{}", Suffix(*rounding, *activation)),
            Origin::Lagrangian {
                bpw,
                rounding,
                activation,
            } => write!(
                f,
                "lagrangian {bpw:.2} bpw{}",
                Suffix(*rounding, *activation)
            ),
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
        // An optional rounding word other than the default, then the activation.
        let suffix = |rest: &[&str]| -> Result<(Rounding, Activation), String> {
            match rest.split_first() {
                Some((r, tail)) if *r == Rounding::Gptq.to_string() => {
                    Ok((Rounding::Gptq, activation(tail)?))
                }
                _ => Ok((Rounding::Nearest, activation(rest)?)),
            }
        };
        match words.as_slice() {
            ["evolved"] => Ok(Origin::Evolved),
            ["uniform", format, rest @ ..] => {
                let (rounding, activation) = suffix(rest)?;
                Ok(Origin::Uniform {
                    format: format.parse().map_err(|_| bad())?,
                    rounding,
                    activation,
                })
            }
            ["lagrangian", bpw, "bpw", rest @ ..] => {
                let (rounding, activation) = suffix(rest)?;
                Ok(Origin::Lagrangian {
                    bpw: bpw.parse().map_err(|_| bad())?,
                    rounding,
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
            "evolved",
        ] {
            let origin: Origin = name.parse().unwrap();
            assert_eq!(origin.to_string(), name);
            let json = serde_json::to_string(&origin).unwrap();
            assert_eq!(json, format!("\"{name}\""));
            assert_eq!(serde_json::from_str::<Origin>(&json).unwrap(), origin);
        }
        let seed = Origin::lagrangian(4.499999, Rounding::Nearest, Activation::A16);
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
            "",
        ] {
            assert!(bad.parse::<Origin>().is_err(), "{bad}");
        }
    }
}
