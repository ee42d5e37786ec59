//! Phase 0: YAML text -> a tree of located nodes.
//!
//! serde-saphyr does the YAML work (anchors, `<<` merge keys, budgets); we deserialize into an
//! untyped tree whose every node carries its line and column, so that the strict phase can
//! report *all* unknown keys at once, with positions, instead of stopping at the first one as a
//! derived `deny_unknown_fields` struct would.
//!
//! Tags: YAML's core ones (`!!str`, `!!int`...) are serde-saphyr's to interpret; docker
//! compose's merge tags `!reset` and `!override` are kept on their node for the merge; any
//! other tag is refused with its position rather than read as its bare value.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{
    Budget, Location, MessageFormatter, Options, Spanned, Tagged, UserMessageFormatter,
};

/// A place in one of the project's compose files: line and column, both 1-based (0 when
/// unknown), and which file (an index into the files loaded, in `-f` order; 0 is the main
/// file), so that a node merged in from an override file is still blamed on that file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: u64,
    pub column: u64,
    pub file: usize,
}

impl Pos {
    fn at(l: &Location, file: usize) -> Self {
        Pos {
            line: l.line(),
            column: l.column(),
            file,
        }
    }
}

/// A YAML node with the position where it appears.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub pos: Pos,
    pub value: Value,
    /// For a number, its exact spelling (`01234`, `1.10`), so that text fields written as
    /// bare numbers keep what the user wrote.
    pub spelling: Option<String>,
    /// Byte range of the node's definition in the source, used to find `spelling`.
    pub(super) span: Option<(usize, usize)>,
    /// The tag written on the node, if it is not one of YAML's core tags. After [`parse`],
    /// only [`Tag::Reset`] or [`Tag::Override`], and only on a mapping's value.
    pub tag: Option<Tag>,
}

/// A tag on a node other than YAML's core ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tag {
    /// docker compose's `!reset`: the key is removed from the merged file.
    Reset,
    /// docker compose's `!override`: the value replaces the earlier files' one whole.
    Override,
    /// Any other tag, as written (`!foo`, `!!binary`; a tag through a `%TAG` handle as the
    /// parser resolved it); [`parse`] refuses it.
    Other(String),
}

/// The prefix of YAML's core tags as the parser resolves them (`!!str`).
const CORE_TAGS: &str = "tag:yaml.org,2002:";

impl Tag {
    /// The tag of a node as the parser resolved it: `None` for the core tags serde-saphyr
    /// interprets itself (and the non-specific `!`, which makes a scalar a string).
    fn read(resolved: String) -> Option<Tag> {
        let core = resolved == "!"
            || resolved.strip_prefix(CORE_TAGS).is_some_and(|name| {
                matches!(
                    name,
                    "str" | "int" | "float" | "bool" | "null" | "seq" | "map"
                )
            });
        match resolved.as_str() {
            _ if core => None,
            "!reset" => Some(Tag::Reset),
            "!override" => Some(Tag::Override),
            _ => Some(Tag::Other(match resolved.strip_prefix(CORE_TAGS) {
                Some(name) => format!("!!{name}"),
                None => resolved,
            })),
        }
    }

    /// The tag as it is usually written in the file.
    fn spelling(&self) -> &str {
        match self {
            Tag::Reset => "!reset",
            Tag::Override => "!override",
            Tag::Other(t) => t,
        }
    }
}

impl Node {
    /// A node made by merging files rather than read from one, standing for text at `pos`.
    pub fn at(pos: Pos, value: Value) -> Self {
        Node {
            pos,
            value,
            spelling: None,
            span: None,
            tag: None,
        }
    }

    /// Fills in `spelling` for every number scalar from the source text, and the file
    /// index of every position; collects the tags that are refused: any but the core ones
    /// and the merge tags, and a merge tag anywhere but on a mapping's value (`map_value`).
    fn finish(
        &mut self,
        source: &str,
        file: usize,
        map_value: bool,
        refused: &mut Vec<SyntaxError>,
    ) {
        self.pos.file = file;
        match &self.tag {
            None => {}
            Some(Tag::Reset | Tag::Override) if map_value => {}
            Some(tag) => refused.push(SyntaxError {
                pos: self.tag_pos(source, tag.spelling()),
                message: match tag {
                    Tag::Other(t) => format!(
                        "unknown YAML tag `{t}`: only docker compose's `!reset` and `!override`, \
                         and YAML's own tags (`!!str`, `!!int`...), are read"
                    ),
                    _ => format!(
                        "`{}` applies to the value of a key, not to a list item or the whole file",
                        tag.spelling()
                    ),
                },
            }),
        }
        match &mut self.value {
            Value::Int(_) | Value::Float(_) => {
                self.spelling = self
                    .span
                    .and_then(|(start, len)| source.get(start..start.checked_add(len)?))
                    .map(str::trim)
                    .filter(|t| {
                        !t.is_empty()
                            && t.chars().all(|c| {
                                c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.' | '_')
                            })
                    })
                    .map(str::to_owned);
            }
            Value::Seq(items) => items
                .iter_mut()
                .for_each(|n| n.finish(source, file, false, refused)),
            Value::Map(entries) => entries.iter_mut().for_each(|(k, n)| {
                k.pos.file = file;
                n.finish(source, file, true, refused);
            }),
            _ => {}
        }
    }

