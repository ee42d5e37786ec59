//! `user-data`: the `#cloud-config` document, as typed structs.
//!
//! Every value from the compose file or the host lands in a YAML scalar that the serializer
//! quotes as needed, so no value can add a key, a list item or a command. What YAML cannot
//! protect is checked here: fstab fields (whitespace-separated lines), `/etc/environment`
//! lines, and the user account fields cloud-init hands to `useradd`.

use serde::Serialize;

use super::{GuestMount, HostKey, SeedError, SeedInput, TargetKind, UserSpec};

/// The first line cloud-init requires to read the document as cloud-config.
pub(super) const HEADER: &str = "#cloud-config\n";

/// The sudo rule of the default user: the VM is a disposable development machine.
const SUDO_RULE: &str = "ALL=(ALL) NOPASSWD:ALL";
/// Cloud images ship bash; cloud-init's own default user uses it too.
const SHELL: &str = "/bin/bash";
/// The file the environment map is appended to; pam_env and systemd read it at login.
const ENVIRONMENT_FILE: &str = "/etc/environment";

/// The parts of cloud-config we emit, in the order cloud-init applies them.
///
/// `users` lists only our account, not the distro's `default` user: the seed then describes
/// exactly one login with exactly the rights given here. With `default` listed, a compose
/// `user:` that differs from the image's default name would create a second account with
/// a passwordless sudo rule; and when the names match, cloud-init merges the distro's settings
/// into ours, so what the guest gets would depend on the image.
#[derive(Debug, Serialize)]
pub(super) struct CloudConfig {
    users: Vec<User>,
    ssh_pwauth: bool,
    /// Removes the host keys the image came with: whoever built the image knows them.
    ssh_deletekeys: bool,
    /// The one host key sshd gets; given keys, cloud-init generates none of its own, so the
    /// key the host pinned is the only one the guest can show.
    ssh_keys: SshKeys,
    /// `localhost`: an `/etc/hosts` line for the VM's own hostname, so `sudo` and friends do
    /// not stall or warn trying to resolve it (there is no DNS entry for it). Off when a
    /// mount puts a file on `/etc/hosts` (the project's hosts list, which has that line):
    /// cloud-init would write into the mount.
    manage_etc_hosts: ManageEtcHosts,
    /// Runs on every boot, before the mounts module: creates mount targets and loads 9p.
    /// Each entry is an argument list, which cloud-init single-quotes word by word.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    bootcmd: Vec<Vec<String>>,
    /// fstab entries: device, target, type, options, dump, pass.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    mounts: Vec<[String; 6]>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    write_files: Vec<WriteFile>,
    /// The user's provisioning commands, run once per instance by a shell: their own intent.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    runcmd: Vec<String>,
}

#[derive(Debug, Serialize)]
struct User {
    name: String,
    /// Absent when the host user is root: the guest user then keeps the image's default UID.
    #[serde(skip_serializing_if = "Option::is_none")]
    uid: Option<u32>,
    sudo: &'static str,
    shell: &'static str,
    ssh_authorized_keys: Vec<String>,
    /// A SHA-512 crypt hash for the serial console; SSH stays key-only (`ssh_pwauth: false`).
    passwd: String,
    lock_passwd: bool,
}

#[derive(Debug, Serialize)]
struct SshKeys {
    ed25519_private: String,
    ed25519_public: String,
}

#[derive(Debug, Serialize)]
struct WriteFile {
    path: &'static str,
    content: String,
    append: bool,
}

/// cloud-init's `manage_etc_hosts`: a mode name, or `false`.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum ManageEtcHosts {
    Localhost(&'static str),
    Off(bool),
}

