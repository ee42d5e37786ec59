//! Merging the located trees of several compose files (`-f a -f b`, or the main file and
//! `qemu-compose.override.yaml`) into one, with docker compose's rules (docs/compose.md,
//! "Several files"): mappings merge by key, scalars and other lists are replaced, and a VM's
//! `environment` merges by name, `ports` by published port, `volumes` by guest path,
//! `depends_on`, `networks` and `profiles` are united and `provision` is appended to.
//! docker compose's tags change that for one key of a later file: `!reset` removes the key
//! (the earlier files' value and its own), `!override` replaces the earlier value whole.
//!
//! Merging happens before the strict reader, so the merged tree is read and validated as one
//! file, and each node keeps the position (file, line, column) where it was written.

use super::tree::{Key, Node, Tag, Value};

/// `over` merged onto `base`, both whole files, `base` already without tags (the main file
/// through [`resolve_tags`], or an earlier merge). The result has no tags left.
pub fn merge_files(base: Node, over: Node) -> Node {
    resolve_tags(merge_entries(base, over, |key, b, o| match key {
        "vms" => merge_entries(b, o, |_, b, o| merge_entries(b, o, merge_vm_key)),
        _ => merge_plain(b, o),
    }))
}

/// The tree without its tags: a key whose value is tagged `!reset` is left out, and an
/// `!override` value is kept as it is. What the tags mean in the main file, and in a later
/// one once merged (a tagged value of a later file has replaced the earlier one whole).
pub fn resolve_tags(node: Node) -> Node {
    let value = match node.value {
        Value::Map(entries) => Value::Map(
            entries
                .into_iter()
                .filter(|(_, v)| v.tag != Some(Tag::Reset))
                .map(|(k, v)| (k, resolve_tags(v)))
                .collect(),
        ),
        Value::Seq(items) => Value::Seq(items.into_iter().map(resolve_tags).collect()),
        value => value,
    };
    Node {
        value,
        tag: None,
        ..node
    }
}

/// One key of a VM.
fn merge_vm_key(key: &str, base: Node, over: Node) -> Node {
    match key {
        "environment" => match (environment_map(&base), environment_map(&over)) {
            (Some(b), Some(o)) => merge_plain(with_map(&base, b), with_map(&over, o)),
            _ => over,
        },
        "ports" => merge_keyed(base, over, published_port),
        "volumes" => merge_keyed(base, over, guest_path),
        "depends_on" | "networks" => match (&base.value, &over.value) {
            (Value::Seq(_), Value::Seq(_)) => merge_keyed(base, over, scalar_text),
            // The long form and the short one: both as `{name: {…}}`, merged by name.
            _ => merge_plain(names_to_map(base), names_to_map(over)),
        },
        "profiles" => merge_keyed(base, over, scalar_text),
        "provision" => merge_keyed(base, over, |_| None),
        _ => merge_plain(base, over),
    }
}

/// Two mappings merged key by key (`merge_key` decides for keys both have, unless the
/// override's value is tagged: it then replaces the base's, for [`resolve_tags`] to finish;
/// the base's order first, then the new keys); an override that is not a mapping replaces
/// the base, except `null` (`db:` with nothing under it), which changes nothing at any depth.
fn merge_entries(base: Node, over: Node, merge_key: impl Fn(&str, Node, Node) -> Node) -> Node {
    match (base.value, over.value) {
        (Value::Map(mut entries), Value::Map(over_entries)) => {
            for (key, value) in over_entries {
                match entries.iter().position(|(k, _)| k.name == key.name) {
                    Some(i) if value.tag.is_some() => entries[i].1 = value,
                    Some(i) => {
                        let old =
                            std::mem::replace(&mut entries[i].1, Node::at(value.pos, Value::Null));
                        entries[i].1 = merge_key(&key.name, old, value);
                    }
                    None => entries.push((key, value)),
                }
            }
            Node {
                value: Value::Map(entries),
                ..base
            }
        }
        (value, Value::Null) => Node { value, ..base },
        (_, value) => Node { value, ..over },
    }
}

/// Mappings merge by key all the way down; anything else is replaced.
fn merge_plain(base: Node, over: Node) -> Node {
    merge_entries(base, over, |_, b, o| merge_plain(b, o))
}

