//! Where each field of the merged compose files was written, kept with the model so that a
//! command that refuses a valid field later (`export kubevirt`) can blame its line and column
//! as `config` does.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::error::{ComposeError, Here, located};
use super::tree::{Node, Pos, Value};

/// Field paths as errors spell them (`vms.db.kernel`, `vms.db.volumes[1]`) to positions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Places {
    files: Vec<PathBuf>,
    at: BTreeMap<String, Pos>,
}

impl Places {
    /// Records the position of every node under `root`; `files` are the files merged, which
    /// a position's `file` indexes.
    pub(super) fn record(root: &Node, files: &[PathBuf]) -> Self {
        let mut places = Places {
            files: files.to_vec(),
            at: BTreeMap::new(),
        };
        places.walk(root, String::new());
        places
    }

    fn walk(&mut self, node: &Node, path: String) {
        match &node.value {
            Value::Map(entries) => {
                for (key, value) in entries {
                    let child = if path.is_empty() {
                        key.name.clone()
                    } else {
                        format!("{path}.{}", key.name)
                    };
                    self.walk(value, child);
                }
            }
            Value::Seq(items) => {
                for (i, item) in items.iter().enumerate() {
                    self.walk(item, format!("{path}[{i}]"));
                }
            }
            _ => {}
        }
        self.at.insert(path, node.pos);
    }

    /// Whether `field` was written, rather than left to its default.
    pub fn is_written(&self, field: &str) -> bool {
        self.at.contains_key(field)
    }

    /// An error about `field` of VM `vm` (or of the project), at the place the field was
    /// written, else at its nearest written parent (a default was not written anywhere).
    pub fn error(&self, vm: Option<&str>, field: &str, message: impl Into<String>) -> ComposeError {
        let mut path = field;
        let pos = loop {
            if let Some(pos) = self.at.get(path) {
                break *pos;
            }
            match path.rfind(['.', '[']) {
                Some(end) => path = &path[..end],
                None => break Pos::default(),
            }
        };
        let here = Here {
            vm: vm.map(str::to_owned),
            path: field.to_owned(),
        };
        located(&self.files, pos, &here, message.into())
    }
}

#[cfg(test)]
mod tests {
    use crate::compose::test_project;

    #[test]
    fn a_field_is_blamed_where_written_else_on_its_nearest_written_parent() {
        let project =
            test_project("vms:\n  db:\n    image: https://e/x.img\n    volumes: [./a:/a]\n");
        let at = |field: &str| {
            let e = project.places.error(Some("db"), field, "m");
            (e.line, e.column, e.field.unwrap())
        };
        assert_eq!(
            at("vms.db.volumes[0]"),
            (4, 15, "vms.db.volumes[0]".to_owned())
        );
        assert_eq!(at("vms.db.image"), (3, 12, "vms.db.image".to_owned()));
        // `cpu` was not written: the VM's own place.
        assert_eq!(at("vms.db.cpu"), (3, 5, "vms.db.cpu".to_owned()));
        assert!(project.places.is_written("vms.db.image"));
        assert!(!project.places.is_written("vms.db.cpu"));
        let e = project.places.error(None, "nowhere", "m");
        assert_eq!((e.line, e.file.to_str()), (0, Some("/p/qemu-compose.yaml")));
    }
}
