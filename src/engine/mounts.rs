//! The mount plan of one VM: for each entry of its `volumes:`, in compose order, what QEMU
//! gets (a drive or a 9p share) and what the guest gets (fstab entries).
//!
//! The argv builder and the seed builder both read this one plan, so the drives QEMU attaches,
//! the 9p tags it exports and the entries cloud-init mounts cannot disagree. Tags are numbered
//! over *all* bind mounts (`automount: false` ones included), so `mountN` names the same share
//! on both sides.
//!
//! A bind mount whose source is a file cannot be shared directly (9p exports folders). Its
//! share is a folder in the instance's private folder holding one hard link to the file,
//! mounted on a hidden folder under `/run/qemu-compose/` in the guest, and a bind mount puts
//! that one file on the target. Nothing else of the host folder is exposed. The folder is
//! never in the project: a hard link there would let any guest given the project (`.:/src`)
//! write the file, whatever its own mount says. An editor that saves by writing a new file and
//! renaming it breaks the hard link: the guest then keeps seeing the old content until the
//! next `up`. A symbolic link as the source is followed: the share holds the file it names. A
//! file that cannot be hard-linked there (on another file system than the private folder, or a
//! file of another user under `protected_hardlinks`) is copied instead, and that share is
//! read-only on both sides, since guest writes to a copy would be lost and host edits are not
//! seen until the next `up`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::cloudinit::{GuestMount, TargetKind};
use crate::compose::{MountKind, MountOption, Vm};
use crate::qemu::argv::{DriveFormat, DriveSpec, SecurityModel, ShareSpec};
use crate::state::VolumeRegistry;

/// The guest folder under which single-file shares are mounted.
pub const FILE_SHARE_ROOT: &str = "/run/qemu-compose";

/// 9p options every share is mounted with; a user option with the same key replaces one.
///
/// `msize=512000` (the most the virtio transport takes; the kernel default is 128 KiB) made
/// reads 1.4-2.3x and writes 1.3x faster in the real guest (scripts/bench-guest.sh), and a
/// host edit is still seen at once. The page cache modes that make tree walks 3-6x faster
/// (`cache=loose`, `cache=fscache`) left host edits unseen in the guest, so they stay the
/// user's choice (`mount_options`).
const DEFAULT_9P_OPTIONS: [(&str, &str); 3] = [
    ("trans", "virtio"),
    ("version", "9p2000.L"),
    ("msize", "512000"),
];

/// What a bind mount's source turned out to be when `up` looked at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// A folder: shared as it is.
    Dir,
    /// A regular file: shared through a one-file folder of the instance.
    File,
    /// A regular file that cannot be hard-linked into the instance: shared as a read-only
    /// copy (see [`settle_file_sources`]).
    FileCopy,
}

/// What the plan needs to know about the host and the project's state.
#[derive(Debug, Clone)]
pub struct PlanFacts<'a> {
    /// Whether QEMU runs as root (then 9p can use `passthrough`).
    pub host_is_root: bool,
    /// The named volumes (their images and ext4 UUIDs).
    pub volumes: &'a VolumeRegistry,
    /// The kind of each bind source (checked by [`check_bind_sources`]).
    pub source_kinds: &'a BTreeMap<PathBuf, SourceKind>,
    /// The instance's folder for single-file shares.
    pub file_shares_dir: &'a Path,
    /// The folder holding the VM's `hosts` list, when it is on project networks.
    pub hosts_dir: Option<&'a Path>,
}

/// One single-file share to prepare on the host before QEMU starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileShare {
    /// The file in the project.
    pub source: PathBuf,
    /// The folder QEMU exports; it must hold only `link`.
    pub dir: PathBuf,
    /// The hard link (or copy) of `source` inside `dir`.
    pub link: PathBuf,
    /// Whether `link` is a read-only copy rather than a hard link.
    pub copy: bool,
}

/// The whole plan of one VM.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountPlan {
    /// Named volumes as drives, in compose order (attached right after the instance disk).
    pub drives: Vec<DriveSpec>,
    /// Bind mounts as 9p shares, in compose order, tags `mount0..`.
    pub shares: Vec<ShareSpec>,
    /// Folders to fill with one file before QEMU starts.
    pub file_shares: Vec<FileShare>,
    /// The guest's fstab entries, in mount order.
    pub guest: Vec<GuestMount>,
}

