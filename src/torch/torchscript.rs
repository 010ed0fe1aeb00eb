//! TorchScript archives (`torch.jit.save`): the module tree of `data.pkl`, read as data.
//!
//! `data.pkl` holds the module tree: every module is a `__torch__.*` class built by NEWOBJ and
//! given a dict of all its attributes by BUILD (PYTORCH_FORMAT.md §6). Its tensors live in
//! `data/<key>`; `constants.pkl` (the tensors the code refers to as `CONSTANTS.c<i>`) has its
//! own storages in `constants/<key>`. Which attributes are parameters and which are buffers is
//! written only in the class bodies under `code/`
//! (`__parameters__ = ["weight", "bias", ]`, `__buffers__ = [...]`): those files are read as
//! text, with a size bound, and **never executed**.
//!
//! The result is an [`Object::ScriptModule`] whose state dict is what
//! `torch.jit.load(f).state_dict()` gives. Notes list the file-format version and the code
//! files, and warn where code uses an operator whose meaning changed after the archive was
//! written (integer `torch.div` before version 4, `torch.full` without a dtype before 5).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::format::zip::Archive;
use crate::torch::checkpoint::{Checkpoint, Format, OpenOptions};
use crate::torch::interpret::{interpret, StorageTable};
use crate::torch::model::{name_text, Object, OrderedDict, ScriptModule};
use crate::torch::nn_module::{join_path, Detacher};
use crate::torch::zip::{
    archive_info, byteorder_of, locate_storages, parse_record, ZipPersistentLoad,
};

/// Largest code file read (bytes, after inflating).
const MAX_CODE_FILE: u64 = 64 << 20;
/// Most code bytes read in all.
const MAX_CODE_TOTAL: u64 = 256 << 20;
/// Most code files scanned.
const MAX_CODE_FILES: usize = 100_000;
/// Most modules walked for the state dict.
const MAX_MODULES: usize = 100_000;
/// Most module attributes looked at for the state dict, in all (a module object shared many
/// times is walked each time, as torch does).
const MAX_ENTRIES: usize = 10_000_000;
/// Most items of the state dict.
const MAX_ITEMS: usize = 500_000;
/// Most warnings listed (the rest are counted).
const MAX_WARNINGS: usize = 100;
/// Most code and extra files listed in the notes (the rest are counted).
const MAX_LISTED_FILES: usize = 1000;
/// Longest file-derived name (record, method, class) kept for a message, in characters.
const MAX_NAME: usize = 200;
/// Most operator calls whose arguments are examined for version warnings.
const MAX_CHECKED_CALLS: usize = 10_000;
/// The newest file-format version torch knows (`kMaxSupportedFileFormatVersion`).
const MAX_KNOWN_VERSION: u64 = 10;

