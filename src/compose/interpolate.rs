//! `${VAR}` interpolation and `.env` files, as docker compose does them.
//!
//! Interpolation runs on each string scalar of the parsed tree (never on keys), so an error
//! points at the scalar that holds the bad reference.

use std::collections::BTreeMap;
use std::fmt;

/// Where variables come from. Injectable so that tests never touch the process environment.
pub trait Env: fmt::Debug {
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Env for BTreeMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// The environment first, then the project's `.env` file: the environment wins.
#[derive(Debug)]
pub struct Layered<'a> {
    pub first: &'a dyn Env,
    pub then: &'a dyn Env,
}

impl Env for Layered<'_> {
    fn var(&self, name: &str) -> Option<String> {
        self.first.var(name).or_else(|| self.then.var(name))
    }
}

/// Expands `$$`, `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?message}`,
/// `${VAR?message}`, `${VAR:+replacement}` and `${VAR+replacement}`. Defaults and messages may
/// themselves contain references. An unset `${VAR}` becomes the empty string, as in docker,
/// and its name is added to `unset` so the caller can warn about it.
pub fn interpolate(text: &str, env: &dyn Env, unset: &mut Vec<String>) -> Result<String, String> {
    interpolate_nested(text, env, 0, unset)
}

/// How deeply defaults may nest references (`${A:-${B:-${C}}}`); bounds the recursion.
const MAX_NESTING: usize = 16;

