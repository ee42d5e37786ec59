//! The names Kubernetes accepts, and the names of the objects made for a VM.

/// The longest VM name whose objects' names (`NAME-cloudinit`, the longest) stay within a
/// 63-character label.
pub const MAX_VM_NAME: usize = 63 - "-cloudinit".len();

/// The disks every VM has, which a volume's disk must not be named after.
pub const ROOT_DISK: &str = "rootdisk";
pub const CLOUDINIT_DISK: &str = "cloudinitdisk";

/// An RFC 1123 label: lowercase letters, digits and '-', at most 63, alphanumeric at both
/// ends (the names of DataVolumes, and of a VM's disks).
pub fn is_label(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// An RFC 1035 label, what a Service is named: an RFC 1123 label beginning with a letter.
pub fn is_service_name(name: &str) -> bool {
    is_label(name) && name.starts_with(|c: char| c.is_ascii_lowercase())
}

/// A volume name that can name its DataVolume and its disk in the VM.
pub fn is_volume_name(name: &str) -> bool {
    is_label(name) && name != ROOT_DISK && name != CLOUDINIT_DISK
}

/// A label value: at most 63 of `[A-Za-z0-9_.-]`, alphanumeric at both ends.
pub fn is_label_value(value: &str) -> bool {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    value.len() <= 63
        && edge(value.chars().next())
        && edge(value.chars().last())
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Why `name` cannot name a `what` in the cluster.
pub fn not_a_name(what: &str, name: &str) -> String {
    format!(
        "{what} name {name:?} cannot name a Kubernetes object (lowercase letters, digits and '-', at most 63, not beginning or ending with '-'; not {ROOT_DISK} or {CLOUDINIT_DISK})"
    )
}

/// The DataVolume of a VM's root disk.
pub fn root_disk(vm: &str) -> String {
    format!("{vm}-root")
}

/// The Service of a VM's published ports.
pub fn ports_service(vm: &str) -> String {
    format!("{vm}-ports")
}

/// The Secret holding a VM's cloud-init documents.
pub fn cloudinit_secret(vm: &str) -> String {
    format!("{vm}-cloudinit")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_names() {
        assert!(is_service_name("db"));
        assert!(is_service_name("web-1"));
        assert!(!is_service_name("1db"));
        assert!(is_label("1db"));
        assert!(!is_label("my_db"));
        assert!(!is_label("Db"));
        assert!(!is_label("db-"));
        assert!(!is_label(&"a".repeat(64)));
        assert!(!is_volume_name("rootdisk"));
        assert!(is_label_value("my_project.1"));
        assert!(!is_label_value("_x"));
        assert!(!is_label_value(""));
    }
}