/// Opens a TorchScript archive.
pub fn open(archive: Archive, opts: &OpenOptions) -> Result<Checkpoint> {
    let prefix = archive.prefix().to_string();
    let (byteorder, bo_rec) = byteorder_of(&archive, opts)?;
    let info = archive_info(&archive, bo_rec)?;
    if archive.record("data.pkl").is_none() {
        return Err(Error::Unsupported {
            what: "a TorchScript archive without data.pkl (the torch 1.0-1.2 model.json format, or torch.package)".into(),
            location: format!("{prefix}/data.pkl"),
            hint: "load it with a torch that still reads it and save it again with torch.jit.save".into(),
        });
    }
    let p = parse_record(&archive, "data.pkl", opts)?;
    let mut table = StorageTable::default();
    let tree = interpret(
        &p,
        &format!("{prefix}/data.pkl"),
        &mut ZipPersistentLoad { dir: "data" },
        &mut table,
        &opts.interpret,
    )?;
    let c = parse_record(&archive, "constants.pkl", opts)?;
    let constants = interpret(
        &c,
        &format!("{prefix}/constants.pkl"),
        &mut ZipPersistentLoad { dir: "constants" },
        &mut table,
        &opts.interpret,
    )?;
    locate_storages(&archive, &mut table)?;

    let version = info
        .version
        .as_deref()
        .and_then(|v| v.trim().parse::<u64>().ok());
    let code = CodeIndex::read(&archive)?;
    let mut notes = Vec::new();
    match (&info.version, version) {
        (_, Some(v)) => {
            notes.push(format!("file format version {v}{}", version_meaning(v)));
            if v > MAX_KNOWN_VERSION {
                notes.push(format!(
                    "warning: file format version {v} is newer than any this reader knows ({MAX_KNOWN_VERSION}); torch.jit.load of an older torch refuses it"
                ));
            }
        }
        (Some(raw), None) => notes.push(format!("warning: unreadable file format version {raw:?}")),
        (None, None) => notes.push("warning: the archive has no version record".into()),
    }
    if let Object::Tuple(cs) = &constants {
        if !cs.is_empty() {
            notes.push(format!(
                "constants.pkl: {} constants (CONSTANTS.c0 ...)",
                cs.len()
            ));
        }
    }
    notes.push(format!(
        "code files ({}; listed, never executed):",
        code.files.len()
    ));
    for f in code.files.iter().take(MAX_LISTED_FILES) {
        notes.push(format!("  {} ({} bytes)", short(&f.name), f.size));
    }
    if code.files.len() > MAX_LISTED_FILES {
        notes.push(format!(
            "  ... and {} more code files",
            code.files.len() - MAX_LISTED_FILES
        ));
    }
    let extra_records = archive
        .records()
        .iter()
        .filter(|r| r.name.starts_with("extra/"));
    let n_extra = extra_records.clone().count();
    let mut extra: Vec<String> = extra_records
        .take(MAX_LISTED_FILES)
        .map(|r| format!("{} ({} bytes)", short(&r.name), r.size))
        .collect();
    if n_extra > MAX_LISTED_FILES {
        extra.push(format!("... and {} more", n_extra - MAX_LISTED_FILES));
    }
    if !extra.is_empty() {
        notes.push(format!("extra files: {}", extra.join(", ")));
    }
    if let Some(v) = version {
        notes.extend(code.version_warnings(v));
    }

    let class = match &tree {
        Object::Opaque(op) => op.class.clone(),
        other => {
            return Err(Error::invalid(
                format!(
                    "data.pkl holds a {}, expected a __torch__ module object",
                    crate::torch::interpret::type_name(other)
                ),
                format!("{prefix}/data.pkl"),
            ))
        }
    };
    let (state_dict, metadata) = state_dict(&tree, &code, &mut notes);
    let root = Object::ScriptModule(Arc::new(ScriptModule {
        class,
        state_dict,
        metadata: Some(metadata),
    }));
    let records = archive.listing();
    let mut ckpt = Checkpoint::assemble(
        Format::TorchScript,
        root,
        table,
        byteorder,
        p.protocol,
        info,
        records,
        archive.source().clone(),
    )?;
    ckpt.notes = notes;
    Ok(ckpt)
}

/// `s` cut to [`MAX_NAME`] characters (`...` marks the cut), for messages.
fn short(s: &str) -> std::borrow::Cow<'_, str> {
    match s.char_indices().nth(MAX_NAME) {
        None => s.into(),
        Some((end, _)) => format!("{}...", &s[..end]).into(),
    }
}

/// What each file-format version introduced (caffe2/serialize/versions.h).
fn version_meaning(v: u64) -> &'static str {
    match v {
        1 => " (initial)",
        2 => " (op_version_set removed)",
        3 => " (container type tags; what torch.jit.save writes when no newer operator is used)",
        4 => " (4: code uses torch.div with its current meaning)",
        5 => " (5: code uses torch.full with its current dtype inference)",
        6 => " (6: .data/version record)",
        7 => " (7: new upgraders)",
        8 => " (8: linspace change)",
        9 => " (9: logspace change)",
        10 => " (10: gelu approximate)",
        _ => "",
    }
}

// ---------------------------------------------------------------------------------------------
// code/: class bodies (parameters, buffers, base) and operator uses, read as text
// ---------------------------------------------------------------------------------------------

/// What a class body in `code/` says.
#[derive(Debug, Clone, Default)]
struct ClassInfo {
    /// `class X(Module):`.
    is_module: bool,
    /// `__parameters__`, when the body has it.
    parameters: Option<HashSet<String>>,
    /// `__buffers__`, when the body has it.
    buffers: Option<HashSet<String>>,
}

