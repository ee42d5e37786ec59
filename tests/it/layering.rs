//! The layering rules of docs/architecture.md ("Layers", "Rules a change must keep"), checked
//! by reading the sources: the CLI reaches the library only through `engine` and `compose`;
//! `disk`, `cloudinit` and `compose` import nothing else of the crate; `qemu` imports nothing
//! of `compose`.

use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `dir`, as paths relative to the crate root.
fn rust_files(dir: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![root().join(dir)];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                found.push(path.strip_prefix(root()).unwrap().to_path_buf());
            }
        }
    }
    found.sort();
    assert!(!found.is_empty(), "no Rust files under {dir}");
    found
}

/// The line without its `//` comment (a `//` inside a string literal is kept).
fn code_of(line: &str) -> &str {
    let mut in_string = false;
    let mut escaped = false;
    let bytes = line.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if in_string => escaped = true,
            b'"' => in_string = !in_string,
            b'/' if !in_string && bytes.get(i + 1) == Some(&b'/') => return &line[..i],
            _ => {}
        }
    }
    line
}

fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// The leading identifier of `text`.
fn ident(text: &str) -> &str {
    let end = text
        .bytes()
        .position(|b| !is_ident_byte(b))
        .unwrap_or(text.len());
    &text[..end]
}

/// The first path segment of each item of a `{a::b, c, d as e}` group that starts `text`
/// (just after the `{`); a group spanning lines is read up to the end of `text`.
fn group_heads(text: &str) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 0;
    let mut item_start = true;
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => item_start = true,
            c if c.is_whitespace() => {}
            _ if item_start && depth == 0 => {
                heads.push(ident(&text[i..]).to_string());
                item_start = false;
            }
            _ => {}
        }
    }
    heads
}

/// The modules of the crate that `source` names after `prefix` (`qemu_compose::` or
/// `crate::`), with their line numbers. (`super::` chains are not followed: the layers are
/// written with `crate::` paths.)
fn modules_named(source: &str, prefix: &str) -> Vec<(usize, String)> {
    // The text without comments, whole, so that a `use` group may span lines.
    let code = source.lines().map(code_of).collect::<Vec<_>>().join("\n");
    let line_of = |at: usize| code[..at].matches('\n').count() + 1;
    let mut found = Vec::new();
    for (i, _) in code.match_indices(prefix) {
        if i > 0 && is_ident_byte(code.as_bytes()[i - 1]) {
            continue;
        }
        let after = &code[i + prefix.len()..];
        match after.strip_prefix('{') {
            Some(group) => found.extend(group_heads(group).into_iter().map(|m| (line_of(i), m))),
            None => found.push((line_of(i), ident(after).to_string())),
        }
    }
    found
}

fn read(file: &Path) -> String {
    std::fs::read_to_string(root().join(file)).unwrap()
}

#[test]
fn the_cli_uses_only_engine_and_compose() {
    let mut files = rust_files("src/cli");
    files.push(PathBuf::from("src/main.rs"));
    let mut violations = Vec::new();
    for file in &files {
        for (line, module) in modules_named(&read(file), "qemu_compose::") {
            if module != "engine" && module != "compose" {
                violations.push(format!("{}:{line}: qemu_compose::{module}", file.display()));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "the CLI may use only qemu_compose::engine and qemu_compose::compose \
         (docs/architecture.md); re-export what it needs from the engine:\n{}",
        violations.join("\n")
    );
}

/// Uses of `crate::` modules in the files of the layer `layer` that are not in `allowed`.
fn foreign_uses(layer: &str, allowed: &dyn Fn(&str) -> bool) -> Vec<String> {
    let mut violations = Vec::new();
    for file in rust_files(&format!("src/{layer}")) {
        for (line, module) in modules_named(&read(&file), "crate::") {
            if module != layer && !allowed(&module) {
                violations.push(format!("{}:{line}: crate::{module}", file.display()));
            }
        }
    }
    violations
}

#[test]
fn disk_cloudinit_and_compose_import_nothing_else_of_the_crate() {
    for layer in ["disk", "cloudinit", "compose"] {
        let violations = foreign_uses(layer, &|_| false);
        assert!(
            violations.is_empty(),
            "{layer} imports nothing else of the crate (docs/architecture.md):\n{}",
            violations.join("\n")
        );
    }
}

#[test]
fn qemu_imports_nothing_of_compose() {
    let violations = foreign_uses("qemu", &|module| module != "compose");
    assert!(
        violations.is_empty(),
        "qemu does not know the compose model (docs/architecture.md):\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_checks_see_the_forms_a_use_takes() {
    let source = "use qemu_compose::{engine::X, state::{a, b},\n    cleanup};\n\
                  // qemu_compose::image in a comment\n\
                  let s = \"//\"; qemu_compose::qemu::f();\n";
    let named: Vec<_> = modules_named(source, "qemu_compose::")
        .into_iter()
        .map(|(_, m)| m)
        .collect();
    assert_eq!(named, ["engine", "state", "cleanup", "qemu"]);
    let named: Vec<_> = modules_named(
        "use crate::{disk, state::X};\nuse crate::compose;",
        "crate::",
    )
    .into_iter()
    .collect();
    assert_eq!(
        named,
        [
            (1, "disk".to_string()),
            (1, "state".to_string()),
            (2, "compose".to_string())
        ]
    );
}

/// Results go through `output::stdout()` and messages through `output::note!`, whose write
/// failures are handled; the print macros panic on a closed stream (docs/architecture.md,
/// "Only `cli` prints").
#[test]
fn the_cli_prints_only_through_output() {
    let mut files = rust_files("src/cli");
    files.push(PathBuf::from("src/main.rs"));
    let mut violations = Vec::new();
    for file in files {
        for (n, line) in read(&file).lines().enumerate() {
            let code = code_of(line);
            for mac in ["println!", "print!", "eprintln!", "eprint!"] {
                let named = code
                    .match_indices(mac)
                    .any(|(i, _)| i == 0 || !is_ident_byte(code.as_bytes()[i - 1]));
                if named {
                    violations.push(format!("{}:{}: {mac}", file.display(), n + 1));
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "use output::stdout() or output::note!:\n{}",
        violations.join("\n")
    );
}
