//! Located, collected errors: every problem in a compose file is reported at once, each with
//! its file, line, column, VM and field path.
//!
//! [`At`] and [`Here`] carry that place through the raw reader and the validator, and
//! [`Errors`] collects what both find.

use std::fmt;
use std::path::PathBuf;

use super::tree::Pos;

/// One problem in a compose file (or its `.env`), in words a user understands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ComposeError {
    pub file: PathBuf,
    /// 1-based; 0 when the problem has no single place (e.g. a file that cannot be read).
    pub line: u64,
    pub column: u64,
    /// The VM the problem belongs to, if any.
    pub vm: Option<String>,
    /// The path of the offending field, e.g. `vms.db.volumes[1].target`.
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for ComposeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every error found in one load, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ComposeErrors(pub Vec<ComposeError>);

impl fmt::Display for ComposeErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl From<ComposeError> for ComposeErrors {
    fn from(e: ComposeError) -> Self {
        ComposeErrors(vec![e])
    }
}

/// A value and where it was written, so that a later rule can blame that place.
#[derive(Debug, Clone, PartialEq)]
pub struct At<T> {
    pub pos: Pos,
    pub value: T,
}

/// Where in the file we are: the VM (if any) and the field path, for error messages.
#[derive(Debug, Clone)]
pub struct Here {
    pub vm: Option<String>,
    pub path: String,
}

impl Here {
    pub fn root() -> Self {
        Here {
            vm: None,
            path: String::new(),
        }
    }

    pub fn field(&self, name: &str) -> Self {
        let path = if self.path.is_empty() {
            name.to_owned()
        } else {
            format!("{}.{name}", self.path)
        };
        Here {
            vm: self.vm.clone(),
            path,
        }
    }

    pub fn index(&self, i: usize) -> Self {
        Here {
            vm: self.vm.clone(),
            path: format!("{}[{i}]", self.path),
        }
    }

    /// The field `name` under `vms`, which names the VM every error below it belongs to.
    pub fn vm(&self, name: &str) -> Self {
        Here {
            vm: Some(name.to_owned()),
            ..self.field(name)
        }
    }
}

/// Collects errors with their file; shared by the raw reader and the validator.
#[derive(Debug)]
pub struct Errors<'a> {
    /// The files merged, in order; a position's `file` indexes this.
    pub files: &'a [PathBuf],
    pub list: Vec<ComposeError>,
    /// What is worth saying but loads anyway (an unset variable), in the same shape.
    pub warnings: Vec<ComposeError>,
}

impl Errors<'_> {
    pub fn push(&mut self, pos: Pos, here: &Here, message: impl Into<String>) {
        let e = self.located(pos, here, message.into());
        self.list.push(e);
    }

    pub fn warn(&mut self, pos: Pos, here: &Here, message: impl Into<String>) {
        let w = self.located(pos, here, message.into());
        self.warnings.push(w);
    }

    fn located(&self, pos: Pos, here: &Here, message: String) -> ComposeError {
        located(self.files, pos, here, message)
    }
}

/// The error `message` about `here`, at `pos` in one of `files` (the first when `pos` names
/// none).
pub(super) fn located(files: &[PathBuf], pos: Pos, here: &Here, message: String) -> ComposeError {
    ComposeError {
        file: files
            .get(pos.file)
            .or(files.first())
            .cloned()
            .unwrap_or_default(),
        line: pos.line,
        column: pos.column,
        vm: here.vm.clone(),
        field: (!here.path.is_empty()).then(|| here.path.clone()),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_file_position_field_and_message() {
        let e = ComposeError {
            file: "qemu-compose.yaml".into(),
            line: 12,
            column: 9,
            vm: Some("db".into()),
            field: Some("vms.db.volumes[1]".into()),
            message: "named volume \"pgdat\" is not declared".into(),
        };
        assert_eq!(
            e.to_string(),
            "qemu-compose.yaml:12:9: vms.db.volumes[1]: named volume \"pgdat\" is not declared"
        );
        let whole = ComposeError {
            line: 0,
            field: None,
            vm: None,
            message: "cannot read".into(),
            ..e.clone()
        };
        assert_eq!(whole.to_string(), "qemu-compose.yaml: cannot read");
        assert_eq!(ComposeErrors(vec![e, whole]).to_string().lines().count(), 2);
    }
}
