//! The volume registry, `.qemu-compose/volumes.json`: one record per named volume whose image
//! is complete. A volume is added only after its image is synced and renamed into place, so
//! every record names a usable image (or one that something outside qemu-compose removed,
//! which `volume ls` and `up` report).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{StateError, write_atomic};

/// What qemu-compose remembers about one named volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeRecord {
    /// The volume's name, as in the compose file.
    pub name: String,
    /// The virtual size, written as in the compose file's size syntax (e.g. `10G`).
    pub size: String,
    /// The qcow2 image. Stored relative to the state folder, so a copied or moved project
    /// uses its own copy; always derived from the name on load (absolute in memory), so an
    /// edited record cannot point at another file.
    pub disk_path: PathBuf,
    /// When the volume was created, RFC 3339.
    pub created: String,
    /// The ext4 filesystem UUID; the guest mounts the volume by it.
    pub uuid: String,
    /// The ext4 label (the volume name, truncated to 16 bytes).
    pub label: String,
}

/// All records, keyed by volume name (the on-disk JSON object has the same shape).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VolumeRegistry {
    /// Records by name.
    pub volumes: BTreeMap<String, VolumeRecord>,
}

impl VolumeRegistry {
    /// Reads the registry; a missing file is an empty registry, an unreadable one an error.
    pub fn load(path: &Path) -> Result<Self, StateError> {
        let Some(text) = super::atomic::read_optional(path)? else {
            return Ok(Self::default());
        };
        let corrupt = |reason: String| StateError::Corrupt {
            path: path.to_path_buf(),
            reason,
        };
        let mut volumes: BTreeMap<String, VolumeRecord> =
            serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
        if let Some((key, rec)) = volumes.iter().find(|(k, r)| **k != r.name) {
            return Err(corrupt(format!(
                "entry {key:?} records the name {:?}",
                rec.name
            )));
        }
        let root = state_root(path);
        for rec in volumes.values_mut() {
            if !crate::compose::is_valid_name(&rec.name) {
                return Err(corrupt(format!("{:?} is not a volume name", rec.name)));
            }
            rec.disk_path = root.join(relative_image(&rec.name));
        }
        Ok(Self { volumes })
    }

    /// Writes the registry atomically (mode 0600).
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        let stored: BTreeMap<&String, VolumeRecord> = self
            .volumes
            .iter()
            .map(|(k, rec)| {
                let disk_path = relative_image(&rec.name);
                (
                    k,
                    VolumeRecord {
                        disk_path,
                        ..rec.clone()
                    },
                )
            })
            .collect();
        let mut json = serde_json::to_vec_pretty(&stored).expect("records serialise");
        json.push(b'\n');
        write_atomic(path, &json, 0o600)
    }
}

/// The state folder a `volumes.json` lies in.
fn state_root(registry: &Path) -> &Path {
    registry.parent().unwrap_or(Path::new("."))
}

/// Where the image of volume `name` lies, relative to the state folder.
fn relative_image(name: &str) -> PathBuf {
    Path::new("volumes")
        .join(name)
        .join(super::layout::VOLUME_IMAGE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn record(name: &str) -> VolumeRecord {
        VolumeRecord {
            name: name.to_string(),
            size: "10G".to_string(),
            disk_path: PathBuf::from(format!("/p/.qemu-compose/volumes/{name}/volume.qcow2")),
            created: "2026-11-29T08:00:00Z".to_string(),
            uuid: "0b7e2b8e-8f1c-4d8e-9a55-3c1f1f3d2a10".to_string(),
            label: name.to_string(),
        }
    }

    #[test]
    fn missing_file_is_empty_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("volumes.json");
        let mut reg = VolumeRegistry::load(&path).unwrap();
        assert!(reg.volumes.is_empty());
        let mut rec = record("data");
        rec.disk_path = dir.path().join("volumes/data/volume.qcow2");
        reg.volumes.insert("data".into(), rec);
        reg.save(&path).unwrap();
        assert_eq!(VolumeRegistry::load(&path).unwrap(), reg);
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"disk_path\""), "{text}");
    }

    #[test]
    fn paths_are_stored_relative_and_derived_from_the_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("volumes.json");
        let mut reg = VolumeRegistry::default();
        let mut rec = record("data");
        // An absolute path of another project (a copied project) or a planted one.
        rec.disk_path = PathBuf::from("/elsewhere/.qemu-compose/volumes/data/volume.qcow2");
        reg.volumes.insert("data".into(), rec);
        reg.save(&path).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"volumes/data/volume.qcow2\""), "{text}");
        let loaded = VolumeRegistry::load(&path).unwrap();
        assert_eq!(
            loaded.volumes["data"].disk_path,
            dir.path().join("volumes/data/volume.qcow2")
        );
    }

    #[test]
    fn corrupt_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("volumes.json");
        fs::write(&path, "{ not json").unwrap();
        let err = VolumeRegistry::load(&path).unwrap_err();
        assert!(matches!(err, StateError::Corrupt { .. }));
        assert!(err.to_string().contains("volumes.json"), "{err}");
        // The file is left as it was.
        assert_eq!(fs::read_to_string(&path).unwrap(), "{ not json");
    }

    #[test]
    fn mismatched_key_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("volumes.json");
        let json = serde_json::json!({ "a": record("b") });
        fs::write(&path, json.to_string()).unwrap();
        assert!(matches!(
            VolumeRegistry::load(&path),
            Err(StateError::Corrupt { .. })
        ));
    }
}
