//! The state `export kubevirt` needs, made as `up` makes it: the project's SSH key and
//! console password, the named volumes (created, and filled from `init_from`, if missing),
//! the volumes bind mounts become under `x-kubevirt:` (filled from their folders), and a
//! host key per VM for the cluster guest; and the manifests written to a folder only their
//! owner can read.

use std::collections::BTreeMap;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use super::volumes::{VolumeError, ensure_volumes};
use super::{EngineError, Reporter};
use crate::cloudinit;
use crate::compose::{Project, format_size};
use crate::kubevirt::{self, Facts, names};
use crate::state::StateError;
use crate::state::secrets::InstanceHostKey;
use crate::state::{ProjectSecrets, StateDir, VolumeRegistry, write_atomic};

pub use crate::kubevirt::{Export, check, to_yaml, translate};

/// The file, in a VM's private folder, of the SSH host key its cluster guest gets: kept, so
/// that exporting again gives the same Secret.
const HOST_KEY_FILE: &str = "kubevirt-host-key";

/// Creates what is missing, under the project lock, and returns the facts the manifests
/// are made from. Call after [`kubevirt::check`] passed.
pub fn facts(project: &Project, reporter: &dyn Reporter) -> Result<Facts, EngineError> {
    let state = StateDir::new(&project.dir);
    state.ensure()?;
    let _guard = super::lifecycle::lock(&state, reporter)?;
    let secrets = ProjectSecrets::ensure(&state, &project.name)?;
    let mut registry = VolumeRegistry::load(&state.volumes_json())?;
    ensure_volumes(
        &state,
        project,
        &mut registry,
        reporter,
        &mut crate::progress::NoProgress,
    )?;
    let sizes: BTreeMap<String, u64> = kubevirt::volume_sizes(project).into_iter().collect();
    for (name, source) in kubevirt::bind_volume_sources(project) {
        if registry.volumes.contains_key(&name) {
            continue;
        }
        let size = sizes
            .get(&name)
            .copied()
            .unwrap_or(crate::compose::DEFAULT_SIZE);
        reporter.info(&format!(
            "creating volume {name} ({}) from {}",
            format_size(size),
            source.display()
        ));
        let record = super::volume_io::create_filled(&state, &name, size, &source)?;
        registry.volumes.insert(name, record);
        registry
            .save(&state.volumes_json())
            .map_err(VolumeError::from)?;
    }
    let mut host_keys = BTreeMap::new();
    for vm in &project.vms {
        let dir = state.vm_private_dir(&vm.name);
        crate::state::atomic::create_private_dir(&dir, 0o700)?;
        let path = dir.join(HOST_KEY_FILE);
        let key = InstanceHostKey::load_or_make(&path)?.key;
        if !path.exists() {
            write_atomic(&path, key.private_openssh.as_bytes(), 0o600)?;
        }
        host_keys.insert(vm.name.clone(), key);
    }
    let password_hash = cloudinit::hash_password(&secrets.console_password, &secrets.password_salt)
        .map_err(|e| EngineError::Refused(e.to_string()))?;
    Ok(Facts {
        public_key: secrets.public_key,
        password_hash,
        host_keys,
        volumes: registry,
    })
}

/// Whether `name` can be a namespace (an RFC 1123 label).
pub fn is_namespace(name: &str) -> bool {
    names::is_label(name)
}

/// Writes `files` (name and text) into `dir`, each atomically and readable by its owner
/// only (0600): the manifests hold the guest's SSH host private key and the console
/// password's hash. A `dir` this creates is its owner's only (0700); an existing one keeps
/// its mode.
pub fn write_private_files(dir: &Path, files: &[(String, String)]) -> Result<(), EngineError> {
    if !dir.is_dir() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| StateError::io(dir, e))?;
        // The umask may have taken bits from the mode asked for; this is the mode meant.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| StateError::io(dir, e))?;
    }
    for (name, text) in files {
        write_atomic(&dir.join(name), text.as_bytes(), 0o600)?;
    }
    Ok(())
}