/// One code file.
#[derive(Debug, Clone)]
struct CodeFile {
    /// Record name (`code/__torch__.py`).
    name: String,
    /// Size once inflated.
    size: u64,
    /// Its text (None when it was too large or not UTF-8).
    text: Option<String>,
}

#[derive(Debug, Default)]
struct CodeIndex {
    files: Vec<CodeFile>,
    /// Classes by qualified name (`__torch__.torch.nn.modules.linear.Linear`).
    classes: HashMap<String, ClassInfo>,
}

impl CodeIndex {
    fn read(archive: &Archive) -> Result<CodeIndex> {
        let mut idx = CodeIndex::default();
        let mut total: u64 = 0;
        for rec in archive.records() {
            if !rec.name.starts_with("code/") || !rec.name.ends_with(".py") {
                continue;
            }
            if idx.files.len() >= MAX_CODE_FILES {
                break;
            }
            let readable =
                rec.size <= MAX_CODE_FILE && total.saturating_add(rec.size) <= MAX_CODE_TOTAL;
            let text = if readable {
                let bytes = archive.read_bounded(rec, MAX_CODE_FILE)?;
                total += bytes.len() as u64;
                String::from_utf8(bytes.into_owned()).ok()
            } else {
                None
            };
            if let Some(t) = &text {
                // code/__torch__/a/b.py holds the classes of module __torch__.a.b.
                let module =
                    rec.name["code/".len()..rec.name.len() - ".py".len()].replace('/', ".");
                for (name, info) in parse_classes(t) {
                    idx.classes.insert(format!("{module}.{name}"), info);
                }
            }
            idx.files.push(CodeFile {
                name: rec.name.clone(),
                size: rec.size,
                text,
            });
        }
        Ok(idx)
    }

    /// Warnings for operators whose meaning changed after an archive of version `v`.
    fn version_warnings(&self, v: u64) -> Vec<String> {
        let mut out = Vec::new();
        let mut more = 0usize;
        let mut budget = MAX_CHECKED_CALLS;
        let mut unchecked = 0usize;
        for f in &self.files {
            let Some(text) = &f.text else { continue };
            let (uses, skipped) = operator_uses(text, &mut budget);
            unchecked += skipped;
            let name = short(&f.name);
            for u in uses {
                let w = match u.op {
                    "torch.div" | "torch.div_" if v < 4 && !u.rounding_mode => format!(
                        "warning: {name}:{}: `{}` calls {}: the archive has version {v} (< 4), so if both operands are integer tensors this division truncates (torch.jit.load applies the div upgrader); current torch.div divides exactly",
                        u.line, u.method, u.call
                    ),
                    "torch.full" if v < 5 && !u.dtype => format!(
                        "warning: {name}:{}: `{}` calls {} without a dtype: the archive has version {v} (< 5), so an integer fill value gives a float tensor (torch.jit.load applies the full upgrader); current torch.full infers an integer dtype",
                        u.line, u.method, u.call
                    ),
                    _ => continue,
                };
                if out.len() < MAX_WARNINGS {
                    out.push(w);
                } else {
                    more += 1;
                }
            }
        }
        if more > 0 {
            out.push(format!(
                "warning: {more} more uses of changed operators not listed"
            ));
        }
        if unchecked > 0 {
            out.push(format!(
                "warning: {unchecked} more calls of torch.div or torch.full not checked (more than {MAX_CHECKED_CALLS} calls)"
            ));
        }
        out
    }
}

/// Parses the `[ "a", "b", ]` list of `__parameters__ = ...`.
fn parse_str_list(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' => {
                let mut v = String::new();
                let mut esc = false;
                for d in chars.by_ref() {
                    if esc {
                        v.push(d);
                        esc = false;
                    } else if d == '\\' {
                        esc = true;
                    } else if d == c {
                        break;
                    } else {
                        v.push(d);
                    }
                }
                out.push(v);
            }
            ']' => break,
            _ => {}
        }
    }
    out
}

