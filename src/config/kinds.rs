//! Kinds of value: how a value is read from the file or a flag, what a valid one looks like,
//! and how `check` prints it. A key names its kind once, in [`super::keys`]; the file, the
//! flags and `check` all go through it, so they cannot disagree.
//!
//! Error strings say what is wrong and what would be valid; the caller adds where.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::ops::Range;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// A value as written: in the file, with its position, or as the text of a flag.
#[derive(Clone, Copy)]
pub(crate) enum Raw<'a> {
    File(&'a Spanned<DeValue<'a>>),
    Flag(&'a str),
}

/// What a [`Raw`] holds, looked at without copying.
pub(crate) enum Shape<'a> {
    Text(&'a str),
    Int(i64),
    /// An integer too large for i64, as written.
    BigInt(&'a str),
    Bool(bool),
    List(&'a [Spanned<DeValue<'a>>]),
    Table(&'a DeTable<'a>),
    /// A float or a datetime: never valid here; its description.
    Other(String),
}

impl<'a> Raw<'a> {
    pub fn shape(self) -> Shape<'a> {
        let value = match self {
            Raw::Flag(s) => return Shape::Text(s),
            Raw::File(v) => v.get_ref(),
        };
        match value {
            DeValue::String(s) => Shape::Text(s),
            DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
                Ok(n) => Shape::Int(n),
                Err(_) => Shape::BigInt(i.as_str()),
            },
            DeValue::Boolean(b) => Shape::Bool(*b),
            DeValue::Array(a) => Shape::List(a),
            DeValue::Table(t) => Shape::Table(t),
            DeValue::Float(f) => Shape::Other(format!("floating point `{f}`")),
            DeValue::Datetime(d) => Shape::Other(format!("datetime `{d}`")),
        }
    }

    pub fn span(self) -> Option<Range<usize>> {
        match self {
            Raw::File(v) => Some(v.span()),
            Raw::Flag(_) => None,
        }
    }
}

impl Shape<'_> {
    /// The value's type and, for short ones, the value: "string \"x\"", "array".
    fn describe(&self) -> String {
        match self {
            Shape::Text(s) => format!("string \"{s}\""),
            Shape::Int(i) => format!("integer `{i}`"),
            Shape::BigInt(s) => format!("integer `{s}`"),
            Shape::Bool(b) => format!("boolean `{b}`"),
            Shape::List(_) => "array".into(),
            Shape::Table(_) => "table".into(),
            Shape::Other(what) => what.clone(),
        }
    }
}

/// Why a value was refused; `span` narrows the place to an element or a table key, `sub`
/// names it after the key (`env.PORT`).
#[derive(Debug)]
pub(crate) struct Invalid {
    pub message: String,
    pub span: Option<Range<usize>>,
    pub sub: Option<String>,
}

impl From<String> for Invalid {
    fn from(message: String) -> Self {
        Invalid {
            message,
            span: None,
            sub: None,
        }
    }
}

impl Invalid {
    /// Placed at `raw` unless already placed more precisely.
    fn at(mut self, raw: Raw) -> Self {
        self.span = self.span.or(raw.span());
        self
    }
}

pub(crate) fn wrong_type(shape: &Shape, expected: &str) -> Invalid {
    format!("invalid type: {}, expected {expected}", shape.describe()).into()
}

/// A kind of value a key holds.
pub(crate) trait Kind {
    /// What the [`super::Config`] field holds.
    type Field;
    fn parse(raw: Raw) -> Result<Self::Field, Invalid>;
    /// The value as TOML, for `check`; None: unset, not printed.
    fn show(value: &Self::Field) -> Option<String>;
    /// One `--flag VALUE`; it replaces the value unless the kind says otherwise.
    fn flag(field: &mut Self::Field, text: &str) -> Result<(), Invalid> {
        *field = Self::parse(Raw::Flag(text))?;
        Ok(())
    }
    /// The flag may stand alone, meaning true: `--cpu-affinity`.
    const SWITCH: bool = false;
    /// Each flag adds one value; the first replaces what the file said.
    const REPEATS: bool = false;
    /// Printed by `check` as a `[table]` after the plain keys.
    const TABLE: bool = false;
    /// Emptied before the first of repeated flags.
    fn clear(_field: &mut Self::Field) {}
}

