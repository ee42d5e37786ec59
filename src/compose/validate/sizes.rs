//! Sizes of volumes and disks, and VM memory: their defaults and the ranges they must fall in.
//! Reading `10G` and friends is [`crate::compose::size`]'s job.

use crate::compose::error::{At, Errors, Here};
use crate::compose::raw::SizeValue;
use crate::compose::size::{format_size, parse_size};

/// Default size of a named volume and of a VM's disk.
pub const DEFAULT_SIZE: u64 = 10 << 30;
/// Default VM memory.
pub const DEFAULT_MEMORY_MIB: u64 = 1024;
/// Below this a cloud image does not boot.
pub const MIN_MEMORY_MIB: u64 = 64;
/// 4 TiB, far above any host this runs on; catches `memory: 2048G` typos.
pub const MAX_MEMORY_MIB: u64 = 4 << 20;
/// Smallest VM disk; a bare `disk: {size: 10240}` (bytes) is caught here.
pub const MIN_DISK_SIZE: u64 = 1 << 20;
/// Largest VM disk (64 TiB), well inside what qcow2 addresses.
pub const MAX_DISK_SIZE: u64 = 64 << 40;

/// A size in bytes (a bare YAML integer is bytes), within `min..=max`, a multiple of 512.
pub(super) fn size_bytes(
    size: &At<SizeValue>,
    here: &Here,
    errors: &mut Errors,
    min: u64,
    max: u64,
) -> u64 {
    let parsed = match &size.value {
        SizeValue::Int(i) if *i <= 0 => Err(format!("size {i} must be a positive number of bytes")),
        SizeValue::Int(i) => u64::try_from(*i).map_err(|_| format!("size {i} is too large")),
        SizeValue::Text(t) => parse_size(t).map_err(|e| e.to_string()),
    };
    let checked = parsed.and_then(|b| {
        if b < min || b > max {
            Err(format!(
                "size {} is out of range: it must be between {} and {}",
                format_size(b),
                format_size(min),
                format_size(max)
            ))
        } else if b % 512 != 0 {
            Err(format!("size {b} must be a multiple of 512 bytes"))
        } else {
            Ok(b)
        }
    });
    checked.unwrap_or_else(|why| {
        errors.push(size.pos, here, why);
        min
    })
}

/// VM memory in MiB (a bare YAML integer is MiB), within the limits above; 1 GiB unless
/// given.
pub(super) fn memory_mib(m: Option<&At<SizeValue>>, here: &Here, errors: &mut Errors) -> u64 {
    let Some(m) = m else {
        return DEFAULT_MEMORY_MIB;
    };
    let mib = match &m.value {
        SizeValue::Int(i) if *i <= 0 => Err(format!("memory {i} must be a positive number of MiB")),
        SizeValue::Int(i) => u64::try_from(*i).map_err(|_| format!("memory {i} is too large")),
        // Interpolation gives text: `memory: ${MEM:-2048}` is 2048 MiB, as `memory: 2048`.
        SizeValue::Text(t) if is_whole_number(t) => t
            .trim()
            .parse::<u64>()
            .map_err(|_| format!("memory {t:?} is too large")),
        SizeValue::Text(t) => parse_size(t).map_err(|e| e.to_string()).and_then(|b| {
            if b % (1 << 20) == 0 {
                Ok(b >> 20)
            } else {
                Err(format!("memory {t:?} must be a whole number of MiB"))
            }
        }),
    };
    let checked = mib.and_then(|mib| {
        if mib < MIN_MEMORY_MIB {
            Err(format!(
                "memory {mib} MiB is too small: it must be at least {MIN_MEMORY_MIB} MiB"
            ))
        } else if mib > MAX_MEMORY_MIB {
            Err(format!(
                "memory {mib} MiB is too large: it must be at most {MAX_MEMORY_MIB} MiB ({})",
                format_size(MAX_MEMORY_MIB << 20)
            ))
        } else {
            Ok(mib)
        }
    });
    checked.unwrap_or_else(|why| {
        errors.push(m.pos, here, why);
        DEFAULT_MEMORY_MIB
    })
}

/// Digits only (around them, spaces): a number that arrived as text.
fn is_whole_number(text: &str) -> bool {
    let t = text.trim();
    !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit())
}