/// Why a plan cannot be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    /// A bind source is missing (or is neither a file nor a folder).
    #[error("VM {vm}: bind mount source {written:?} ({}) {reason}", .resolved.display())]
    BadSource {
        /// The VM.
        vm: String,
        /// The source as written in the compose file.
        written: String,
        /// The absolute path it resolved to.
        resolved: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A named volume has no record (it should have been created first).
    #[error("VM {vm}: volume {volume:?} does not exist")]
    MissingVolume {
        /// The VM.
        vm: String,
        /// The volume.
        volume: String,
    },
}

/// Looks at every bind source of `vm`: each must exist and be a folder or a regular file.
pub fn check_bind_sources(vm: &Vm) -> Result<BTreeMap<PathBuf, SourceKind>, PlanError> {
    let mut kinds = BTreeMap::new();
    for mount in &vm.volumes {
        let MountKind::Bind {
            source_written,
            source,
            ..
        } = &mount.kind
        else {
            continue;
        };
        let bad = |reason: String| PlanError::BadSource {
            vm: vm.name.clone(),
            written: source_written.clone(),
            resolved: source.clone(),
            reason,
        };
        let meta = std::fs::metadata(source).map_err(|e| {
            bad(match e.kind() {
                std::io::ErrorKind::NotFound => "does not exist".to_string(),
                _ => format!("cannot be read: {e}"),
            })
        })?;
        let kind = if meta.is_dir() {
            SourceKind::Dir
        } else if meta.is_file() {
            SourceKind::File
        } else {
            return Err(bad("is neither a folder nor a regular file".to_string()));
        };
        kinds.insert(source.clone(), kind);
    }
    Ok(kinds)
}

/// Finds out which file sources can be hard-linked into the private state folder `private`
/// (the file-share folders are inside it, on the same file system) by making a link under a
/// temporary name there and removing it at once. Each file source that cannot be linked
/// becomes [`SourceKind::FileCopy`]; it is returned with the warning to show. Symbolic links
/// are followed. Call under the project lock (a probe left by a crash is swept as a
/// temporary).
pub fn settle_file_sources(
    vm: &str,
    kinds: &mut BTreeMap<PathBuf, SourceKind>,
    private: &Path,
) -> Vec<String> {
    let mut warnings = Vec::new();
    for (source, kind) in kinds.iter_mut() {
        if *kind != SourceKind::File {
            continue;
        }
        let probe = std::fs::canonicalize(source).and_then(|target| {
            tempfile::Builder::new()
                .prefix(".tmp-link-")
                .make_in(private, |path| std::fs::hard_link(&target, path))
        });
        if let Err(e) = probe {
            *kind = SourceKind::FileCopy;
            warnings.push(copy_warning(vm, source, private, &e));
        }
    }
    warnings
}

/// Why `source` is shared as a copy, and what that means for the user.
fn copy_warning(vm: &str, source: &Path, private: &Path, e: &std::io::Error) -> String {
    let why = if e.kind() == std::io::ErrorKind::CrossesDevices {
        format!(
            "it is on another file system than the private state folder {}",
            private.display()
        )
    } else {
        format!(
            "it cannot be hard-linked into the private state folder {} ({e})",
            private.display()
        )
    };
    format!(
        "VM {vm}: {}: {why}; it is shared as a read-only copy, and host edits are not seen until the next `up`",
        source.display()
    )
}