/// The classes of one code file: `class Name(Base):` at column 0, and the
/// `__parameters__` / `__buffers__` lines of its body.
fn parse_classes(text: &str) -> Vec<(String, ClassInfo)> {
    let mut out: Vec<(String, ClassInfo)> = Vec::new();
    let mut current: Option<usize> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("class ") {
            let end = rest.find(['(', ':']).unwrap_or(rest.len());
            let name = rest[..end].trim().to_string();
            let base = rest[end..]
                .strip_prefix('(')
                .and_then(|b| b.split(')').next())
                .unwrap_or("")
                .trim();
            out.push((
                name,
                ClassInfo {
                    is_module: base == "Module" || base.ends_with(".Module"),
                    ..ClassInfo::default()
                },
            ));
            current = Some(out.len() - 1);
            continue;
        }
        let indented = line.starts_with(' ') || line.starts_with('\t');
        if !indented && !line.trim().is_empty() {
            current = None;
            continue;
        }
        let Some(ci) = current else { continue };
        let t = line.trim_start();
        if let Some(v) = t.strip_prefix("__parameters__") {
            if let Some(list) = v.trim_start().strip_prefix('=') {
                out[ci].1.parameters = Some(parse_str_list(list).into_iter().collect());
            }
        } else if let Some(v) = t.strip_prefix("__buffers__") {
            if let Some(list) = v.trim_start().strip_prefix('=') {
                out[ci].1.buffers = Some(parse_str_list(list).into_iter().collect());
            }
        }
    }
    out
}

/// One call of a watched operator in a code file.
#[derive(Debug)]
struct OperatorUse {
    op: &'static str,
    /// 1-based line.
    line: usize,
    /// The `def` it is in (`<module level>` when none), cut to [`MAX_NAME`] characters.
    method: Arc<str>,
    /// The call as written (shortened).
    call: String,
    /// Whether the arguments include `rounding_mode=` (not None).
    rounding_mode: bool,
    /// Whether the arguments include `dtype=` (not None).
    dtype: bool,
}

const WATCHED: &[&str] = &["torch.div_", "torch.div", "torch.full"];

/// Finds the calls of watched operators, with the method and line they are in: the first
/// `budget` of them in detail (the budget goes down), the rest only counted.
fn operator_uses(text: &str, budget: &mut usize) -> (Vec<OperatorUse>, usize) {
    let mut out = Vec::new();
    let mut skipped = 0usize;
    let mut method: Arc<str> = Arc::from("<module level>");
    if !text.contains("torch.") {
        return (out, skipped);
    }
    let mut off = 0usize;
    for (i, raw) in text.split_inclusive('\n').enumerate() {
        let line_start = off;
        off += raw.len();
        let line = raw.strip_suffix('\n').unwrap_or(raw);
        let line = line.strip_suffix('\r').unwrap_or(line);
        let t = line.trim_start();
        if let Some(rest) = t.strip_prefix("def ") {
            method = Arc::from(short(rest.split('(').next().unwrap_or(rest).trim()).as_ref());
        }
        let mut from = 0usize;
        while let Some(found) = line[from..].find("torch.") {
            let at = from + found;
            from = at + "torch.".len();
            // Must start an identifier path (not `xtorch.div`, not `ops.torch.div`).
            if at > 0 {
                let prev = line.as_bytes()[at - 1];
                if prev.is_ascii_alphanumeric() || prev == b'_' || prev == b'.' {
                    continue;
                }
            }
            let Some(op) = WATCHED.iter().find(|op| {
                line[at..]
                    .strip_prefix(**op)
                    .is_some_and(|r| r.starts_with('('))
            }) else {
                continue;
            };
            if *budget == 0 {
                skipped += 1;
                continue;
            }
            *budget -= 1;
            let open = line_start + at + op.len();
            let args = call_args(text, open);
            let mut call = format!("{op}({args})");
            if call.len() > 120 {
                let cut = (0..=117)
                    .rev()
                    .find(|&k| call.is_char_boundary(k))
                    .unwrap_or(0);
                call.truncate(cut);
                call.push_str("...");
            }
            out.push(OperatorUse {
                op,
                line: i + 1,
                method: method.clone(),
                call,
                rounding_mode: has_kwarg(&args, "rounding_mode"),
                dtype: has_kwarg(&args, "dtype"),
            });
        }
    }
    (out, skipped)
}