/// Two lists merged by a key of their items: an override item replaces the base item with
/// the same key in place, other items are appended (all of them when `key` gives `None`).
/// Anything but two lists: the override replaces.
fn merge_keyed(base: Node, over: Node, key: fn(&Node) -> Option<String>) -> Node {
    match (base.value, over.value) {
        (Value::Seq(mut items), Value::Seq(over_items)) => {
            for item in over_items {
                let same = key(&item).and_then(|k| {
                    items
                        .iter()
                        .position(|existing| key(existing).as_ref() == Some(&k))
                });
                match same {
                    Some(i) => items[i] = item,
                    None => items.push(item),
                }
            }
            Node {
                value: Value::Seq(items),
                ..base
            }
        }
        (_, value) => Node { value, ..over },
    }
}

/// A number or string as text.
fn scalar_text(node: &Node) -> Option<String> {
    match &node.value {
        Value::Str(s) => Some(s.clone()),
        Value::Int(i) => Some(node.spelling.clone().unwrap_or_else(|| i.to_string())),
        _ => None,
    }
}

/// The host side of a `ports` entry (`127.0.0.1:5433:5432/tcp` -> `127.0.0.1:5433/tcp`).
fn published_port(node: &Node) -> Option<String> {
    let text = scalar_text(node)?;
    let (spec, protocol) = text.split_once('/').unwrap_or((&text, "tcp"));
    let host = spec.rsplit_once(':').map_or(spec, |(host, _)| host);
    Some(format!("{host}/{protocol}"))
}

/// The guest path of a `volumes` entry, short (`src:/target:ro`) or long (`target:`).
fn guest_path(node: &Node) -> Option<String> {
    match &node.value {
        Value::Str(s) => Some(s.split(':').nth(1).unwrap_or(s).to_owned()),
        Value::Map(entries) => entries
            .iter()
            .find(|(k, _)| k.name == "target")
            .and_then(|(_, v)| scalar_text(v)),
        _ => None,
    }
}

/// `environment` as a mapping: a list of `KEY=VALUE` becomes `{KEY: VALUE}`. `None` when a
/// list item is not of that form (the override then replaces the whole list, and the reader
/// reports the item).
fn environment_map(node: &Node) -> Option<Vec<(Key, Node)>> {
    match &node.value {
        Value::Map(entries) => Some(entries.clone()),
        Value::Seq(items) => items
            .iter()
            .map(|item| {
                let Value::Str(s) = &item.value else {
                    return None;
                };
                let (name, value) = s.split_once('=')?;
                Some((
                    Key {
                        pos: item.pos,
                        name: name.to_owned(),
                    },
                    Node::at(item.pos, Value::Str(value.to_owned())),
                ))
            })
            .collect(),
        _ => None,
    }
}

/// `depends_on` or `networks` in the long form: a list of names becomes `{name: null}` (an
/// entry without settings); anything else stays as it is.
fn names_to_map(node: Node) -> Node {
    let Value::Seq(items) = &node.value else {
        return node;
    };
    let mut entries = Vec::new();
    for item in items {
        let Value::Str(name) = &item.value else {
            return node;
        };
        entries.push((
            Key {
                pos: item.pos,
                name: name.clone(),
            },
            Node::at(item.pos, Value::Null),
        ));
    }
    with_map(&node, entries)
}

fn with_map(node: &Node, entries: Vec<(Key, Node)>) -> Node {
    Node::at(node.pos, Value::Map(entries))
}

#[cfg(test)]
mod tests {
    use super::super::tree::parse;
    use super::*;

    /// The merged tree of `base` and `over`, with every position's file index and the values,
    /// printed as flow YAML for comparison.
    fn merged(base: &str, over: &str) -> Node {
        merge_files(
            resolve_tags(parse(base, 0).unwrap()),
            parse(over, 1).unwrap(),
        )
    }

    /// Every tag left in the tree (none once merged).
    fn tags(node: &Node) -> Vec<Tag> {
        let below: Vec<Tag> = match &node.value {
            Value::Seq(items) => items.iter().flat_map(tags).collect(),
            Value::Map(entries) => entries.iter().flat_map(|(_, v)| tags(v)).collect(),
            _ => vec![],
        };
        node.tag.iter().cloned().chain(below).collect()
    }

