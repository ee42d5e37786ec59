//! Located, collected errors: every problem in a compose file is reported at once, each with
//! its file, line, column, VM and field path.

use std::fmt;
use std::path::PathBuf;

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