impl CloudConfig {
    /// The document for `input`, after checking every value that YAML quoting cannot protect.
    pub(super) fn new(input: &SeedInput) -> Result<Self, SeedError> {
        let user = user(&input.user)?;
        let mut bootcmd = Vec::new();
        if input.mounts.iter().any(|m| m.fstype == "9p") {
            bootcmd.push(argv(&["modprobe", "9p"]));
            bootcmd.push(argv(&["modprobe", "9pnet_virtio"]));
        }
        let mut mounts = Vec::with_capacity(input.mounts.len());
        for (i, mount) in input.mounts.iter().enumerate() {
            check_mount(mount)?;
            if input.mounts[..i].iter().any(|m| m.target == mount.target) {
                return Err(SeedError::DuplicateTarget(mount.target.clone()));
            }
            for cmd in target_commands(mount) {
                if !bootcmd.contains(&cmd) {
                    bootcmd.push(cmd);
                }
            }
            mounts.push(fstab_entry(mount));
        }
        let write_files = if input.environment.is_empty() {
            Vec::new()
        } else {
            vec![environment_file(input)?]
        };
        for command in &input.provision {
            if command.contains('\0') {
                return Err(SeedError::InvalidProvision(command.clone()));
            }
        }
        Ok(Self {
            users: vec![user],
            ssh_pwauth: false,
            ssh_deletekeys: true,
            ssh_keys: ssh_keys(&input.host_key)?,
            manage_etc_hosts: if input.mounts.iter().any(|m| m.target == "/etc/hosts") {
                ManageEtcHosts::Off(false)
            } else {
                ManageEtcHosts::Localhost("localhost")
            },
            bootcmd,
            mounts,
            write_files,
            runcmd: input.provision.clone(),
        })
    }

    /// The document as cloud-init reads it: the `#cloud-config` line, then YAML.
    pub(super) fn render(&self) -> Result<String, SeedError> {
        Ok(format!("{HEADER}{}", super::to_yaml(self)?))
    }
}

fn argv(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| (*w).to_owned()).collect()
}

fn user(spec: &UserSpec) -> Result<User, SeedError> {
    check_user_name(&spec.name)?;
    if spec.uid == Some(0) {
        return Err(SeedError::RootUid);
    }
    let key = spec.ssh_authorized_key.trim();
    if key.is_empty() || key.chars().any(char::is_control) {
        return Err(SeedError::InvalidSshKey);
    }
    check_password_hash(&spec.password_hash)?;
    Ok(User {
        name: spec.name.clone(),
        uid: spec.uid,
        sudo: SUDO_RULE,
        shell: SHELL,
        ssh_authorized_keys: vec![key.to_owned()],
        passwd: spec.password_hash.clone(),
        lock_passwd: false,
    })
}

/// The host key as cloud-init's `ssh_keys` takes it, after checking its shape: one
/// ed25519 public key line, and a private key in OpenSSH's armour with nothing around it.
fn ssh_keys(key: &HostKey) -> Result<SshKeys, SeedError> {
    const BEGIN: &str = "-----BEGIN OPENSSH PRIVATE KEY-----\n";
    const END: &str = "-----END OPENSSH PRIVATE KEY-----";
    let private = key.private_openssh.trim_end();
    let public = key.public.trim();
    let private_ok = private.starts_with(BEGIN)
        && private.ends_with(END)
        && private
            .bytes()
            .all(|b| b == b'\n' || (b.is_ascii_graphic() || b == b' '));
    let public_ok = public.starts_with("ssh-ed25519 ") && !public.chars().any(char::is_control);
    if !(private_ok && public_ok) {
        return Err(SeedError::InvalidHostKey);
    }
    Ok(SshKeys {
        ed25519_private: format!("{private}\n"),
        ed25519_public: public.to_owned(),
    })
}

/// The portable user-name rule of `useradd` (shadow's default `NAME_REGEX` without the
/// trailing `$` of machine accounts): `[a-z_][a-z0-9_-]*`, at most 32 characters. `root` is
/// refused: cloud-init would rewrite the real root account.
fn check_user_name(name: &str) -> Result<(), SeedError> {
    let mut bytes = name.bytes();
    let valid = name.len() <= 32
        && bytes
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        && name != "root";
    if valid {
        Ok(())
    } else {
        Err(SeedError::InvalidUserName(name.to_owned()))
    }
}

