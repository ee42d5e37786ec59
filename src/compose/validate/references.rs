//! References by name between VMs, volumes and networks: each must name something declared,
//! and `depends_on` must not go round in a circle.

use std::collections::{HashMap, HashSet};

use crate::compose::error::{At, Errors, Here};
use crate::compose::model::{Network, VolumeDecl};
use crate::compose::raw::RawFile;

/// Declared names that VMs refer to.
pub(super) struct Lookups<'a> {
    pub vms: Names<'a>,
    pub volumes: Names<'a>,
    pub networks: Names<'a>,
    /// The declared networks themselves (a fixed address is checked against the subnet).
    pub network_decls: &'a [Network],
}

impl<'a> Lookups<'a> {
    pub fn new(raw: &'a RawFile, volumes: &'a [VolumeDecl], networks: &'a [Network]) -> Self {
        Lookups {
            vms: Names::new(raw.vms.iter().map(|(n, _)| n.value.as_str())),
            volumes: Names::new(volumes.iter().map(|v| v.name.as_str())),
            networks: Names::new(networks.iter().map(|n| n.name.as_str())),
            network_decls: networks,
        }
    }
}

/// Names in compose order (for messages) and as a set (for lookups).
pub(super) struct Names<'a> {
    list: Vec<&'a str>,
    set: HashSet<&'a str>,
}

impl<'a> Names<'a> {
    fn new(names: impl Iterator<Item = &'a str>) -> Self {
        let list: Vec<&str> = names.collect();
        let set = list.iter().copied().collect();
        Names { list, set }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.set.contains(name)
    }

    /// `a, b, c`, or `none`, for "(declared: …)" hints.
    pub fn listed(&self) -> String {
        if self.list.is_empty() {
            "none".to_owned()
        } else {
            self.list.join(", ")
        }
    }
}

/// A list of references to declared names (`depends_on`, `networks`): unknown, duplicate
/// and (for `depends_on`) self references are errors.
pub(super) fn referenced_names(
    items: &[At<String>],
    here: &Here,
    declared: &Names,
    what: &str,
    itself: Option<&str>,
    errors: &mut Errors,
) -> Vec<String> {
    let mut seen = HashSet::new();
    let mut out: Vec<String> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let here = here.index(i);
        let name = item.value.as_str();
        if itself == Some(name) {
            errors.push(item.pos, &here, format!("a {what} cannot depend on itself"));
        } else if !declared.contains(name) {
            errors.push(
                item.pos,
                &here,
                format!("unknown {what} {name:?} (declared: {})", declared.listed()),
            );
        } else if !seen.insert(name) {
            errors.push(item.pos, &here, format!("{what} {name:?} is listed twice"));
        } else {
            out.push(name.to_owned());
        }
    }
    out
}

/// How far the search for `depends_on` cycles has got with one VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Visit {
    Unvisited,
    OnPath,
    Done,
}

/// `depends_on` cycles: reported once per cycle, on the dependency that closes it.
pub(super) fn check_cycles(raw: &RawFile, here: &Here, errors: &mut Errors) {
    let index: HashMap<&str, usize> = raw
        .vms
        .iter()
        .enumerate()
        .map(|(i, (n, _))| (n.value.as_str(), i))
        .collect();
    let mut visits = vec![Visit::Unvisited; raw.vms.len()];
    for start in 0..raw.vms.len() {
        if visits[start] == Visit::Unvisited {
            walk_dependencies(raw, &index, start, &mut visits, here, errors);
        }
    }
}

/// Depth first from `start`, without recursion (a long chain must not overflow the stack); a
/// dependency on a VM still on the path closes a cycle.
fn walk_dependencies(
    raw: &RawFile,
    index: &HashMap<&str, usize>,
    start: usize,
    visits: &mut [Visit],
    here: &Here,
    errors: &mut Errors,
) {
    // The path from `start`: each VM with the next of its dependencies to look at.
    let mut path = vec![(start, 0usize)];
    visits[start] = Visit::OnPath;
    while let Some(&mut (vm, ref mut next)) = path.last_mut() {
        let Some(dep) = raw.vms[vm].1.depends_on.get(*next) else {
            visits[vm] = Visit::Done;
            path.pop();
            continue;
        };
        let dep_index = *next;
        *next += 1;
        let Some(&d) = index.get(dep.value.as_str()) else {
            continue;
        };
        match visits[d] {
            Visit::Unvisited => {
                visits[d] = Visit::OnPath;
                path.push((d, 0));
            }
            Visit::OnPath if d != vm => {
                let here = here
                    .vm(&raw.vms[vm].0.value)
                    .field("depends_on")
                    .index(dep_index);
                let cycle = cycle_names(raw, &path, d);
                errors.push(dep.pos, &here, format!("depends_on has a cycle: {cycle}"));
            }
            _ => {}
        }
    }
}

/// `a -> b -> a`: the VMs of `path` from `to` on, and `to` again.
fn cycle_names(raw: &RawFile, path: &[(usize, usize)], to: usize) -> String {
    let from = path.iter().position(|(v, _)| *v == to).unwrap_or(0);
    let mut names: Vec<&str> = path[from..]
        .iter()
        .map(|(v, _)| raw.vms[*v].0.value.as_str())
        .collect();
    names.push(raw.vms[to].0.value.as_str());
    names.join(" -> ")
}