/// Plans the mounts of `vm`. Pure: the file system was looked at by [`check_bind_sources`].
pub fn plan(vm: &Vm, facts: &PlanFacts) -> Result<MountPlan, PlanError> {
    let mut out = MountPlan::default();
    for mount in &vm.volumes {
        match &mount.kind {
            MountKind::Named { volume } => {
                let missing = || PlanError::MissingVolume {
                    vm: vm.name.clone(),
                    volume: volume.clone(),
                };
                let record = facts.volumes.volumes.get(volume).ok_or_else(missing)?;
                let (uuid, image) = (&record.uuid, &record.disk_path);
                let n = out.drives.len();
                out.drives.push(DriveSpec {
                    id: format!("vol{n}"),
                    path: image.clone(),
                    format: DriveFormat::Qcow2,
                    serial: drive_serial(volume),
                    read_only: mount.read_only,
                    // Never the header's backing file: the guest may rewrite the header.
                    backing: None,
                });
                let options = if mount.read_only {
                    "ro,nofail"
                } else {
                    "defaults,nofail"
                };
                out.guest.push(GuestMount {
                    device: format!("UUID={uuid}"),
                    target: mount.target.clone(),
                    fstype: "ext4".to_string(),
                    options: options.to_string(),
                    pass: 2,
                    target_kind: TargetKind::Dir,
                });
            }
            MountKind::Bind {
                source_written,
                source,
                automount,
                mount_options,
                security_model,
            } => {
                let n = out.shares.len();
                let tag = format!("mount{n}");
                let kind = *facts
                    .source_kinds
                    .get(source)
                    .ok_or_else(|| PlanError::BadSource {
                        vm: vm.name.clone(),
                        written: source_written.clone(),
                        resolved: source.clone(),
                        reason: "was not checked before planning".to_string(),
                    })?;
                let security_model = security_model.map_or(
                    default_security_model(facts.host_is_root),
                    SecurityModel::from,
                );
                // A copy is read-only whatever the compose file says.
                let read_only = mount.read_only || kind == SourceKind::FileCopy;
                let shared_path = match kind {
                    SourceKind::Dir => source.clone(),
                    SourceKind::File | SourceKind::FileCopy => {
                        let dir = facts.file_shares_dir.join(&tag);
                        let name = source.file_name().unwrap_or(source.as_os_str());
                        out.file_shares.push(FileShare {
                            source: source.clone(),
                            link: dir.join(name),
                            dir: dir.clone(),
                            copy: kind == SourceKind::FileCopy,
                        });
                        dir
                    }
                };
                out.shares.push(ShareSpec {
                    id: format!("fs{n}"),
                    path: shared_path,
                    tag: tag.clone(),
                    security_model,
                    read_only,
                });
                if !automount {
                    continue;
                }
                let options = ninep_options(mount_options, read_only);
                match kind {
                    SourceKind::Dir => out.guest.push(GuestMount {
                        device: tag,
                        target: mount.target.clone(),
                        fstype: "9p".to_string(),
                        options,
                        pass: 0,
                        target_kind: TargetKind::Dir,
                    }),
                    SourceKind::File | SourceKind::FileCopy => {
                        let hidden = format!("{FILE_SHARE_ROOT}/{tag}");
                        let name = source
                            .file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_default();
                        out.guest.push(GuestMount {
                            device: tag,
                            target: hidden.clone(),
                            fstype: "9p".to_string(),
                            options,
                            pass: 0,
                            target_kind: TargetKind::Dir,
                        });
                        let bind = if read_only {
                            "bind,ro,nofail"
                        } else {
                            "bind,nofail"
                        };
                        out.guest.push(GuestMount {
                            device: format!("{hidden}/{name}"),
                            target: mount.target.clone(),
                            fstype: "none".to_string(),
                            options: bind.to_string(),
                            pass: 0,
                            target_kind: TargetKind::File,
                        });
                    }
                }
            }
        }
    }
    if let Some(dir) = facts.hosts_dir {
        hosts_share(&mut out, dir, facts.host_is_root);
    }
    Ok(out)
}

/// The project's hosts list on `/etc/hosts`: its folder shared read-only (tag `hosts`),
/// mounted on a hidden folder, and the one file bind-mounted read-only on `/etc/hosts`.
/// `up` replaces the file by a rename; 9p opens by name, so each lookup in the guest reads
/// the list as it is now.
fn hosts_share(out: &mut MountPlan, dir: &Path, host_is_root: bool) {
    let tag = "hosts".to_string();
    let hidden = format!("{FILE_SHARE_ROOT}/{tag}");
    out.shares.push(ShareSpec {
        id: "fshosts".to_string(),
        path: dir.to_path_buf(),
        tag: tag.clone(),
        security_model: default_security_model(host_is_root),
        read_only: true,
    });
    out.guest.push(GuestMount {
        device: tag,
        target: hidden.clone(),
        fstype: "9p".to_string(),
        options: ninep_options(&[], true),
        pass: 0,
        target_kind: TargetKind::Dir,
    });
    out.guest.push(GuestMount {
        device: format!("{hidden}/hosts"),
        target: "/etc/hosts".to_string(),
        fstype: "none".to_string(),
        options: "bind,ro,nofail".to_string(),
        pass: 0,
        target_kind: TargetKind::File,
    });
}

/// The 9p security model of a share whose mount does not name one: QEMU as root can keep the
/// guest's owners (`passthrough`); as an ordinary user it cannot, so `none`.
fn default_security_model(host_is_root: bool) -> SecurityModel {
    if host_is_root {
        SecurityModel::Passthrough
    } else {
        SecurityModel::None
    }
}

/// The 9p mount options: the defaults, the user's (same key replaces a default), `ro` for a
/// read-only mount, and `nofail` so a missing share never blocks the boot.
fn ninep_options(user: &[MountOption], read_only: bool) -> String {
    let mut opts: Vec<String> = DEFAULT_9P_OPTIONS
        .iter()
        .filter(|(key, _)| !user.iter().any(|o| o.key == *key))
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    opts.extend(user.iter().map(ToString::to_string));
    for flag in [read_only.then_some("ro"), Some("nofail")]
        .into_iter()
        .flatten()
    {
        if !opts.iter().any(|o| o == flag) {
            opts.push(flag.to_string());
        }
    }
    opts.join(",")
}

