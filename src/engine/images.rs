//! The image cache as `pull`, `image ls` and `image rm` see it: which images there are, and
//! which VMs of the project use each, from the instance disks' qcow2 headers and the compose
//! file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::compose::{ImageSource, Project, Vm};
use crate::image::{Progress, Sha256Digest, overlay_base};

use super::{EngineError, HostEnv, Workspace, instance};

/// For each base image (canonical path), the project's VMs whose instance overlay is based
/// on it.
fn overlay_users(project: &Project, host: &HostEnv) -> BTreeMap<PathBuf, Vec<String>> {
    let workspace = Workspace::new(project, host);
    let mut users: BTreeMap<PathBuf, Vec<String>> = BTreeMap::new();
    for vm in &project.vms {
        if let Some(base) = overlay_base(&workspace.paths(&vm.name).disk) {
            users.entry(base).or_default().push(vm.name.clone());
        }
    }
    users
}

/// One image of the cache, for `image ls`.
#[derive(Debug, serde::Serialize)]
pub struct ImageRow {
    /// The file name in the cache.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// Where it was downloaded from, when its sidecar says.
    pub url: Option<String>,
    /// VMs of this project whose instance disk is based on the image; `None` without a project.
    pub used_by: Option<Vec<String>>,
    /// VMs of this project whose `image:` URL is this file; `None` without a project.
    pub configured_for: Option<Vec<String>>,
}

/// The folder of the image cache.
pub fn cache_dir(host: &HostEnv) -> &Path {
    host.images.dir()
}

/// Every image of the cache, with the VMs of `project` (when there is one) that use it.
pub fn list(host: &HostEnv, project: Option<&Project>) -> Result<Vec<ImageRow>, EngineError> {
    let users = project.map(|p| overlay_users(p, host));
    let mut rows = Vec::new();
    for image in host.images.list()? {
        let canonical = image.path.canonicalize().unwrap_or(image.path.clone());
        rows.push(ImageRow {
            used_by: users
                .as_ref()
                .map(|u| u.get(&canonical).cloned().unwrap_or_default()),
            configured_for: project.map(|p| {
                p.vms
                    .iter()
                    .filter(|vm| match &vm.image {
                        ImageSource::Url(url) => {
                            let checksum = vm
                                .image_checksum
                                .as_deref()
                                .and_then(|c| c.parse::<Sha256Digest>().ok());
                            host.images.find(url, checksum.as_ref()).as_ref() == Some(&image.path)
                        }
                        ImageSource::Path(_) => false,
                    })
                    .map(|vm| vm.name.clone())
                    .collect()
            }),
            url: image.meta.as_ref().map(|m| m.url.clone()),
            name: image.name,
            size: image.size,
        });
    }
    Ok(rows)
}

/// `image rm`: removes images of the cache, one at a time with [`ImageRemoval::remove`].
#[derive(Debug)]
pub struct ImageRemoval<'a> {
    host: &'a HostEnv,
    users: BTreeMap<PathBuf, Vec<String>>,
    force: bool,
}

impl<'a> ImageRemoval<'a> {
    /// Finds which images the instance disks of `project` are based on; unless `force`,
    /// those are refused.
    pub fn new(host: &'a HostEnv, project: Option<&Project>, force: bool) -> Self {
        Self {
            host,
            users: project.map(|p| overlay_users(p, host)).unwrap_or_default(),
            force,
        }
    }

    /// Removes image `name` of the cache.
    pub fn remove(&self, name: &str) -> Result<(), EngineError> {
        let path = self.host.images.dir().join(name);
        let canonical = path.canonicalize().unwrap_or(path.clone());
        if let Some(vms) = self.users.get(&canonical)
            && !self.force
        {
            return Err(EngineError::ImageInUse {
                name: name.to_string(),
                vms: vms.clone(),
            });
        }
        Ok(self.host.images.remove(name, self.force)?)
    }
}

/// `pull URL`: downloads `url` into the cache (again with `force`) and returns where it is.
pub fn pull_url(
    host: &HostEnv,
    url: &str,
    force: bool,
    progress: &mut dyn Progress,
) -> Result<PathBuf, EngineError> {
    Ok(host.images.pull(url, None, force, progress)?)
}

/// What `pull` did for one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pulled {
    /// The VM's image is a local file: nothing to pull. Its checksum, when it exists, is
    /// [`instance::check_local_checksum`]'s to check.
    Local {
        /// The file.
        path: PathBuf,
        /// Whether it exists.
        exists: bool,
    },
    /// The VM's image URL is in the cache.
    Url {
        /// The URL.
        url: String,
        /// Where it is cached.
        path: PathBuf,
    },
}

/// `pull [VM…]`: fills the cache for one VM after another, downloading an image that two VMs
/// share once (and with `force`, again only once).
#[derive(Debug)]
pub struct Puller<'a> {
    host: &'a HostEnv,
    force: bool,
    done: BTreeMap<(String, Option<String>), PathBuf>,
}

impl<'a> Puller<'a> {
    /// A puller for `host`'s cache; `force` downloads again what is cached.
    pub fn new(host: &'a HostEnv, force: bool) -> Self {
        Self {
            host,
            force,
            done: BTreeMap::new(),
        }
    }

    /// Pulls the image of `vm`, unless it is a local file or was pulled for another VM.
    pub fn pull(&mut self, vm: &Vm, progress: &mut dyn Progress) -> Result<Pulled, EngineError> {
        match &vm.image {
            ImageSource::Path(path) => Ok(Pulled::Local {
                path: path.clone(),
                exists: path.is_file(),
            }),
            ImageSource::Url(url) => {
                let key = (url.clone(), vm.image_checksum.clone());
                let path = match self.done.get(&key) {
                    Some(path) => path.clone(),
                    None => {
                        let path = instance::resolve_image(vm, self.host, self.force, progress)?;
                        self.done.insert(key, path.clone());
                        path
                    }
                };
                Ok(Pulled::Url {
                    url: url.clone(),
                    path,
                })
            }
        }
    }
}