fn interpolate_nested(
    text: &str,
    env: &dyn Env,
    depth: usize,
    unset: &mut Vec<String>,
) -> Result<String, String> {
    if depth > MAX_NESTING {
        return Err(format!("references nested more than {MAX_NESTING} deep"));
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body_and_tail) = after.strip_prefix('{') {
            let end = closing_brace(body_and_tail).ok_or_else(|| {
                format!("\"${{\" without a closing \"}}\" in {text:?} (write $$ for a literal $)")
            })?;
            out.push_str(&expand_braced(&body_and_tail[..end], env, depth, unset)?);
            rest = &body_and_tail[end + 1..];
        } else {
            let len = name_len(after);
            if len == 0 {
                return Err(format!(
                    "a \"$\" that starts no variable in {text:?} (write $$ for a literal $)"
                ));
            }
            let name = &after[..len];
            match env.var(name) {
                Some(value) => out.push_str(&value),
                None => unset.push(name.to_owned()),
            }
            rest = &after[len..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Length of the variable name at the start of `s` (`[A-Za-z_][A-Za-z0-9_]*`), 0 if none.
fn name_len(s: &str) -> usize {
    let mut chars = s.char_indices();
    match chars.next() {
        Some((_, c)) if c.is_ascii_alphabetic() || c == '_' => {}
        _ => return 0,
    }
    chars
        .find(|(_, c)| !(c.is_ascii_alphanumeric() || *c == '_'))
        .map_or(s.len(), |(i, _)| i)
}

/// Index of the `}` closing a `${`, counting nested `${ … }` in defaults.
fn closing_brace(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'$' if bytes.get(i + 1) == Some(&b'$') => i += 1,
            b'$' if bytes.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 1;
            }
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

fn expand_braced(
    body: &str,
    env: &dyn Env,
    depth: usize,
    unset: &mut Vec<String>,
) -> Result<String, String> {
    let len = name_len(body);
    if len == 0 {
        return Err(format!(
            "\"${{{body}}}\" does not start with a variable name"
        ));
    }
    let (name, op) = body.split_at(len);
    let value = env.var(name);
    let set_nonempty = value.as_deref().is_some_and(|v| !v.is_empty());
    let (test_empty, op) = match op.strip_prefix(':') {
        Some(rest) => (true, rest),
        None => (false, op),
    };
    // Whether the variable counts as "set" for this operator: `:` also treats empty as unset.
    let is_set = if test_empty {
        set_nonempty
    } else {
        value.is_some()
    };
    let mut chars = op.chars();
    match (chars.next(), chars.as_str()) {
        (None, _) if !test_empty => Ok(value.unwrap_or_else(|| {
            unset.push(name.to_owned());
            String::new()
        })),
        (Some('-'), default) => {
            if is_set {
                Ok(value.unwrap_or_default())
            } else {
                interpolate_nested(default, env, depth + 1, unset)
            }
        }
        (Some('?'), message) => {
            if is_set {
                Ok(value.unwrap_or_default())
            } else {
                let message = interpolate_nested(message, env, depth + 1, unset)?;
                let why = if message.is_empty() {
                    "is required".to_owned()
                } else {
                    message
                };
                Err(format!("variable {name} is not set: {why}"))
            }
        }
        (Some('+'), replacement) => {
            if is_set {
                interpolate_nested(replacement, env, depth + 1, unset)
            } else {
                Ok(String::new())
            }
        }
        _ => Err(format!(
            "\"${{{body}}}\" is not a valid reference (use ${{VAR}}, ${{VAR:-default}} or ${{VAR:?message}})"
        )),
    }
}

/// Parses a `.env` file: `KEY=value` lines, `#` comments, blank lines, an optional `export `
/// prefix, values optionally in single quotes (literal) or double quotes (`\n`, `\"`, `\\`
/// escapes). Unquoted values lose a trailing ` # comment` and surrounding blanks.
/// Errors carry the 1-based line number.
pub fn parse_dotenv(text: &str) -> Result<BTreeMap<String, String>, (u64, String)> {
    let mut vars = BTreeMap::new();
    // A byte-order mark, as some Windows editors write, is not part of the first key.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (index, raw_line) in text.lines().enumerate() {
        let line_no = u64::try_from(index).unwrap_or(u64::MAX).saturating_add(1);
        let line = raw_line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line).trim_start();
        let Some((key, value)) = line.split_once('=') else {
            return Err((line_no, format!("expected KEY=value, found {line:?}")));
        };
        let key = key.trim();
        if name_len(key) != key.len() {
            return Err((line_no, format!("{key:?} is not a valid variable name")));
        }
        let value = dotenv_value(value.trim()).map_err(|why| (line_no, why))?;
        vars.insert(key.to_owned(), value);
    }
    Ok(vars)
}

fn dotenv_value(v: &str) -> Result<String, String> {
    if let Some(inner) = v.strip_prefix('\'') {
        let end = inner
            .find('\'')
            .ok_or_else(|| "single quote is not closed".to_owned())?;
        trailing_is_comment(&inner[end + 1..])?;
        return Ok(inner[..end].to_owned());
    }
    if let Some(inner) = v.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = inner.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    trailing_is_comment(&inner[i + 1..])?;
                    return Ok(out);
                }
                '\\' => match chars.next() {
                    Some((_, 'n')) => out.push('\n'),
                    Some((_, 't')) => out.push('\t'),
                    Some((_, other)) => out.push(other),
                    None => break,
                },
                other => out.push(other),
            }
        }
        return Err("double quote is not closed".to_owned());
    }
    let value = match v.find(" #") {
        Some(at) => &v[..at],
        None => v,
    };
    Ok(value.trim_end().to_owned())
}

