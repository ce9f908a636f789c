//! Where calibration and evaluation text comes from: a file, or one of the texts built into the
//! binary (the default ones, so `qpipe compress` works from any directory).

use crate::error::{Error, Result, Subject};
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::fmt;
use std::path::{Path, PathBuf};

/// A text built into the binary: the files of `calibration-data/` that commands default to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    /// State of the Union addresses, calibration half (`sotu-calibration.txt`).
    SotuCalibration,
    /// State of the Union addresses, held-out half (`sotu-eval.txt`).
    SotuEval,
}

impl Builtin {
    /// Its file name in `calibration-data/`.
    pub fn file_name(self) -> &'static str {
        match self {
            Builtin::SotuCalibration => "sotu-calibration.txt",
            Builtin::SotuEval => "sotu-eval.txt",
        }
    }

    fn contents(self) -> &'static str {
        match self {
            Builtin::SotuCalibration => {
                include_str!("../../calibration-data/sotu-calibration.txt")
            }
            Builtin::SotuEval => include_str!("../../calibration-data/sotu-eval.txt"),
        }
    }
}

/// Text to calibrate or evaluate on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Text {
    /// Built into the binary.
    Builtin(Builtin),
    /// A UTF-8 file.
    File(PathBuf),
}

impl Text {
    /// The text, read and checked (UTF-8, not blank); an error names the file.
    pub fn read(&self) -> Result<Cow<'static, str>> {
        let text = match self {
            Text::Builtin(b) => Cow::Borrowed(b.contents()),
            Text::File(path) => {
                let bytes = std::fs::read(path).map_err(Error::io(path))?;
                Cow::Owned(String::from_utf8(bytes).map_err(|e| {
                    Error::invalid(
                        path,
                        format!("not UTF-8 text (byte {})", e.utf8_error().valid_up_to()),
                    )
                })?)
            }
        };
        if text.trim().is_empty() {
            return Err(Error::invalid(
                self.subject(),
                "no text to calibrate or evaluate on",
            ));
        }
        Ok(text)
    }

    /// sha256 of its bytes, hex (the provenance of what a result was measured on).
    pub fn sha256(&self) -> Result<String> {
        Ok(format!("{:x}", Sha256::digest(self.read()?.as_bytes())))
    }

    /// What errors about it name.
    pub fn subject(&self) -> Subject {
        match self {
            Text::Builtin(_) => Subject::other(self.to_string()),
            Text::File(path) => Subject::from(path.as_path()),
        }
    }

    /// The file, for a file.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Text::File(p) => Some(p),
            Text::Builtin(_) => None,
        }
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Text::Builtin(b) => write!(f, "{} (built in)", b.file_name()),
            Text::File(p) => write!(f, "{}", p.display()),
        }
    }
}

impl From<PathBuf> for Text {
    fn from(p: PathBuf) -> Self {
        Text::File(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_texts_are_the_files_of_calibration_data() {
        for b in [Builtin::SotuCalibration, Builtin::SotuEval] {
            let file = Text::File(Path::new("calibration-data").join(b.file_name()));
            let builtin = Text::Builtin(b);
            assert_eq!(builtin.read().unwrap(), file.read().unwrap());
            assert_eq!(builtin.sha256().unwrap(), file.sha256().unwrap());
            assert_eq!(builtin.to_string(), format!("{} (built in)", b.file_name()));
        }
    }

    #[test]
    fn a_blank_or_binary_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let blank = dir.path().join("blank.txt");
        std::fs::write(&blank, " \n").unwrap();
        let err = Text::File(blank.clone()).read().unwrap_err().to_string();
        assert!(
            err.contains("blank.txt") && err.contains("no text"),
            "{err}"
        );
        let binary = dir.path().join("binary.txt");
        std::fs::write(&binary, [b'a', 0xff, 0xfe]).unwrap();
        let err = Text::File(binary).read().unwrap_err().to_string();
        assert!(err.contains("binary.txt") && err.contains("UTF-8"), "{err}");
    }
}