/// A single value, written as text (flags, TOML strings) and maybe as a TOML integer or boolean.
pub(crate) trait Scalar {
    type Field;
    /// What a valid value looks like, for "expected …".
    const EXPECTED: &'static str;
    fn from_text(s: &str) -> Result<Self::Field, String>;
    /// A number written as text (as on the command line), taken as if written as an integer.
    fn from_number_text(s: &str) -> Result<Self::Field, String> {
        match s.trim().parse::<i64>() {
            Ok(n) => Self::from_int(n),
            Err(_) => Err(format!(
                "invalid value \"{s}\": expected {}",
                Self::EXPECTED
            )),
        }
    }
    fn from_int(i: i64) -> Result<Self::Field, String> {
        Err(format!("invalid value {i}: expected {}", Self::EXPECTED))
    }
    fn from_bool(b: bool) -> Result<Self::Field, String> {
        Err(format!("invalid value {b}: expected {}", Self::EXPECTED))
    }
    fn show(value: &Self::Field) -> Option<String>;
    const SWITCH: bool = false;
}

impl<S: Scalar> Kind for S {
    type Field = S::Field;
    fn parse(raw: Raw) -> Result<S::Field, Invalid> {
        let shape = raw.shape();
        let parsed = match &shape {
            Shape::Text(s) => S::from_text(s),
            Shape::Int(i) => S::from_int(*i),
            Shape::BigInt(s) => Err(format!("invalid value {s}: expected {}", S::EXPECTED)),
            Shape::Bool(b) => S::from_bool(*b),
            _ => return Err(wrong_type(&shape, S::EXPECTED)),
        };
        parsed.map_err(Invalid::from)
    }
    fn show(value: &S::Field) -> Option<String> {
        S::show(value)
    }
    const SWITCH: bool = S::SWITCH;
}

