//! `healthcheck:` and the `condition:` of `depends_on` in the long form, as docker compose
//! writes them (docs/compose.md, "Health checks").

use crate::compose::error::{At, Errors, Here};
use crate::compose::model::{HealthCheck, HealthTest, Vm};
use crate::compose::raw::{RawFile, RawHealthcheck, RawTest, RawVm};

use super::vm::parse_duration_ms;

/// docker's defaults.
const DEFAULT_INTERVAL_MS: u64 = 30_000;
const DEFAULT_TIMEOUT_MS: u64 = 30_000;
const DEFAULT_RETRIES: u32 = 3;
const DEFAULT_START_INTERVAL_MS: u64 = 5_000;
/// More retries than this is a typo.
const MAX_RETRIES: i128 = 1000;

/// The check, or `None` when there is none to run (`disable: true`, `test: ["NONE"]`).
pub(super) fn healthcheck(
    raw: &RawHealthcheck,
    here: &Here,
    errors: &mut Errors,
) -> Option<HealthCheck> {
    let field = |key: &str| here.field(key);
    let duration = |value: &Option<At<String>>,
                    key: &str,
                    default: u64,
                    zero_ok: bool,
                    errors: &mut Errors| {
        let Some(text) = value else {
            return default;
        };
        match parse_duration_ms(text.value.trim()) {
            Ok(0) if !zero_ok => {
                errors.push(
                    text.pos,
                    &field(key),
                    format!("{key} must be longer than 0"),
                );
                default
            }
            Ok(ms) => ms,
            Err(why) => {
                errors.push(
                    text.pos,
                    &field(key),
                    format!("{key} {:?} {why}", text.value),
                );
                default
            }
        }
    };
    let interval_ms = duration(
        &raw.interval,
        "interval",
        DEFAULT_INTERVAL_MS,
        false,
        errors,
    );
    let timeout_ms = duration(&raw.timeout, "timeout", DEFAULT_TIMEOUT_MS, false, errors);
    let start_period_ms = duration(&raw.start_period, "start_period", 0, true, errors);
    let start_interval_ms = duration(
        &raw.start_interval,
        "start_interval",
        DEFAULT_START_INTERVAL_MS,
        false,
        errors,
    );
    let retries = match &raw.retries {
        None => DEFAULT_RETRIES,
        Some(r) if (1..=MAX_RETRIES).contains(&r.value) => r.value as u32,
        Some(r) => {
            errors.push(
                r.pos,
                &field("retries"),
                format!("retries must be from 1 to {MAX_RETRIES}, not {}", r.value),
            );
            DEFAULT_RETRIES
        }
    };
    if raw.disable.as_ref().is_some_and(|d| d.value) {
        return None;
    }
    let Some(test) = &raw.test else {
        errors.push(
            raw.pos,
            here,
            "`test:` is required (e.g. [\"CMD\", \"pg_isready\"]), or `disable: true`",
        );
        return None;
    };
    let here = field("test");
    let test = match &test.value {
        RawTest::Shell(line) if line.trim().is_empty() => {
            errors.push(test.pos, &here, "the command is empty");
            return None;
        }
        RawTest::Shell(line) => HealthTest::CmdShell(line.clone()),
        RawTest::List(words) => match words.split_first() {
            Some((first, [])) if first == "NONE" => return None,
            Some((first, rest)) if first == "CMD" && !rest.is_empty() => {
                HealthTest::Cmd(rest.to_vec())
            }
            Some((first, [line])) if first == "CMD-SHELL" && !line.trim().is_empty() => {
                HealthTest::CmdShell(line.clone())
            }
            Some((first, _)) if first == "CMD" => {
                errors.push(
                    test.pos,
                    &here,
                    "[\"CMD\"] needs the program to run after it",
                );
                return None;
            }
            Some((first, _)) if first == "CMD-SHELL" => {
                errors.push(
                    test.pos,
                    &here,
                    "[\"CMD-SHELL\", …] takes exactly one command line after it",
                );
                return None;
            }
            Some((first, _)) if first == "NONE" => {
                errors.push(test.pos, &here, "[\"NONE\"] takes nothing after it");
                return None;
            }
            _ => {
                errors.push(
                    test.pos,
                    &here,
                    "a list test starts with \"CMD\", \"CMD-SHELL\" or \"NONE\"",
                );
                return None;
            }
        },
    };
    Some(HealthCheck {
        test,
        interval_ms,
        timeout_ms,
        retries,
        start_period_ms,
        start_interval_ms,
    })
}

/// The `depends_on` names whose condition is `service_healthy`; other conditions than
/// `service_started` are errors.
pub(super) fn healthy_dependencies(raw: &RawVm, here: &Here, errors: &mut Errors) -> Vec<String> {
    let mut healthy = Vec::new();
    for (name, condition) in &raw.depends_conditions {
        let here = here.field(&name.value).field("condition");
        match condition.value.as_str() {
            "service_healthy" => healthy.push(name.value.clone()),
            "service_started" => {}
            "service_completed_successfully" => errors.push(
                condition.pos,
                &here,
                "service_completed_successfully is not supported: a VM does not exit when its work is done (use service_healthy with a health check that tells)",
            ),
            other => errors.push(
                condition.pos,
                &here,
                format!("unknown condition {other:?} (service_started or service_healthy)"),
            ),
        }
    }
    healthy
}

/// `condition: service_healthy` needs the VM depended on to have a health check.
pub(super) fn check_healthy_dependencies(
    raw: &RawFile,
    vms: &[Vm],
    here: &Here,
    errors: &mut Errors,
) {
    for (name, raw_vm) in &raw.vms {
        for (dep, condition) in &raw_vm.depends_conditions {
            let unchecked = vms
                .iter()
                .find(|vm| vm.name == dep.value)
                .is_some_and(|vm| vm.healthcheck.is_none());
            if condition.value == "service_healthy" && unchecked {
                errors.push(
                    condition.pos,
                    &here
                        .vm(&name.value)
                        .field("depends_on")
                        .field(&dep.value)
                        .field("condition"),
                    format!(
                        "VM {} has no health check, so it can never be healthy (give it a `healthcheck:`, or use service_started)",
                        dep.value
                    ),
                );
            }
        }
    }
}
