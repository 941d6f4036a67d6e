//! Static checks of the actor layer's shape, read from the source: the actors import each other
//! without a cycle (back-edges go through `Recipient`s of `actors::messages`), and no state is
//! shared between actors through a mutex.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read src/actors") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

/// The actor module a file belongs to: `peer/transport.rs` and `peer/mod.rs` are `peer`.
fn module_of(actors: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(actors).expect("under src/actors");
    let first = rel.components().next().expect("non-empty path");
    first
        .as_os_str()
        .to_string_lossy()
        .trim_end_matches(".rs")
        .to_string()
}

/// The `crate::actors::<name>` modules a source text refers to (in `use` lines or paths),
/// comments excluded.
fn references(text: &str) -> BTreeSet<String> {
    let mut refs = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::actors::") {
            rest = &rest[i + "crate::actors::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                refs.insert(name);
            }
        }
    }
    refs
}

/// The actor import graph: module -> modules it refers to (itself excluded).
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let actors = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/actors");
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in rust_files(&actors) {
        let module = module_of(&actors, &file);
        if module == "mod" {
            continue; // actors/mod.rs only declares the modules
        }
        let text = std::fs::read_to_string(&file).expect("read source");
        let mut refs = references(&text);
        refs.remove(&module);
        g.entry(module).or_default().extend(refs);
    }
    g
}

/// A cycle in `g`, if there is one, as the list of modules on it.
fn find_cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|s| s == n) {
            let mut cycle = stack[i..].to_vec();
            cycle.push(n.to_string());
            return Some(cycle);
        }
        if done.contains(n) {
            return None;
        }
        stack.push(n.to_string());
        for m in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, g, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for n in g.keys() {
        if let Some(c) = visit(n, g, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

/// The actors' imports form a DAG (and the checker itself sees a cycle when there is one).
#[test]
fn actor_modules_import_each_other_without_a_cycle() {
    let g = graph();
    for expected in [
        "peer",
        "listener",
        "discovery",
        "relay",
        "script",
        "crypto",
        "messages",
    ] {
        assert!(g.contains_key(expected), "no module {expected} in {g:?}");
    }
    assert_eq!(
        find_cycle(&g),
        None,
        "import cycle among src/actors: {g:#?}"
    );
    // messages.rs is the leaf every actor talks through.
    assert!(
        g["messages"].is_empty(),
        "messages imports {:?}",
        g["messages"]
    );
    // The checker finds a cycle when one is there.
    let mut bad = g.clone();
    bad.get_mut("messages").unwrap().insert("peer".into());
    assert!(find_cycle(&bad).is_some());
}

/// Actors own their state and report it by message: no mutex in the actor layer, nor in what
/// the composition root hands every actor (`node::NodeShared`).
#[test]
fn no_mutex_is_shared_between_actors() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = rust_files(&root.join("actors"));
    files.push(root.join("node.rs"));
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read source");
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            assert!(
                !code.contains("Mutex") && !code.contains("RwLock"),
                "{}:{}: {line}",
                file.display(),
                n + 1
            );
        }
    }
}