/// A virtio serial (at most 20 bytes) naming the volume: the name itself when it fits, else a
/// prefix and a hash so two long names never share a serial.
fn drive_serial(volume: &str) -> String {
    if volume.len() <= 20 {
        return volume.to_string();
    }
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(volume.as_bytes());
    let hash = base16ct::lower::encode_string(&digest[..4]);
    format!("{}-{hash}", &volume[..11])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compose::{self, LoadOptions};

    use crate::compose::test_project as project;

    const MIXED: &str = r#"
volumes:
  data: {}
  seeds: {}
vms:
  app:
    image: ./base.img
    volumes:
      - data:/var/lib/data
      - source: ./manual
        target: /mnt/manual
        automount: false
      - ./src:/srv/src
      - seeds:/srv/seeds:ro
      - source: ./conf
        target: /etc/app
        read_only: true
        mount_options: "cache=loose,msize=104857600,version=9p2000.u"
      - ./nginx.conf:/etc/nginx/nginx.conf:ro
"#;

    fn mixed_plan(root: bool) -> MountPlan {
        let p = project(MIXED);
        let mut volumes = VolumeRegistry::default();
        for (name, uuid) in [
            ("data", "11111111-2222-3333-4444-555555555555"),
            ("seeds", "66666666-7777-8888-9999-000000000000"),
        ] {
            let record = crate::state::VolumeRecord {
                name: name.to_string(),
                size: "10G".to_string(),
                disk_path: PathBuf::from(format!("/p/.qemu-compose/volumes/{name}/volume.qcow2")),
                created: "2026-11-29T08:00:00Z".to_string(),
                uuid: uuid.to_string(),
                label: name.to_string(),
            };
            volumes.volumes.insert(name.to_string(), record);
        }
        let kinds: BTreeMap<_, _> = [
            ("/p/manual", SourceKind::Dir),
            ("/p/src", SourceKind::Dir),
            ("/p/conf", SourceKind::Dir),
            ("/p/nginx.conf", SourceKind::File),
        ]
        .into_iter()
        .map(|(p, k)| (PathBuf::from(p), k))
        .collect();
        let facts = PlanFacts {
            host_is_root: root,
            volumes: &volumes,
            source_kinds: &kinds,
            file_shares_dir: Path::new("/s/vms/app/file-shares"),
            hosts_dir: None,
        };
        plan(&p.vms[0], &facts).unwrap()
    }

    #[test]
    fn drives_follow_compose_order_and_carry_read_only() {
        let plan = mixed_plan(false);
        let drives: Vec<_> = plan
            .drives
            .iter()
            .map(|d| (d.id.as_str(), d.serial.as_str(), d.read_only))
            .collect();
        assert_eq!(drives, [("vol0", "data", false), ("vol1", "seeds", true)]);
    }

    #[test]
    fn tags_are_numbered_over_all_bind_mounts() {
        let plan = mixed_plan(false);
        let shares: Vec<_> = plan
            .shares
            .iter()
            .map(|s| (s.tag.as_str(), s.path.to_str().unwrap(), s.read_only))
            .collect();
        assert_eq!(
            shares,
            [
                ("mount0", "/p/manual", false),
                ("mount1", "/p/src", false),
                ("mount2", "/p/conf", true),
                ("mount3", "/s/vms/app/file-shares/mount3", true),
            ]
        );
        // mount0 has automount: false, so the guest mounts start at mount1.
        let guest: Vec<_> = plan
            .guest
            .iter()
            .map(|g| {
                (
                    g.device.as_str(),
                    g.target.as_str(),
                    g.fstype.as_str(),
                    g.options.as_str(),
                )
            })
            .collect();
        assert_eq!(
            guest,
            [
                (
                    "UUID=11111111-2222-3333-4444-555555555555",
                    "/var/lib/data",
                    "ext4",
                    "defaults,nofail"
                ),
                (
                    "mount1",
                    "/srv/src",
                    "9p",
                    "trans=virtio,version=9p2000.L,msize=512000,nofail"
                ),
                (
                    "UUID=66666666-7777-8888-9999-000000000000",
                    "/srv/seeds",
                    "ext4",
                    "ro,nofail"
                ),
                (
                    "mount2",
                    "/etc/app",
                    "9p",
                    "trans=virtio,cache=loose,msize=104857600,version=9p2000.u,ro,nofail"
                ),
                (
                    "mount3",
                    "/run/qemu-compose/mount3",
                    "9p",
                    "trans=virtio,version=9p2000.L,msize=512000,ro,nofail"
                ),
                (
                    "/run/qemu-compose/mount3/nginx.conf",
                    "/etc/nginx/nginx.conf",
                    "none",
                    "bind,ro,nofail"
                ),
            ]
        );
        assert_eq!(plan.guest[5].target_kind, TargetKind::File);
        assert_eq!(
            plan.file_shares,
            [FileShare {
                source: "/p/nginx.conf".into(),
                dir: "/s/vms/app/file-shares/mount3".into(),
                link: "/s/vms/app/file-shares/mount3/nginx.conf".into(),
                copy: false,
            }]
        );
    }

    #[test]
    fn security_model_depends_on_the_host_user_unless_given() {
        let models = |root| {
            mixed_plan(root)
                .shares
                .iter()
                .map(|s| s.security_model)
                .collect::<Vec<_>>()
        };
        assert!(models(false).iter().all(|m| *m == SecurityModel::None));
        assert!(
            models(true)
                .iter()
                .all(|m| *m == SecurityModel::Passthrough)
        );
    }

    #[test]
    fn missing_bind_source_names_written_and_resolved_path() {
        let dir = tempfile::tempdir().unwrap();
        let yaml = "vms:\n  a:\n    image: ./x.img\n    volumes: ['./nope:/mnt']\n";
        let opts = LoadOptions {
            project_name: Some("t"),
            env: &BTreeMap::new(),
        };
        let p = compose::parse_str(
            yaml,
            &dir.path().join("qemu-compose.yaml"),
            dir.path(),
            &opts,
        )
        .unwrap();
        let err = check_bind_sources(&p.vms[0]).unwrap_err().to_string();
        assert!(err.contains("\"./nope\""), "{err}");
        assert!(
            err.contains(&dir.path().join("nope").display().to_string()),
            "{err}"
        );
        assert!(err.contains("does not exist"), "{err}");
    }

    #[test]
    fn a_copied_file_source_is_read_only_on_both_sides() {
        let p = project("vms:\n  a:\n    image: ./x.img\n    volumes: ['./f.conf:/etc/f.conf']\n");
        let kinds: BTreeMap<_, _> = [(PathBuf::from("/p/f.conf"), SourceKind::FileCopy)].into();
        let volumes = VolumeRegistry::default();
        let facts = PlanFacts {
            host_is_root: false,
            volumes: &volumes,
            source_kinds: &kinds,
            file_shares_dir: Path::new("/s/vms/a/file-shares"),
            hosts_dir: None,
        };
        let plan = plan(&p.vms[0], &facts).unwrap();
        assert!(plan.shares[0].read_only);
        assert!(plan.file_shares[0].copy);
        assert!(plan.guest[0].options.split(',').any(|o| o == "ro"));
        assert_eq!(plan.guest[1].options, "bind,ro,nofail");
    }

    #[test]
    fn a_file_on_another_file_system_than_the_private_folder_is_copied_and_says_why() {
        use std::os::unix::fs::MetadataExt;
        let here = tempfile::tempdir().unwrap();
        let shm = tempfile::tempdir_in("/dev/shm").unwrap();
        let dev = |p: &Path| std::fs::metadata(p).unwrap().dev();
        assert_ne!(
            dev(here.path()),
            dev(shm.path()),
            "/dev/shm must be another file system"
        );
        let source = here.path().join("app.conf");
        std::fs::write(&source, "x").unwrap();
        let mut kinds: BTreeMap<_, _> = [(source.clone(), SourceKind::File)].into();

        assert!(settle_file_sources("app", &mut kinds, here.path()).is_empty());
        assert_eq!(kinds[&source], SourceKind::File);
        // The probe left nothing behind.
        assert_eq!(std::fs::read_dir(here.path()).unwrap().count(), 1);

        let warnings = settle_file_sources("app", &mut kinds, shm.path());
        assert_eq!(kinds[&source], SourceKind::FileCopy);
        assert_eq!(
            warnings,
            [format!(
                "VM app: {}: it is on another file system than the private state folder {}; it is shared as a read-only copy, and host edits are not seen until the next `up`",
                source.display(),
                shm.path().display()
            )]
        );
    }

    #[test]
    fn long_volume_names_get_distinct_serials() {
        let a = drive_serial("a-very-long-volume-name-one");
        let b = drive_serial("a-very-long-volume-name-two");
        assert!(a.len() <= 20 && b.len() <= 20);
        assert_ne!(a, b);
    }
}
