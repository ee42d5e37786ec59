//! The SSH pieces against OpenSSH and a POSIX shell: the host key files ssh-keygen reads,
//! and the remote command line as the guest's shell splits it.

use std::path::Path;

use qemu_compose::engine::ssh::{Login, args};
use qemu_compose::state::secrets::InstanceHostKey;
use qemu_compose::state::{InstancePaths, StateDir, StateError};

use crate::harness::{text, tool};

#[test]
fn the_saved_host_key_is_the_one_ssh_keygen_reads() {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::with_private_home(dir.path(), &dir.path().join("home"));
    let paths = InstancePaths::new(&state, "web", None);
    std::fs::create_dir_all(&paths.private_dir).unwrap();
    let made = InstanceHostKey::load_or_make(&paths.host_key).unwrap();
    made.save(&paths, "web").unwrap();
    let out = tool("ssh-keygen")
        .arg("-y")
        .arg("-f")
        .arg(&paths.host_key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), made.key.public);
}

#[test]
fn a_host_key_of_another_kind_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key");
    let out = tool("ssh-keygen")
        .args(["-q", "-t", "ecdsa", "-N", "", "-f"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = InstanceHostKey::load_or_make(&path).unwrap_err();
    assert!(matches!(err, StateError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");
}

/// What the remote shell makes of the command ssh sends: run it through `sh -c`.
fn remote_output(command: &[&str]) -> String {
    let login = Login {
        key: Path::new("/k"),
        user: "deb",
        port: 2222,
        vm: "web",
        known_hosts: Path::new("/state/known_hosts"),
    };
    let words: Vec<String> = command.iter().map(ToString::to_string).collect();
    let a = args(&login, &[], &words);
    let out = tool("sh")
        .arg("-c")
        .arg(a.last().unwrap())
        .output()
        .unwrap();
    text(&out.stdout)
}

#[test]
fn several_words_keep_their_boundaries_in_the_remote_shell() {
    assert_eq!(remote_output(&["printf", "%s|", "a b", "c"]), "a b|c|");
    assert_eq!(
        remote_output(&["printf", "%s|", "it's", "$HOME", "`id`", "a\\b"]),
        "it's|$HOME|`id`|a\\b|"
    );
    // One word is a command line for the remote shell, as with plain ssh.
    assert_eq!(remote_output(&["printf x | tr x y"]), "y");
}