    /// Where the tag `spelling` is written: the node's position is its value's, after the
    /// tag, or on the next line for a block mapping or list. Found in the source before the
    /// node's span, with only blanks, comments and an anchor between; the node's position
    /// when it is not (a tag written through a `%TAG` handle).
    fn tag_pos(&self, source: &str, spelling: &str) -> Pos {
        let at = self.span.and_then(|(start, _)| {
            let before = source.get(..start)?;
            let at = before.rfind(spelling)?;
            let gap = &before[at + spelling.len()..];
            let only_blanks = gap.lines().all(|line| {
                let code = line.split('#').next().unwrap_or_default();
                code.split_whitespace().all(|word| word.starts_with('&'))
            });
            (only_blanks && gap.chars().next().is_none_or(char::is_whitespace)).then_some(at)
        });
        match at {
            Some(at) => {
                let before = &source[..at];
                let line_start = before.rfind('\n').map_or(0, |i| i + 1);
                Pos {
                    line: before.matches('\n').count() as u64 + 1,
                    column: before[line_start..].chars().count() as u64 + 1,
                    file: self.pos.file,
                }
            }
            None => self.pos,
        }
    }
}

/// The untyped content of a node. Mappings keep their order and their keys' positions.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Key, Node)>),
}

/// A mapping key: always text (YAML scalars `1`, `true` as keys are read as their text).
#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    pub pos: Pos,
    pub name: String,
}

