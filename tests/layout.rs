//! The module layout of `src/lib.rs` is true: every module is listed, lowest first, and each uses
//! (`crate::name` in its code, tests aside) only modules listed above it. So no module imports a
//! module that imports it back.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn src() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Each top-level module's uses of other top-level modules, from its files' code (comments and
/// test modules left out).
fn uses() -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![src()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let name = p.file_name().unwrap().to_str().unwrap();
            if !name.ends_with(".rs") || name == "tests.rs" {
                continue;
            }
            let rel = p.strip_prefix(src()).unwrap();
            let top = rel.components().next().unwrap().as_os_str().to_str().unwrap().trim_end_matches(".rs");
            if top == "lib" || top == "main" {
                continue;
            }
            let text = std::fs::read_to_string(&p).unwrap();
            let code = text.split("#[cfg(test)]\nmod").next().unwrap();
            for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
                for (i, _) in line.match_indices("crate::") {
                    let used: String =
                        line[i + 7..].chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
                    if !used.is_empty() && used != top {
                        out.entry(top.to_owned()).or_default().insert(used);
                    }
                }
            }
        }
    }
    out
}

#[test]
fn every_module_uses_only_modules_listed_above_it() {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    let listed: Vec<&str> =
        lib.lines().filter_map(|l| l.strip_prefix("//! - [`")).map(|l| l.split('`').next().unwrap()).collect();
    let declared: BTreeSet<&str> =
        lib.lines().filter_map(|l| l.strip_prefix("pub mod ")).map(|l| l.trim_end_matches(';')).collect();
    assert_eq!(listed.iter().copied().collect::<BTreeSet<_>>(), declared, "lib.rs's layout lists every module once");
    assert_eq!(listed.len(), declared.len(), "a module listed twice");
    let position: BTreeMap<&str, usize> = listed.iter().enumerate().map(|(i, m)| (*m, i)).collect();
    let mut wrong = Vec::new();
    for (module, used) in uses() {
        for u in used.iter().filter(|u| declared.contains(u.as_str())) {
            if position[u.as_str()] > position[module.as_str()] {
                wrong.push(format!("{module} uses {u}, listed below it"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