    fn show(node: &Node) -> String {
        match &node.value {
            Value::Null => "null".into(),
            Value::Bool(b) => b.to_string(),
            Value::Int(i) => i.to_string(),
            Value::Float(f) => f.to_string(),
            Value::Str(s) => s.clone(),
            Value::Seq(items) => format!(
                "[{}]",
                items.iter().map(show).collect::<Vec<_>>().join(", ")
            ),
            Value::Map(entries) => format!(
                "{{{}}}",
                entries
                    .iter()
                    .map(|(k, v)| format!("{}: {}", k.name, show(v)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    #[test]
    fn scalars_replace_and_mappings_merge_by_key() {
        let m = merged(
            "name: a\nvms:\n  db: {image: x, cpu: 1}\n  web: {image: w}\nx-a: {p: 1, q: 2}\n",
            "name: b\nvms:\n  db: {cpu: 4, memory: 2G}\n  extra: {image: e}\nx-a: {q: 3}\n",
        );
        assert_eq!(
            show(&m),
            "{name: b, vms: {db: {image: x, cpu: 4, memory: 2G}, web: {image: w}, extra: {image: e}}, x-a: {p: 1, q: 3}}"
        );
    }

    #[test]
    fn vm_lists_merge_by_their_keys() {
        let m = merged(
            "vms:\n  db:\n    ports: ['8080:80', '127.0.0.1:5432:5432', '53:53/udp']\n    volumes: ['data:/var/lib', {source: ./a, target: /a}]\n    depends_on: [x]\n    networks: [n1]\n    provision: [one]\n    environment: [A=1, B=2]\n",
            "vms:\n  db:\n    ports: ['8080:8000', '53:5353', 9000]\n    volumes: ['./b:/a:ro', 'other:/o']\n    depends_on: [y, x]\n    networks: [n1, n2]\n    provision: [two]\n    environment: {B: 3, C: 4}\n",
        );
        assert_eq!(
            show(&m),
            "{vms: {db: {ports: [8080:8000, 127.0.0.1:5432:5432, 53:53/udp, 53:5353, 9000], volumes: [data:/var/lib, ./b:/a:ro, other:/o], depends_on: [x, y], networks: [n1, n2], provision: [one, two], environment: {A: 1, B: 3, C: 4}}}}"
        );
    }

    #[test]
    fn positions_keep_their_file() {
        let m = merged(
            "vms:\n  db:\n    image: x\n    cpu: 1\n",
            "vms:\n  db:\n    cpu: 2\n",
        );
        let Value::Map(top) = &m.value else { panic!() };
        let Value::Map(vms) = &top[0].1.value else {
            panic!()
        };
        let Value::Map(db) = &vms[0].1.value else {
            panic!()
        };
        assert_eq!((db[0].1.pos.file, db[0].1.pos.line), (0, 3));
        assert_eq!((db[1].1.pos.file, db[1].1.pos.line), (1, 3));
    }

    #[test]
    fn depends_on_merges_the_short_and_the_long_form_by_name() {
        let m = merged(
            "vms:\n  web:\n    depends_on: [db, cache]\n",
            "vms:\n  web:\n    depends_on: {db: {condition: service_healthy}, queue: {}}\n",
        );
        assert_eq!(
            show(&m),
            "{vms: {web: {depends_on: {db: {condition: service_healthy}, cache: null, queue: {}}}}}"
        );
    }

    #[test]
    fn networks_merge_the_short_and_the_long_form_by_name() {
        let m = merged(
            "vms:\n  web:\n    networks: [front, back]\n",
            "vms:\n  web:\n    networks: {back: {aliases: [api]}}\n",
        );
        assert_eq!(
            show(&m),
            "{vms: {web: {networks: {front: null, back: {aliases: [api]}}}}}"
        );
    }

    #[test]
    fn null_changes_nothing_and_a_different_type_replaces() {
        let m = merged(
            "vms:\n  db: {image: x, environment: [A=1]}\n",
            "vms:\n  db:\n",
        );
        assert_eq!(show(&m), "{vms: {db: {image: x, environment: [A=1]}}}");
        // Below the VMs too: a volume or a health check left empty keeps what the base says.
        let m = merged(
            "volumes: {data: {size: 2G}}\nvms:\n  db: {image: x, healthcheck: {test: [NONE]}}\n",
            "volumes: {data: }\nvms:\n  db: {healthcheck: }\n",
        );
        assert_eq!(
            show(&m),
            "{volumes: {data: {size: 2G}}, vms: {db: {image: x, healthcheck: {test: [NONE]}}}}"
        );
        let m = merged(
            "vms:\n  db: {image: x, environment: [A=1, broken]}\n",
            "vms:\n  db: {environment: {B: 2}}\n",
        );
        assert_eq!(show(&m), "{vms: {db: {image: x, environment: {B: 2}}}}");
    }

    #[test]
    fn reset_removes_the_key_and_override_replaces_the_value_whole() {
        let base = "vms:\n  db:\n    image: x\n    cpu: 2\n    memory: 2G\n    ports: ['80:80', '443:443']\n    volumes: ['d:/d']\n    environment: {A: 0, B: 2}\n    healthcheck: {test: [CMD, a], interval: 5s}\n  web: {image: w, depends_on: [db]}\n";
        // Block style, each tag with a value of its own type, or none.
        let m = merged(
            base,
            "vms:\n  db:\n    cpu: !reset 4\n    ports: !reset []\n    volumes: !reset\n    environment: !override {A: 1}\n    healthcheck: !override\n      test: [CMD, b]\n  web:\n    depends_on: !reset [db]\n",
        );
        assert_eq!(
            show(&m),
            "{vms: {db: {image: x, memory: 2G, environment: {A: 1}, healthcheck: {test: [CMD, b]}}, web: {image: w}}}"
        );
        assert!(tags(&m).is_empty(), "{m:?}");
        // Flow style; `!override` on a list replaces instead of merging by published port,
        // and on a whole VM drops the VM's other keys.
        let m = merged(
            base,
            "vms: {db: {ports: !override ['8080:80'], memory: !reset null, environment: !reset {}}, web: !override {image: w2}}\n",
        );
        assert_eq!(
            show(&m),
            "{vms: {db: {image: x, cpu: 2, ports: [8080:80], volumes: [d:/d], healthcheck: {test: [CMD, a], interval: 5s}}, web: {image: w2}}}"
        );
        assert!(tags(&m).is_empty(), "{m:?}");
    }

    #[test]
    fn a_later_file_sets_again_what_an_earlier_one_reset() {
        let base = parse("vms:\n  db: {image: x, ports: ['80:80']}\n", 0).unwrap();
        let reset = parse("vms:\n  db: {ports: !reset []}\n", 1).unwrap();
        let again = parse("vms:\n  db: {ports: ['81:81']}\n", 2).unwrap();
        let m = merge_files(merge_files(resolve_tags(base), reset), again);
        assert_eq!(show(&m), "{vms: {db: {image: x, ports: [81:81]}}}");
        let Value::Map(top) = &m.value else { panic!() };
        let Value::Map(vms) = &top[0].1.value else {
            panic!()
        };
        let Value::Map(db) = &vms[0].1.value else {
            panic!()
        };
        assert_eq!(db[1].1.pos.file, 2);
    }

    #[test]
    fn tags_in_the_main_file_and_in_new_keys_resolve_alone() {
        // In the main file `!reset` leaves the key out and `!override` is its value.
        let main = resolve_tags(
            parse(
                "vms:\n  db: {image: x, cpu: !reset 2, memory: !override 1G}\n",
                0,
            )
            .unwrap(),
        );
        assert_eq!(show(&main), "{vms: {db: {image: x, memory: 1G}}}");
        assert!(tags(&main).is_empty());
        // So in what a later file adds: a new VM, or a list item replacing the base's.
        let m = merged(
            "vms:\n  db: {image: x, volumes: [{source: a, target: /a, read_only: true}]}\n",
            "vms:\n  db: {volumes: [{source: b, target: /a, read_only: !reset true}]}\n  new: {image: n, cpu: !reset 1, environment: !override {A: 1}}\n",
        );
        assert_eq!(
            show(&m),
            "{vms: {db: {image: x, volumes: [{source: b, target: /a}]}, new: {image: n, environment: {A: 1}}}}"
        );
        assert!(tags(&m).is_empty());
    }
}