/// A TOML string literal.
pub(crate) fn quote(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// A value that may be unset (the default); setting it sets it.
pub(crate) struct Opt<K>(PhantomData<K>);

impl<K: Scalar> Kind for Opt<K> {
    type Field = Option<K::Field>;
    fn parse(raw: Raw) -> Result<Self::Field, Invalid> {
        <K as Kind>::parse(raw).map(Some)
    }
    fn show(value: &Self::Field) -> Option<String> {
        value.as_ref().and_then(K::show)
    }
}

/// A list: a TOML array in the file. On the command line either one flag per value
/// ([`Each`]) or one comma-separated flag ([`Commas`]).
fn list<K: Scalar>(raw: Raw, expected: &str) -> Result<Vec<K::Field>, Invalid> {
    match raw.shape() {
        Shape::List(items) => items
            .iter()
            .map(|item| <K as Kind>::parse(Raw::File(item)).map_err(|e| e.at(Raw::File(item))))
            .collect(),
        shape => Err(wrong_type(&shape, expected)),
    }
}

fn show_list<K: Scalar>(items: &[K::Field]) -> Option<String> {
    let shown: Vec<String> = items.iter().filter_map(K::show).collect();
    Some(format!("[{}]", shown.join(", ")))
}

/// A list whose flag is repeated, one value each: `--listen A --listen B`.
pub(crate) struct Each<K>(PhantomData<K>);

impl<K: Scalar> Kind for Each<K> {
    type Field = Vec<K::Field>;
    fn parse(raw: Raw) -> Result<Self::Field, Invalid> {
        list::<K>(raw, &format!("a list of {}", K::EXPECTED))
    }
    fn show(items: &Self::Field) -> Option<String> {
        show_list::<K>(items)
    }
    fn flag(field: &mut Self::Field, text: &str) -> Result<(), Invalid> {
        field.push(<K as Kind>::parse(Raw::Flag(text))?);
        Ok(())
    }
    const REPEATS: bool = true;
    fn clear(field: &mut Self::Field) {
        field.clear();
    }
}

/// A list whose flag holds every value, comma-separated: `--supplementary-groups a,b`.
pub(crate) struct Commas<K>(PhantomData<K>);

impl<K: Scalar> Kind for Commas<K> {
    type Field = Vec<K::Field>;
    fn parse(raw: Raw) -> Result<Self::Field, Invalid> {
        list::<K>(raw, &format!("a list of {}", K::EXPECTED))
    }
    fn show(items: &Self::Field) -> Option<String> {
        (!items.is_empty()).then(|| show_list::<K>(items)).flatten()
    }
    fn flag(field: &mut Self::Field, text: &str) -> Result<(), Invalid> {
        *field = text
            .split(',')
            .filter(|v| !v.is_empty())
            .map(|v| <K as Kind>::parse(Raw::Flag(v)))
            .collect::<Result<_, _>>()?;
        Ok(())
    }
}

/// The program and its arguments.
pub(crate) struct Argv;

impl Kind for Argv {
    type Field = Vec<String>;
    fn parse(raw: Raw) -> Result<Vec<String>, Invalid> {
        const EXPECTED: &str = "a list of strings such as [\"node\", \"server.js\"]";
        let argv = match raw.shape() {
            Shape::List(items) => items
                .iter()
                .map(|item| match Raw::File(item).shape() {
                    Shape::Text(s) => Ok(s.to_owned()),
                    shape => Err(wrong_type(&shape, "a string").at(Raw::File(item))),
                })
                .collect::<Result<Vec<_>, _>>()?,
            shape => return Err(wrong_type(&shape, EXPECTED)),
        };
        check_command(&argv)?;
        Ok(argv)
    }
    fn show(argv: &Vec<String>) -> Option<String> {
        let quoted: Vec<String> = argv.iter().map(|a| quote(a)).collect();
        (!argv.is_empty()).then(|| format!("[{}]", quoted.join(", ")))
    }
    fn flag(field: &mut Vec<String>, text: &str) -> Result<(), Invalid> {
        let argv: Vec<String> = text.split_whitespace().map(str::to_owned).collect();
        check_command(&argv)?;
        *field = argv;
        Ok(())
    }
}

fn check_command(argv: &[String]) -> Result<(), String> {
    match argv.first() {
        None => Err("the command is empty: write the program and its arguments, like [\"node\", \"server.js\"]".into()),
        Some(p) if p.is_empty() => Err("the program name is empty: write it as the first element, like [\"node\", \"server.js\"]".into()),
        Some(_) if argv.iter().any(|a| a.contains('\0')) => {
            Err("an argument contains a NUL byte, which no program can receive".into())
        }
        Some(_) => Ok(()),
    }
}

/// Environment variables for workers: a `[env]` table, or `--env NAME=VALUE` flags that add to it.
pub(crate) struct Env;

impl Kind for Env {
    type Field = BTreeMap<String, String>;
    fn parse(raw: Raw) -> Result<Self::Field, Invalid> {
        let Shape::Table(table) = raw.shape() else {
            return Err(wrong_type(
                &raw.shape(),
                "a table of variables such as { NODE_ENV = \"production\" }",
            ));
        };
        let mut env = BTreeMap::new();
        for (key, value) in table.iter() {
            let name: &str = key.get_ref();
            let placed = |message: String, span: Range<usize>| Invalid {
                message,
                span: Some(span),
                sub: Some(name.to_owned()),
            };
            let text = match Raw::File(value).shape() {
                Shape::Text(s) => s,
                shape => return Err(placed(wrong_type(&shape, "a string").message, value.span())),
            };
            check_env(name, text).map_err(|m| placed(m, key.span()))?;
            env.insert(name.to_owned(), text.to_owned());
        }
        Ok(env)
    }
    fn show(env: &Self::Field) -> Option<String> {
        let lines: Vec<String> = env
            .iter()
            .map(|(k, v)| format!("{k} = {}\n", quote(v)))
            .collect();
        (!lines.is_empty()).then(|| lines.concat())
    }
    fn flag(field: &mut Self::Field, text: &str) -> Result<(), Invalid> {
        let (k, v) = text.split_once('=').ok_or_else(|| {
            format!("invalid value \"{text}\": expected NAME=VALUE, like --env NODE_ENV=production")
        })?;
        check_env(k, v)?;
        field.insert(k.to_owned(), v.to_owned());
        Ok(())
    }
    const TABLE: bool = true;
}

fn check_env(key: &str, value: &str) -> Result<(), String> {
    let valid_key = !key.is_empty()
        && !key.starts_with(|c: char| c.is_ascii_digit())
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid_key {
        return Err(format!(
            "invalid variable name \"{key}\": use letters, digits and underscores, not starting with a digit"
        ));
    }
    if value.contains('\0') {
        return Err(format!("the value of {key} contains a NUL byte"));
    }
    if key.starts_with("LISTEN_")
        || key.starts_with("WATCHDOG_")
        || key == "NOTIFY_SOCKET"
        || key.starts_with("PREFORKD_")
    {
        return Err(format!(
            "{key} is set by preforkd for each worker and cannot be overridden"
        ));
    }
    Ok(())
}