fn trailing_is_comment(rest: &str) -> Result<(), String> {
    let rest = rest.trim();
    if rest.is_empty() || rest.starts_with('#') {
        Ok(())
    } else {
        Err(format!("unexpected text after the closing quote: {rest:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> BTreeMap<String, String> {
        [("A", "alpha"), ("EMPTY", ""), ("N", "2")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    fn i(s: &str) -> Result<String, String> {
        interpolate(s, &env(), &mut Vec::new())
    }

    #[test]
    fn plain_references_to_unset_variables_are_noted() {
        let mut unset = Vec::new();
        let out = interpolate(
            "$NOPE-${ALSO}-${DEF:-x}-${EMPTY}-${Q:+y}",
            &env(),
            &mut unset,
        );
        assert_eq!(out.unwrap(), "--x--");
        assert_eq!(unset, ["NOPE", "ALSO"]);
    }

    #[test]
    fn expands_every_form() {
        assert_eq!(i("plain").unwrap(), "plain");
        assert_eq!(i("${A}/$A/x$N-y").unwrap(), "alpha/alpha/x2-y");
        assert_eq!(i("$$A costs $$5").unwrap(), "$A costs $5");
        assert_eq!(i("${MISSING}").unwrap(), "");
        assert_eq!(i("${MISSING:-dflt}").unwrap(), "dflt");
        assert_eq!(i("${EMPTY:-dflt}").unwrap(), "dflt");
        assert_eq!(i("${EMPTY-dflt}").unwrap(), "");
        assert_eq!(i("${MISSING-dflt}").unwrap(), "dflt");
        assert_eq!(i("${A:-dflt}").unwrap(), "alpha");
        assert_eq!(i("${MISSING:-${A}-x}").unwrap(), "alpha-x");
        assert_eq!(i("${A:?boom}").unwrap(), "alpha");
        assert_eq!(i("${EMPTY?boom}").unwrap(), "");
        assert_eq!(i("${A:+set}|${MISSING:+set}").unwrap(), "set|");
        assert_eq!(i("${MISSING:-a}}").unwrap(), "a}");
    }

    #[test]
    fn reports_errors() {
        assert_eq!(
            i("${MISSING:?set it in .env}").unwrap_err(),
            "variable MISSING is not set: set it in .env"
        );
        assert_eq!(
            i("${EMPTY:?}").unwrap_err(),
            "variable EMPTY is not set: is required"
        );
        assert_eq!(
            i("${MISSING?no}").unwrap_err(),
            "variable MISSING is not set: no"
        );
        assert!(i("${A").unwrap_err().contains("without a closing"));
        assert!(i("cost: 5$").unwrap_err().contains("write $$"));
        assert!(i("$(date)").unwrap_err().contains("write $$"));
        assert!(i("${1A}").unwrap_err().contains("variable name"));
        assert!(i("${A:x}").unwrap_err().contains("not a valid reference"));
        assert!(i("${}").is_err());
        let deep = format!("{}x{}", "${M:-".repeat(40), "}".repeat(40));
        assert!(i(&deep).unwrap_err().contains("nested"));
    }

    #[test]
    fn a_byte_order_mark_does_not_join_the_first_key() {
        let vars = parse_dotenv("\u{feff}MEM=2048\nCPUS=2\n").unwrap();
        assert_eq!(vars.get("MEM").map(String::as_str), Some("2048"));
    }

    #[test]
    fn dotenv_syntax() {
        let vars = parse_dotenv(
            "# comment\n\nA=1\nexport B = two words \nC='lit $X # not comment'\nD=\"q\\n\\\"x\\\"\" # c\nE=v # trailing\nF=\n",
        )
        .unwrap();
        let get = |k: &str| vars.get(k).map(String::as_str);
        assert_eq!(get("A"), Some("1"));
        assert_eq!(get("B"), Some("two words"));
        assert_eq!(get("C"), Some("lit $X # not comment"));
        assert_eq!(get("D"), Some("q\n\"x\""));
        assert_eq!(get("E"), Some("v"));
        assert_eq!(get("F"), Some(""));
        assert_eq!(
            parse_dotenv("A=1\nnot a pair\n").unwrap_err().0,
            2,
            "line of the bad entry"
        );
        assert!(parse_dotenv("1X=2").unwrap_err().1.contains("not a valid"));
        assert!(
            parse_dotenv("A='open")
                .unwrap_err()
                .1
                .contains("not closed")
        );
        assert!(parse_dotenv("A=\"x\" y").unwrap_err().1.contains("after"));
    }

    #[test]
    fn layered_env_prefers_the_first() {
        let first = env();
        let then: BTreeMap<String, String> = [
            ("A".to_owned(), "dotenv".to_owned()),
            ("Z".to_owned(), "z".to_owned()),
        ]
        .into();
        let layered = Layered {
            first: &first,
            then: &then,
        };
        assert_eq!(layered.var("A").as_deref(), Some("alpha"));
        assert_eq!(layered.var("Z").as_deref(), Some("z"));
        assert_eq!(layered.var("NONE"), None);
    }
}