/// A `$6$[rounds=N$]salt$hash` string in crypt's alphabet, as [`super::hash_password`] makes.
fn check_password_hash(hash: &str) -> Result<(), SeedError> {
    let valid = hash.starts_with("$6$")
        && hash.split('$').count() >= 4
        && hash
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"./$=".contains(&b));
    if valid {
        Ok(())
    } else {
        Err(SeedError::InvalidPasswordHash)
    }
}

/// Checks one mount's fields against what an fstab line can carry.
///
/// Devices and targets may hold spaces and backslashes, which [`fstab_escape`] writes as octal
/// escapes; the type and options are single tokens that cannot be escaped, so any whitespace,
/// control character, `#` or backslash in them is an error.
fn check_mount(mount: &GuestMount) -> Result<(), SeedError> {
    let bad = |field: &'static str, reason: &'static str| SeedError::InvalidMount {
        target: mount.target.clone(),
        field,
        reason,
    };
    check_target(&mount.target).map_err(|reason| bad("target", reason))?;
    if mount.device.is_empty() || mount.device.chars().any(char::is_control) {
        return Err(bad(
            "device",
            "must be non-empty and free of control characters",
        ));
    }
    if mount.device.starts_with('#') {
        return Err(bad(
            "device",
            "cannot start with '#', which would comment out the fstab line",
        ));
    }
    if mount.fstype.is_empty()
        || !mount
            .fstype
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b))
    {
        return Err(bad(
            "type",
            "must be non-empty and use only letters, digits, '.', '_', '+' and '-'",
        ));
    }
    if mount.options.is_empty()
        || mount
            .options
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '#' || c == '\\')
    {
        return Err(bad(
            "options",
            "must be non-empty and free of whitespace, control characters, '#' and '\\'",
        ));
    }
    if mount.pass > 2 {
        return Err(bad("pass", "fsck pass must be 0, 1 or 2"));
    }
    Ok(())
}

/// An absolute, normalised path that is not `/` and has no control characters.
fn check_target(target: &str) -> Result<(), &'static str> {
    let Some(rest) = target.strip_prefix('/') else {
        return Err("must be an absolute path");
    };
    if rest.is_empty() {
        return Err("cannot be the root directory");
    }
    if rest
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err("must be normalised (no empty, '.' or '..' components)");
    }
    if target.chars().any(char::is_control) {
        return Err("cannot contain control characters");
    }
    Ok(())
}

/// The bootcmd entries that make `mount`'s target exist before the mounts module runs.
fn target_commands(mount: &GuestMount) -> Vec<Vec<String>> {
    match mount.target_kind {
        TargetKind::Dir => vec![argv(&["mkdir", "-p", &mount.target])],
        TargetKind::File => {
            // check_target guarantees a '/' that is not the last character.
            let parent = match mount.target.rfind('/') {
                Some(0) | None => "/",
                Some(i) => &mount.target[..i],
            };
            vec![
                argv(&["mkdir", "-p", parent]),
                argv(&["touch", &mount.target]),
            ]
        }
    }
}

fn fstab_entry(mount: &GuestMount) -> [String; 6] {
    [
        fstab_escape(&mount.device),
        fstab_escape(&mount.target),
        mount.fstype.clone(),
        mount.options.clone(),
        "0".to_owned(),
        mount.pass.to_string(),
    ]
}

/// Writes space as `\040` and backslash as `\134`: fstab's escapes (getmntent(3)), since its
/// fields are separated by whitespace. Control characters, including tab and newline, are
/// refused before this runs.
pub(super) fn fstab_escape(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    for c in field.chars() {
        match c {
            ' ' => out.push_str("\\040"),
            '\\' => out.push_str("\\134"),
            c => out.push(c),
        }
    }
    out
}

