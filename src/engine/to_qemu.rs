//! The compose model's words for what QEMU does, in the `qemu` layer's own types.
//!
//! `qemu` knows nothing of the compose file: the engine translates each setting here (and
//! builds the launch spec from the model in [`super::instance::launch_spec_from`]). The
//! matches are exhaustive, so a new compose value cannot reach QEMU unmapped.

use crate::compose;
use crate::qemu::Arch;
use crate::qemu::accel::AccelMode;
use crate::qemu::argv::{Protocol, SecurityModel};

impl From<compose::Accel> for AccelMode {
    fn from(accel: compose::Accel) -> Self {
        match accel {
            compose::Accel::Auto => AccelMode::Auto,
            compose::Accel::Kvm => AccelMode::Kvm,
            compose::Accel::Tcg => AccelMode::Tcg,
        }
    }
}

impl From<compose::Arch> for Arch {
    fn from(arch: compose::Arch) -> Self {
        match arch {
            compose::Arch::X86_64 => Arch::X86_64,
            compose::Arch::Aarch64 => Arch::Aarch64,
        }
    }
}

impl From<compose::Protocol> for Protocol {
    fn from(protocol: compose::Protocol) -> Self {
        match protocol {
            compose::Protocol::Tcp => Protocol::Tcp,
            compose::Protocol::Udp => Protocol::Udp,
        }
    }
}

impl From<compose::SecurityModel> for SecurityModel {
    fn from(model: compose::SecurityModel) -> Self {
        match model {
            compose::SecurityModel::Passthrough => SecurityModel::Passthrough,
            compose::SecurityModel::MappedXattr => SecurityModel::MappedXattr,
            compose::SecurityModel::MappedFile => SecurityModel::MappedFile,
            compose::SecurityModel::None => SecurityModel::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_security_model_keeps_its_spelling() {
        for model in compose::SecurityModel::ALL {
            assert_eq!(SecurityModel::from(model).as_str(), model.as_str());
        }
    }

    #[test]
    fn architectures_keep_their_spelling() {
        for arch in [compose::Arch::X86_64, compose::Arch::Aarch64] {
            assert_eq!(Arch::from(arch).as_str(), arch.as_str());
        }
        // The default the engine hands to `qemu` as the host's is the build target's.
        assert_eq!(
            Arch::from(compose::Arch::host()).as_str(),
            std::env::consts::ARCH
        );
    }

    #[test]
    fn protocols_keep_their_spelling() {
        for protocol in [compose::Protocol::Tcp, compose::Protocol::Udp] {
            assert_eq!(Protocol::from(protocol).as_str(), protocol.as_str());
        }
    }
}