impl Value {
    /// Words for "expected a string, found {kind}" messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "nothing (null)",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number with a fraction",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

/// A YAML syntax error (or a refused input such as an alias bomb), with its position.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

/// Limits that stop an alias bomb ("billion laughs") fast. A real compose file has a few
/// thousand nodes and replays an anchor once per VM that merges it; the limits leave room for
/// a thousand VMs sharing one `x-common` anchor.
fn options() -> Options {
    let mut opts = Options::default();
    let mut budget = Budget::default();
    budget.max_events = 100_000;
    budget.max_nodes = 50_000;
    budget.max_depth = 32;
    budget.max_aliases = 10_000;
    budget.max_total_scalar_bytes = 16 * 1024 * 1024;
    // The aliases-per-anchor heuristic refuses a legitimate file where every VM merges one
    // `x-common` anchor; the per-anchor and total replay limits bound the work instead.
    budget.enforce_alias_anchor_ratio = false;
    opts.budget = Some(budget);
    opts.alias_limits.max_alias_expansions_per_anchor = 1_000;
    opts.alias_limits.max_total_replayed_events = 20_000;
    opts.alias_limits.max_replay_stack_depth = 16;
    // YAML 1.2 as docker compose reads it: `n`, `y`, `on`, `no` are strings (VM `n`, user
    // `y`), and so is `1_000`.
    opts.strict_booleans = true;
    opts.underscored_numbers_as_strings = true;
    opts.with_snippet = false;
    opts
}

/// Parses one YAML document, the `file`th of the project, into a located tree. Errors: the
/// YAML one, or every refused tag.
pub fn parse(text: &str, file: usize) -> Result<Node, Vec<SyntaxError>> {
    let spanned: Spanned<Tagged<Value>> = serde_saphyr::from_str_with_options(text, options())
        .map_err(|e| {
            vec![SyntaxError {
                pos: e
                    .location()
                    .as_ref()
                    .map(|l| Pos::at(l, file))
                    .unwrap_or(Pos {
                        file,
                        ..Pos::default()
                    }),
                message: format!("invalid YAML: {}", UserMessageFormatter.format_message(&e)),
            }]
        })?;
    let mut root = Node::from(spanned);
    let mut refused = Vec::new();
    root.finish(text, file, false, &mut refused);
    if refused.is_empty() {
        Ok(root)
    } else {
        Err(refused)
    }
}

impl From<Spanned<Tagged<Value>>> for Node {
    fn from(s: Spanned<Tagged<Value>>) -> Self {
        let span = s.defined.span();
        let span = span
            .byte_offset()
            .zip(span.byte_len())
            .and_then(|(o, l)| Some((usize::try_from(o).ok()?, usize::try_from(l).ok()?)));
        let Tagged(value, tag) = s.value;
        Node {
            pos: Pos::at(&s.referenced, 0),
            value,
            spelling: None,
            span,
            tag: tag.and_then(Tag::read),
        }
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Int(v.into()))
    }
    fn visit_i128<E>(self, v: i128) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        i128::try_from(v)
            .map(Value::Int)
            .map_err(|_| E::custom("integer is too large"))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Value, E> {
        String::from_utf8(v.to_vec())
            .map(Value::Str)
            .map_err(|_| E::custom("binary data is not text"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Tagged<Value>>>()? {
            items.push(Node::from(item));
        }
        Ok(Value::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = Vec::new();
        // Keys are read as text, exactly as written (`05:` stays "05").
        while let Some(key) = map.next_key::<Spanned<Tagged<String>>>()? {
            let Tagged(name, tag) = key.value;
            if let Some(tag) = tag.and_then(Tag::read) {
                return Err(de::Error::custom(format_args!(
                    "the key `{name}` has the tag `{}`: a key takes no tag",
                    tag.spelling()
                )));
            }
            let value = map.next_value::<Spanned<Tagged<Value>>>()?;
            entries.push((
                Key {
                    pos: Pos::at(&key.referenced, 0),
                    name,
                },
                Node::from(value),
            ));
        }
        Ok(Value::Map(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(node: &Node) -> &[(Key, Node)] {
        match &node.value {
            Value::Map(m) => m,
            other => panic!("expected a map, got {other:?}"),
        }
    }

    fn get<'a>(node: &'a Node, key: &str) -> &'a Node {
        &map(node).iter().find(|(k, _)| k.name == key).unwrap().1
    }

    #[test]
    fn keeps_positions_of_keys_and_values() {
        let n = parse("vms:\n  db:\n    cpu: 2\n    image: 'x'\n", 0).unwrap();
        let db = get(get(&n, "vms"), "db");
        let (cpu_key, cpu) = &map(db)[0];
        assert_eq!((cpu_key.pos.line, cpu_key.pos.column), (3, 5));
        assert_eq!((cpu.pos.line, cpu.pos.column), (3, 10));
        assert_eq!(cpu.value, Value::Int(2));
        assert_eq!(get(db, "image").value, Value::Str("x".into()));
    }

    #[test]
    fn numbers_keep_their_spelling_and_keys_are_text() {
        let n = parse("05: 01234\nb: 1.10\nc: {<<: &x {d: 7}}\ne: *x\n", 0).unwrap();
        assert_eq!(map(&n)[0].0.name, "05");
        assert_eq!(get(&n, "05").spelling.as_deref(), Some("01234"));
        assert_eq!(get(&n, "b").spelling.as_deref(), Some("1.10"));
        assert_eq!(get(get(&n, "c"), "d").spelling.as_deref(), Some("7"));
        assert_eq!(get(get(&n, "e"), "d").spelling.as_deref(), Some("7"));
    }

    #[test]
    fn merge_keys_expand_and_explicit_keys_win() {
        let n = parse(
            "x-base: &b {cpu: 2, memory: 512}\nvm:\n  <<: *b\n  cpu: 4\n",
            0,
        )
        .unwrap();
        let vm = get(&n, "vm");
        assert_eq!(get(vm, "cpu").value, Value::Int(4));
        assert_eq!(get(vm, "memory").value, Value::Int(512));
        assert!(map(vm).iter().all(|(k, _)| k.name != "<<"));
    }

    #[test]
    fn merge_tags_stay_on_values_in_block_and_flow_style_and_core_tags_are_read() {
        let n = parse(
            "a: !reset []\nb: !override\n  # the whole mapping\n  x: 1\nc: {d: !reset null, e: !override [1]}\nf: !reset\ng: !!str 5\nh: !!int '7'\ni: ! 8\n",
            0,
        )
        .unwrap();
        assert_eq!(get(&n, "a").tag, Some(Tag::Reset));
        assert_eq!(get(&n, "a").value, Value::Seq(vec![]));
        assert_eq!(get(&n, "b").tag, Some(Tag::Override));
        assert_eq!(get(get(&n, "b"), "x").value, Value::Int(1));
        assert_eq!(get(get(&n, "c"), "d").tag, Some(Tag::Reset));
        assert_eq!(get(get(&n, "c"), "e").tag, Some(Tag::Override));
        assert_eq!(get(&n, "f").tag, Some(Tag::Reset));
        assert_eq!(get(&n, "f").value, Value::Null);
        for (key, value) in [
            ("g", Value::Str("5".into())),
            ("h", Value::Int(7)),
            ("i", Value::Str("8".into())),
        ] {
            assert_eq!(
                (get(&n, key).tag.as_ref(), &get(&n, key).value),
                (None, &value)
            );
        }
    }

    #[test]
    fn other_tags_are_refused_where_they_are_written() {
        let errors = parse(
            "vms:\n  db:\n    cpu: !foo 2\n    memory: &m !bar\n      x: 1\n    ports: [!override '1:1']\n    disk: {size: !!binary aGk=}\n",
            1,
        )
        .unwrap_err();
        let found: Vec<_> = errors
            .iter()
            .map(|e| (e.pos.file, e.pos.line, e.pos.column, e.message.as_str()))
            .collect();
        assert_eq!(
            found,
            [
                (
                    1,
                    3,
                    10,
                    "unknown YAML tag `!foo`: only docker compose's `!reset` and `!override`, and YAML's own tags (`!!str`, `!!int`...), are read"
                ),
                (
                    1,
                    4,
                    16,
                    "unknown YAML tag `!bar`: only docker compose's `!reset` and `!override`, and YAML's own tags (`!!str`, `!!int`...), are read"
                ),
                (
                    1,
                    6,
                    13,
                    "`!override` applies to the value of a key, not to a list item or the whole file"
                ),
                (
                    1,
                    7,
                    18,
                    "unknown YAML tag `!!binary`: only docker compose's `!reset` and `!override`, and YAML's own tags (`!!str`, `!!int`...), are read"
                ),
            ]
        );
        let root = parse("!reset\nvms: {}\n", 0).unwrap_err();
        assert_eq!((root[0].pos.line, root[0].pos.column), (1, 1), "{root:?}");
        let key = parse("vms:\n  !reset db: {}\n", 0).unwrap_err();
        assert_eq!(key[0].pos.line, 2, "{key:?}");
        assert!(
            key[0].message.contains("the key `db` has the tag `!reset`"),
            "{key:?}"
        );
    }

    #[test]
    fn syntax_errors_are_located() {
        let e = parse("vms:\n  a: [1, 2\n", 0).unwrap_err().remove(0);
        assert!(e.pos.line >= 2, "{e:?}");
        let dup = parse("a: 1\na: 2\n", 0).unwrap_err().remove(0);
        assert_eq!(dup.pos.line, 2, "{dup:?}");
        assert!(dup.message.contains("duplicate"), "{dup:?}");
    }

    #[test]
    fn alias_bomb_is_refused_fast() {
        let mut text = String::from("a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
        for i in 1..10 {
            let p = i - 1;
            let refs = vec![format!("*a{p}"); 9].join(", ");
            text.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
        }
        // Refused by the node budget, before expanding 9^10 nodes (no wall-clock check: the
        // budget is what bounds the time, and CI machines are busy).
        let err = parse(&text, 0).unwrap_err().remove(0);
        assert!(err.message.contains("too large or too complex"), "{err:?}");
    }

    #[test]
    fn wide_alias_bomb_is_refused_fast() {
        let items = vec!["lol"; 2000].join(", ");
        let refs = vec!["*w"; 2000].join(", ");
        let text = format!("w: &w [{items}]\nx: [{refs}]\n");
        let err = parse(&text, 0).unwrap_err().remove(0);
        assert!(err.message.contains("too large or too complex"), "{err:?}");
    }

    #[test]
    fn three_hundred_vms_can_merge_one_anchor() {
        let mut text = String::from(
            "x-common: &common\n  image: ./base.qcow2\n  cpu: 2\n  memory: 2G\n  disk: {size: 20G}\n  environment: {A: b, C: d}\n  provision: [\"echo hi\"]\nvms:\n",
        );
        for i in 0..300 {
            text.push_str(&format!("  vm{i}:\n    <<: *common\n    user: u{i}\n"));
        }
        let n = parse(&text, 0).unwrap();
        assert_eq!(map(get(&n, "vms")).len(), 300);
        assert_eq!(
            get(get(get(&n, "vms"), "vm299"), "cpu").value,
            Value::Int(2)
        );
    }
}