/// `KEY=value` lines appended to `/etc/environment`.
///
/// Keys are shell identifiers, the only names every reader accepts; values may hold anything
/// but control characters, which would end the line (and so add a variable) or the file.
/// Values are written verbatim; the readers of the file (pam_env, systemd) apply their own
/// quoting rules to them, so a value is data there, never a command.
fn environment_file(input: &SeedInput) -> Result<WriteFile, SeedError> {
    let mut content = String::new();
    for (key, value) in &input.environment {
        let mut bytes = key.bytes();
        let key_ok = bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !key_ok {
            return Err(SeedError::InvalidEnvironmentKey(key.clone()));
        }
        if value.chars().any(char::is_control) {
            return Err(SeedError::InvalidEnvironmentValue(key.clone()));
        }
        content.push_str(key);
        content.push('=');
        content.push_str(value);
        content.push('\n');
    }
    Ok(WriteFile {
        path: ENVIRONMENT_FILE,
        content,
        append: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(target: &str, kind: TargetKind) -> GuestMount {
        GuestMount {
            device: "mount0".into(),
            target: target.into(),
            fstype: "9p".into(),
            options: "trans=virtio,version=9p2000.L,nofail".into(),
            pass: 0,
            target_kind: kind,
        }
    }

    #[test]
    fn fstab_escape_writes_octal_for_space_and_backslash() {
        assert_eq!(fstab_escape("/srv/my data"), "/srv/my\\040data");
        assert_eq!(fstab_escape("/a\\b"), "/a\\134b");
        assert_eq!(fstab_escape("/plain#:;$(x)`"), "/plain#:;$(x)`");
    }

    #[test]
    fn targets_must_be_absolute_and_normalised() {
        for good in ["/data", "/a b", "/a#b", "/x/$(id)"] {
            assert!(check_target(good).is_ok(), "{good:?}");
        }
        for bad in [
            "", "data", "/", "//a", "/a/", "/a/./b", "/a/../b", "/a\nb", "/a\tb", "/a\0",
        ] {
            assert!(check_target(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn file_targets_create_their_parent_then_the_file() {
        assert_eq!(
            target_commands(&mount("/etc/nginx/nginx.conf", TargetKind::File)),
            vec![
                argv(&["mkdir", "-p", "/etc/nginx"]),
                argv(&["touch", "/etc/nginx/nginx.conf"])
            ]
        );
        assert_eq!(
            target_commands(&mount("/motd", TargetKind::File)),
            vec![argv(&["mkdir", "-p", "/"]), argv(&["touch", "/motd"])]
        );
    }

    #[test]
    fn mount_fields_that_would_break_fstab_are_refused() {
        type Edit = fn(&mut GuestMount);
        let cases: [(&str, Edit); 9] = [
            ("device", |m| m.device.clear()),
            ("device", |m| m.device = "#mount0".into()),
            ("device", |m| m.device = "mount0\n/dev/sda / ext4".into()),
            ("type", |m| m.fstype = "9p x".into()),
            ("type", |m| m.fstype.clear()),
            ("options", |m| m.options = "ro nofail".into()),
            ("options", |m| m.options = "ro,#".into()),
            ("options", |m| m.options.clear()),
            ("pass", |m| m.pass = 3),
        ];
        for (field, edit) in cases {
            let mut m = mount("/src", TargetKind::Dir);
            edit(&mut m);
            match check_mount(&m) {
                Err(SeedError::InvalidMount { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{m:?}: {other:?}"),
            }
        }
        assert!(check_mount(&mount("/src", TargetKind::Dir)).is_ok());
    }

    #[test]
    fn user_names_follow_useradd() {
        for good in ["ubuntu", "cloud-user", "_svc", "a1", &"a".repeat(32)] {
            assert!(check_user_name(good).is_ok(), "{good:?}");
        }
        for bad in [
            "",
            "root",
            "Ubuntu",
            "1a",
            "-a",
            "a b",
            "a:b",
            "a\n",
            &"a".repeat(33),
        ] {
            assert!(check_user_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn password_hashes_must_be_sha512_crypt() {
        assert!(check_password_hash("$6$salt$abc./XYZ").is_ok());
        assert!(check_password_hash("$6$rounds=5000$salt$abc").is_ok());
        for bad in [
            "",
            "secret",
            "$1$salt$abc",
            "$6$salt",
            "$6$salt$ab c",
            "$6$s$a\nb",
        ] {
            assert!(check_password_hash(bad).is_err(), "{bad:?}");
        }
    }
}
