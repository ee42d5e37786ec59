//! Feeds arbitrary bytes through the whole compose pipeline (YAML, strict keys,
//! interpolation, validation). Any panic, hang or huge allocation is a bug.
#![no_main]

use std::collections::BTreeMap;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use qemu_compose::compose::{LoadOptions, parse_str};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let env = BTreeMap::new();
    let opts = LoadOptions {
        project_name: None,
        env: &env,
    };
    if let Ok(project) = parse_str(
        &text,
        Path::new("qemu-compose.yaml"),
        Path::new("/project"),
        &opts,
    ) {
        // Everything downstream walks these; make sure they hold together.
        assert_eq!(project.start_order().len(), project.vms.len());
        for vm in &project.vms {
            for mount in &vm.volumes {
                let _ = mount.to_string();
            }
        }
    }
});
