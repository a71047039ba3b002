//! The crate's layering, as `src/lib.rs` states it, holds: every `crate::` path in a module
//! of `src/` names a module of a lower layer. So no module imports one above it, and no two
//! modules import each other. Test modules (`#[cfg(test)]`) and comments are not imports.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

/// The numbered list of layers in `src/lib.rs`'s docs: module name → layer number.
fn stated_layers(lib_rs: &str) -> BTreeMap<String, usize> {
    let mut layers = BTreeMap::new();
    let mut current = None;
    for line in lib_rs.lines().filter_map(|l| l.strip_prefix("//!")) {
        let line = line.trim_start();
        if let Some((number, _)) = line.split_once(". ")
            && let Ok(n) = number.parse::<usize>()
        {
            current = Some(n);
        } else if line.is_empty()
            || !line.starts_with("[`") && !line.starts_with(char::is_lowercase)
        {
            current = None;
        }
        let Some(layer) = current else { continue };
        for name in line.split("[`").skip(1).filter_map(|s| s.split_once("`]")) {
            layers.insert(name.0.to_string(), layer);
        }
    }
    layers
}

/// The top-level modules a source file names through `crate::`, outside comments and tests.
fn imported_modules(source: &str) -> Vec<String> {
    let code = source.split("#[cfg(test)]").next().unwrap_or_default();
    let mut names = Vec::new();
    for line in code.lines() {
        let line = line.split("//").next().unwrap_or_default();
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let is_macro_path = rest[..at].ends_with('$');
            if let Some(group) = after.strip_prefix('{') {
                // `use crate::{a, b::c};`: every first segment of the group.
                let group = group.split('}').next().unwrap_or_default();
                names.extend(group.split(',').map(|s| first_segment(s.trim())));
            } else if !is_macro_path {
                names.push(first_segment(after));
            }
            rest = after;
        }
    }
    names.retain(|n| !n.is_empty());
    names
}

fn first_segment(path: &str) -> String {
    path.chars()
        .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_module_imports_only_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib_rs = fs::read_to_string(src.join("lib.rs")).unwrap();
    let layers = stated_layers(&lib_rs);
    assert!(layers.len() > 10, "lib.rs states no layer list: {layers:?}");

    for line in lib_rs.lines() {
        if let Some(name) = line.strip_prefix("pub mod ") {
            let name = name.trim_end_matches(';');
            assert!(
                layers.contains_key(name),
                "module `{name}` is in no layer of lib.rs's list"
            );
        }
    }

    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut violations = Vec::new();
    for file in files {
        let relative = file.strip_prefix(&src).unwrap();
        let top = first_segment(&relative.to_string_lossy());
        let Some(&own_layer) = layers.get(&top) else {
            continue; // lib.rs, main.rs and the binary's cli/ sit above every layer
        };
        let source = fs::read_to_string(&file).unwrap();
        for imported in imported_modules(&source) {
            if imported == top {
                continue;
            }
            match layers.get(&imported) {
                Some(&layer) if layer < own_layer => {}
                Some(&layer) => violations.push(format!(
                    "{} (layer {own_layer}) imports `{imported}` (layer {layer})",
                    relative.display()
                )),
                None => violations.push(format!(
                    "{} imports `{imported}`, which lib.rs's list does not place",
                    relative.display()
                )),
            }
        }
    }
    assert!(
        violations.is_empty(),
        "layering broken:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_checker_sees_an_upward_import() {
    let lib = "//! 1. [`low`]: a.\n//! 2. [`high`], [`other`]: b.\n//!\n//! Prose [`ignored`].\n";
    let layers = stated_layers(lib);
    assert_eq!(layers.get("low"), Some(&1));
    assert_eq!(layers.get("other"), Some(&2));
    assert_eq!(layers.get("ignored"), None);
    let source = "use crate::{high::X, low};\n// crate::commented\nfn f() { crate::other::g(); $crate::m!(); }\n#[cfg(test)]\nuse crate::tested;\n";
    assert_eq!(imported_modules(source), ["high", "low", "other"]);
}
