//! What can be wrong with a policy set, each problem naming its file and line.

use std::fmt;
use std::path::PathBuf;

/// A policy set that could not be loaded. Loading reports every problem it finds, not only the
/// first: [`PolicyError::problems`] lists them one by one.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyError {
    /// The directory or a file could not be read.
    #[error("cannot read {}: {message}", path.display())]
    Read { path: PathBuf, message: String },
    /// A problem at a place in a file (`line` and `column` are 1-based, columns in characters).
    #[error("{}:{line}:{column}: {message}", file.display())]
    Invalid { file: PathBuf, line: usize, column: usize, message: String },
    /// A problem in a file that the parser could not place.
    #[error("{}: {message}", file.display())]
    Unplaced { file: PathBuf, message: String },
    /// More than one of the above, in file order; one per line when displayed.
    #[error("{}", Lines(.0))]
    Several(Vec<PolicyError>),
}

impl PolicyError {
    /// Every single problem, in file order.
    pub fn problems(&self) -> Vec<&PolicyError> {
        match self {
            PolicyError::Several(all) => all.iter().flat_map(PolicyError::problems).collect(),
            one => vec![one],
        }
    }

    /// The file or directory the problem is about (`None` for [`PolicyError::Several`]).
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            PolicyError::Read { path, .. } => Some(path),
            PolicyError::Invalid { file, .. } | PolicyError::Unplaced { file, .. } => Some(file),
            PolicyError::Several(_) => None,
        }
    }

    /// One error for a list of problems: the problem itself when there is just one.
    pub(super) fn from_list(mut problems: Vec<PolicyError>) -> PolicyError {
        if problems.len() == 1 { problems.remove(0) } else { PolicyError::Several(problems) }
    }
}

struct Lines<'a>(&'a [PolicyError]);

impl fmt::Display for Lines<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}