/// The text between the parenthesis at byte `open` of `text` and its match (bounded; string
/// literals skipped).
fn call_args(text: &str, open: usize) -> String {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut quote: Option<u8> = None;
    let limit = (open + 8192).min(bytes.len());
    let mut i = open;
    while i < limit {
        let b = bytes[i];
        if let Some(q) = quote {
            if b == b'\\' {
                i += 1;
            } else if b == q {
                quote = None;
            }
        } else {
            match b {
                b'"' | b'\'' => quote = Some(b),
                b'(' | b'[' | b'{' => depth += 1,
                b')' | b']' | b'}' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        return text.get(open + 1..i).unwrap_or("").to_string();
                    }
                }
                _ => {}
            }
        }
        i += 1;
    }
    text.get(open + 1..limit).unwrap_or("").to_string()
}

/// Whether the top-level arguments include `name=<something other than None>`.
fn has_kwarg(args: &str, name: &str) -> bool {
    let mut depth = 0i32;
    let mut quote: Option<char> = None;
    let mut cur = String::new();
    let mut parts = Vec::new();
    for c in args.chars() {
        if let Some(q) = quote {
            cur.push(c);
            if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' => {
                quote = Some(c);
                cur.push(c);
            }
            '(' | '[' | '{' => {
                depth += 1;
                cur.push(c);
            }
            ')' | ']' | '}' => {
                depth -= 1;
                cur.push(c);
            }
            ',' if depth == 0 => parts.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    parts.push(cur);
    parts.iter().any(|p| {
        let p = p.trim();
        p.strip_prefix(name)
            .and_then(|r| r.trim_start().strip_prefix('='))
            .is_some_and(|v| v.trim() != "None")
    })
}

// ---------------------------------------------------------------------------------------------
// The state dict
// ---------------------------------------------------------------------------------------------

/// The attributes of a module object, in order (its BUILD dict).
fn attributes(o: &Object) -> Option<&[(Object, Object)]> {
    let Object::Opaque(op) = o else { return None };
    match op.state.as_ref()? {
        Object::Dict(d) => Some(d),
        Object::OrderedDict(d) => Some(&d.items),
        _ => None,
    }
}

/// Whether `o` is a module object (a class body says so, or, without one, it has a
/// `training` attribute); memoized by object, since the file can refer to one object from
/// any number of attributes.
fn is_module(o: &Object, code: &CodeIndex, memo: &mut HashMap<usize, bool>) -> bool {
    let Object::Opaque(op) = o else { return false };
    let ptr = Arc::as_ptr(op) as usize;
    if let Some(&m) = memo.get(&ptr) {
        return m;
    }
    let m = op.class.starts_with("__torch__.")
        && match code.classes.get(&op.class) {
            Some(c) => c.is_module,
            // No class body: modules are the objects with a `training` attribute.
            None => {
                attributes(o).is_some_and(|a| a.iter().any(|(k, _)| k.as_str() == Some("training")))
            }
        };
    memo.insert(ptr, m);
    m
}

/// The state dict of the module tree (parameters, then buffers, of each module, then its
/// submodules', by dotted name) and its `_metadata` (`{prefix: {'version': 1}}` per module:
/// a loaded script module has nn.Module's `_version`). Bounded: at most [`MAX_MODULES`]
/// modules, [`MAX_ENTRIES`] attributes looked at and [`MAX_ITEMS`] items, key-path
/// segments cut as [`name_text`] cuts them and paths as [`join_path`] does.
fn state_dict(
    root: &Object,
    code: &CodeIndex,
    notes: &mut Vec<String>,
) -> (Vec<(String, Object)>, Object) {
    let mut items = Vec::new();
    let mut metadata = Vec::new();
    let mut stack: Vec<(String, bool, Object)> = vec![(String::new(), false, root.clone())];
    let mut seen = 0usize;
    let mut entries = 0usize;
    let mut memo: HashMap<usize, bool> = HashMap::new();
    let mut det = Detacher::default();
    let mut class_of: HashMap<usize, Option<&ClassInfo>> = HashMap::new();
    let mut missing_classes: Vec<String> = Vec::new();
    let mut missing_seen: HashSet<String> = HashSet::new();
    let mut custom_state = 0usize;
    let mut stopped = None;
    while let Some((prefix, cut, m)) = stack.pop() {
        seen += 1;
        if seen > MAX_MODULES {
            stopped = Some(format!("more than {MAX_MODULES} modules"));
            break;
        }
        let Object::Opaque(op) = &m else { continue };
        metadata.push((
            Object::Str(prefix.strip_suffix('.').unwrap_or(&prefix).into()),
            Object::Dict(Arc::from(vec![(
                Object::Str("version".into()),
                Object::Int(1),
            )])),
        ));
        let Some(attrs) = attributes(&m) else {
            custom_state += 1;
            if custom_state <= MAX_WARNINGS {
                notes.push(format!(
                    "warning: module {:?} ({}) has a custom __getstate__; its tensors are not in the state dict",
                    prefix.trim_end_matches('.'),
                    short(&op.class)
                ));
            }
            continue;
        };
        entries = entries.saturating_add(attrs.len());
        if entries > MAX_ENTRIES {
            stopped = Some(format!("more than {MAX_ENTRIES} module attributes"));
            break;
        }
        // The class is looked up once per object (a shared module is walked many times).
        let info = *class_of.entry(Arc::as_ptr(op) as usize).or_insert_with(|| {
            let info = code.classes.get(&op.class);
            if info.is_none()
                && missing_classes.len() < MAX_WARNINGS
                && missing_seen.insert(op.class.clone())
            {
                missing_classes.push(short(&op.class).into_owned());
            }
            info
        });
        let params = info.and_then(|c| c.parameters.as_ref());
        let buffers = info.and_then(|c| c.buffers.as_ref());
        let named = |list: Option<&HashSet<String>>, k: &str| list.is_some_and(|l| l.contains(k));
        let mut push = |select: &dyn Fn(&str, &Object) -> bool| {
            for (ko, v) in attrs {
                let Some(k) = ko.as_str() else { continue };
                if !matches!(v, Object::None) && select(k, v) && items.len() < MAX_ITEMS {
                    items.push((join_path(&prefix, cut, &name_text(ko)).0, det.get(v)));
                }
            }
        };
        if params.is_some() || buffers.is_some() {
            push(&|k, _| named(params, k));
            push(&|k, _| named(buffers, k));
        } else {
            // Without a class body every tensor attribute is taken (parameters and buffers
            // cannot be told apart, nor from plain tensor attributes).
            push(&|_, v| matches!(v, Object::Tensor(_)));
        }
        if items.len() >= MAX_ITEMS {
            stopped = Some(format!("{MAX_ITEMS} items"));
            break;
        }
        let mut children: Vec<(String, bool, Object)> = Vec::new();
        for (k, v) in attrs {
            if k.as_str().is_none() || !is_module(v, code, &mut memo) {
                continue;
            }
            if stack.len() + children.len() >= MAX_MODULES {
                stopped = Some(format!("more than {MAX_MODULES} modules"));
                break;
            }
            let (p, c) = join_path(&prefix, cut, &format!("{}.", name_text(k)));
            children.push((p, c, v.clone()));
        }
        stack.extend(children.into_iter().rev());
    }
    if custom_state > MAX_WARNINGS {
        notes.push(format!(
            "warning: {} more modules with a custom __getstate__ not listed",
            custom_state - MAX_WARNINGS
        ));
    }
    if let Some(why) = stopped {
        notes.push(format!("warning: {why}; the state dict stops there"));
    }
    if !missing_classes.is_empty() {
        notes.push(format!(
            "warning: no class body in code/ for {}{}; their tensor attributes were all taken as state",
            missing_classes.join(", "),
            if missing_classes.len() >= MAX_WARNINGS { ", ..." } else { "" }
        ));
    }
    let metadata = Object::OrderedDict(Arc::new(OrderedDict {
        items: metadata,
        metadata: None,
    }));
    (items, metadata)
}
