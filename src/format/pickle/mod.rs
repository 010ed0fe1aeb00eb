//! A complete, safe pickle machine (protocols 0-5) over borrowed bytes.
//!
//! It knows opcodes and values, never torch. Every value becomes a [`Node`] in an arena
//! ([`Pickle`]); containers hold [`NodeId`]s, so a memo `GET` pushes the same id again in O(1)
//! and a doubling bomb costs one id per opcode. Globals, `REDUCE`, `NEWOBJ`, `NEWOBJ_EX`,
//! `INST`, `OBJ` and `BUILD` are recorded as symbolic data ([`Node::Global`], [`Node::Call`]):
//! nothing is ever called. Persistent ids become [`Node::PersId`].
//!
//! The machine is iterative (no recursion at all), and every length read from the input is
//! checked against the bytes that remain before anything is allocated. [`Limits`] bound the
//! node count, memo size, stack and mark depth, and the size of integers.

mod bigint;
mod writer;

pub use bigint::{bigint_to_decimal, decimal_to_bigint};
pub use writer::PickleWriter;

use std::collections::HashMap;
use std::fmt;

/// Index of a node in a [`Pickle`] arena.
pub type NodeId = u32;

/// The three singletons every pickle arena starts with.
pub const NONE: NodeId = 0;
/// `True`.
pub const TRUE: NodeId = 1;
/// `False`.
pub const FALSE: NodeId = 2;

/// Which opcode created a [`Node::Call`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CallKind {
    /// `REDUCE`: `callable(*args)`.
    Reduce,
    /// `NEWOBJ`: `cls.__new__(cls, *args)`.
    NewObj,
    /// `NEWOBJ_EX`: `cls.__new__(cls, *args, **kwargs)`.
    NewObjEx,
    /// `INST`: protocol 0 instance creation.
    Inst,
    /// `OBJ`: protocol 1 instance creation.
    Obj,
}

/// A symbolic call: what the pickle asked to be called, with what, and what was done to the
/// result afterwards (`BUILD`, `SETITEM(S)`, `APPEND(S)`).
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    /// The opcode that created it.
    pub kind: CallKind,
    /// The callable or class (usually a [`Node::Global`]).
    pub callable: NodeId,
    /// The positional arguments (a [`Node::Tuple`]).
    pub args: NodeId,
    /// Keyword arguments (`NEWOBJ_EX` only).
    pub kwargs: Option<NodeId>,
    /// States passed by `BUILD`, in order (usually zero or one).
    pub states: Vec<NodeId>,
    /// Items added by `SETITEM`/`SETITEMS` (dict subclasses such as `OrderedDict`).
    pub items: Vec<(NodeId, NodeId)>,
    /// Items added by `APPEND`/`APPENDS` (list subclasses).
    pub appends: Vec<NodeId>,
}

/// A global reference: `module.name` as written, and where.
#[derive(Debug, Clone, PartialEq)]
pub struct Global {
    /// Module name as written.
    pub module: Box<str>,
    /// Qualified name as written.
    pub name: Box<str>,
    /// Byte offset of the opcode that named it.
    pub offset: u64,
}

/// One value of the pickle.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Node {
    /// `None`.
    None,
    /// `True` / `False`.
    Bool(bool),
    /// An int that fits in i64.
    Int(i64),
    /// A larger int: two's-complement little-endian bytes (as `LONG1`/`LONG4` carry them).
    BigInt(Box<[u8]>),
    /// A float.
    Float(f64),
    /// A str.
    Str(Box<str>),
    /// Python 2 `str` (`STRING`, `BINSTRING`, `SHORT_BINSTRING`): raw bytes that Python 3
    /// decodes with the unpickler's encoding.
    ByteStr(Box<[u8]>),
    /// `bytes`.
    Bytes(Box<[u8]>),
    /// `bytearray` (`BYTEARRAY8`).
    ByteArray(Box<[u8]>),
    /// A tuple.
    Tuple(Vec<NodeId>),
    /// A list.
    List(Vec<NodeId>),
    /// A dict, in insertion order (duplicate keys are kept; the reader decides).
    Dict(Vec<(NodeId, NodeId)>),
    /// A set.
    Set(Vec<NodeId>),
    /// A frozenset.
    FrozenSet(Vec<NodeId>),
    /// A global reference (`GLOBAL`, `STACK_GLOBAL`, `INST`), never resolved here.
    Global(Box<Global>),
    /// A symbolic call.
    Call(Box<Call>),
    /// A persistent id (`PERSID`: a str node; `BINPERSID`: any node).
    PersId(NodeId),
    /// A `copyreg` extension code (`EXT1`/`EXT2`/`EXT4`); resolving it would need the
    /// process's extension registry, so it stays a number.
    Ext {
        /// The extension code.
        code: i64,
        /// Byte offset of the opcode.
        offset: u64,
    },
}

/// Limits that bound what a pickle can cost. Every one is checked before allocating.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Limits {
    /// Most nodes the arena may hold.
    pub max_nodes: usize,
    /// Most memo entries.
    pub max_memo: usize,
    /// Deepest value stack.
    pub max_stack: usize,
    /// Deepest stack of MARKs.
    pub max_marks: usize,
    /// Largest integer (`LONG1`, `LONG4`, protocol-0 `LONG`), in bytes.
    pub max_int_bytes: usize,
    /// Most container items in all (every element a list, tuple, dict, set or object holds):
    /// bounds the memory of files that append one memoized value millions of times.
    pub max_items: usize,
    /// Most bytes of big integers (beyond i64) in all: converting them to decimal is
    /// quadratic in their size.
    pub max_bigint_total: usize,
    /// Longest module or name of a global (STACK_GLOBAL can reuse one memoized string).
    pub max_global_name: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_nodes: 4_000_000,
            max_memo: 4_000_000,
            max_stack: 10_000_000,
            max_marks: 1_000_000,
            max_int_bytes: 8192,
            max_items: 10_000_000,
            max_bigint_total: 1 << 20,
            max_global_name: 1024,
        }
    }
}

/// Why a pickle could not be read. `offset` is the byte offset of the failing opcode.
#[derive(Debug, Clone, PartialEq)]
pub struct PickleError {
    /// Byte offset in the pickle of the opcode that failed.
    pub offset: u64,
    /// What went wrong.
    pub kind: PickleErrorKind,
}

/// The kinds of pickle failure.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum PickleErrorKind {
    /// The input ends inside an opcode or before `STOP`.
    Truncated(&'static str),
    /// An opcode byte no protocol defines.
    UnknownOpcode(u8),
    /// A length or count larger than the bytes that remain.
    LengthPastEnd {
        /// What the length is of.
        what: &'static str,
        /// The declared length.
        declared: u64,
        /// Bytes remaining.
        remaining: u64,
    },
    /// A limit of [`Limits`] was reached.
    Limit {
        /// Which limit.
        what: &'static str,
        /// Its value.
        limit: usize,
    },
    /// The stack did not hold what the opcode needs.
    Stack(String),
    /// A memo GET of an index never PUT.
    MemoMissing(u64),
    /// Malformed text argument of a protocol-0 opcode.
    BadText(String),
    /// An opcode applied to the wrong kind of value (SETITEM on a list, ...).
    WrongTarget(String),
    /// Out-of-band buffers (`NEXT_BUFFER`, `READONLY_BUFFER`) were used; none are given.
    OutOfBand,
    /// A value Python cannot hash used as a dict key or set element: Python's unpickler (and
    /// so `torch.load`) raises `TypeError: unhashable type` at this opcode.
    Unhashable {
        /// Python's name of the value's type (`list`, `dict`, `set`, `bytearray`,
        /// `collections.OrderedDict`); for a tuple, that of the unhashable value inside it.
        type_name: &'static str,
        /// `dict key` or `set element`.
        used_as: &'static str,
    },
}

impl fmt::Display for PickleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use PickleErrorKind::*;
        match &self.kind {
            Truncated(what) => write!(f, "pickle truncated in {what}"),
            UnknownOpcode(b) => write!(f, "unknown pickle opcode 0x{b:02x}"),
            LengthPastEnd {
                what,
                declared,
                remaining,
            } => write!(
                f,
                "{what} declares {declared} bytes but only {remaining} remain"
            ),
            Limit { what, limit } => write!(
                f,
                "pickle exceeds the {what} limit ({limit}); raise it in pickle::Limits if the file is trusted"
            ),
            Stack(m) => write!(f, "malformed pickle: {m}"),
            MemoMissing(i) => write!(f, "memo GET of index {i} that was never PUT"),
            BadText(m) => write!(f, "malformed text argument: {m}"),
            WrongTarget(m) => write!(f, "malformed pickle: {m}"),
            OutOfBand => write!(
                f,
                "pickle uses out-of-band buffers (protocol 5 NEXT_BUFFER), which a file cannot supply"
            ),
            Unhashable { type_name, used_as } => write!(
                f,
                "TypeError: unhashable type: '{type_name}' (a {type_name} used as a {used_as}; \
                 torch.load refuses the file the same way)"
            ),
        }?;
        write!(f, " (pickle byte offset {})", self.offset)
    }
}

impl std::error::Error for PickleError {}

/// A parsed pickle: the arena of nodes and the root.
#[derive(Debug, Clone)]
pub struct Pickle {
    nodes: Vec<Node>,
    /// The value `STOP` returned.
    pub root: NodeId,
    /// Number of bytes the pickle occupied up to and including `STOP`.
    pub consumed: usize,
    /// The highest `PROTO` seen (0 when none).
    pub protocol: u8,
}

impl Pickle {
    /// The node with id `id`. Ids come from this arena, so this never fails for them.
    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id as usize]
    }
    /// All nodes (ids are indices).
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }
    /// The number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }
    /// Never true: every arena holds the singletons.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

/// Parses one pickle from the start of `data` up to its `STOP`.
pub fn parse(data: &[u8], limits: &Limits) -> Result<Pickle, PickleError> {
    Machine::new(data, limits).run()
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    op_start: usize,
    limits: &'a Limits,
    nodes: Vec<Node>,
    stack: Vec<NodeId>,
    marks: Vec<usize>,
    memo: HashMap<u64, NodeId>,
    protocol: u8,
    items: usize,
    bigint_bytes: usize,
    /// Tuples Python cannot hash (they hold an unhashable value, perhaps in a nested tuple),
    /// with that value's type name. Tuples never change once built, so this is decided once.
    unhashable_tuples: HashMap<NodeId, &'static str>,
}

type R<T> = Result<T, PickleError>;

impl<'a> Machine<'a> {
    fn new(data: &'a [u8], limits: &'a Limits) -> Self {
        Machine {
            data,
            pos: 0,
            op_start: 0,
            limits,
            nodes: vec![Node::None, Node::Bool(true), Node::Bool(false)],
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            protocol: 0,
            items: 0,
            bigint_bytes: 0,
            unhashable_tuples: HashMap::new(),
        }
    }

    fn err(&self, kind: PickleErrorKind) -> PickleError {
        PickleError {
            offset: self.op_start as u64,
            kind,
        }
    }

    fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &'static str) -> R<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.err(PickleErrorKind::LengthPastEnd {
                what,
                declared: n as u64,
                remaining: self.remaining() as u64,
            }));
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn take_len(&mut self, n: u64, what: &'static str) -> R<&'a [u8]> {
        if n > self.remaining() as u64 {
            return Err(self.err(PickleErrorKind::LengthPastEnd {
                what,
                declared: n,
                remaining: self.remaining() as u64,
            }));
        }
        self.take(n as usize, what)
    }

    fn u8(&mut self, what: &'static str) -> R<u8> {
        match self.data.get(self.pos) {
            Some(&b) => {
                self.pos += 1;
                Ok(b)
            }
            None => Err(self.err(PickleErrorKind::Truncated(what))),
        }
    }

    fn fixed<const N: usize>(&mut self, what: &'static str) -> R<[u8; N]> {
        if self.remaining() < N {
            return Err(self.err(PickleErrorKind::Truncated(what)));
        }
        let mut a = [0u8; N];
        a.copy_from_slice(&self.data[self.pos..self.pos + N]);
        self.pos += N;
        Ok(a)
    }

    fn line(&mut self, what: &'static str) -> R<&'a [u8]> {
        let rest = &self.data[self.pos..];
        match rest.iter().position(|&b| b == b'\n') {
            Some(i) => {
                self.pos += i + 1;
                Ok(&rest[..i])
            }
            None => Err(self.err(PickleErrorKind::Truncated(what))),
        }
    }

    fn line_str(&mut self, what: &'static str) -> R<&'a str> {
        let l = self.line(what)?;
        std::str::from_utf8(l)
            .map_err(|_| self.err(PickleErrorKind::BadText(format!("{what} is not UTF-8"))))
    }

    fn add(&mut self, node: Node) -> R<NodeId> {
        if self.nodes.len() >= self.limits.max_nodes {
            return Err(self.err(PickleErrorKind::Limit {
                what: "node count",
                limit: self.limits.max_nodes,
            }));
        }
        let id = self.nodes.len() as NodeId;
        self.nodes.push(node);
        Ok(id)
    }

    fn push(&mut self, id: NodeId) -> R<()> {
        if self.stack.len() >= self.limits.max_stack {
            return Err(self.err(PickleErrorKind::Limit {
                what: "stack depth",
                limit: self.limits.max_stack,
            }));
        }
        self.stack.push(id);
        Ok(())
    }

    /// Counts `n` container items against [`Limits::max_items`].
    fn count_items(&mut self, n: usize) -> R<()> {
        self.items = self.items.saturating_add(n);
        if self.items > self.limits.max_items {
            return Err(self.err(PickleErrorKind::Limit {
                what: "container item count",
                limit: self.limits.max_items,
            }));
        }
        Ok(())
    }

    fn push_new(&mut self, node: Node) -> R<()> {
        if let Node::Tuple(xs) | Node::List(xs) | Node::FrozenSet(xs) = &node {
            self.count_items(xs.len())?;
        } else if let Node::Dict(xs) = &node {
            self.count_items(xs.len())?;
        }
        match &node {
            Node::Dict(pairs) => self.check_hashable(pairs.iter().map(|p| p.0), "dict key")?,
            Node::FrozenSet(xs) => self.check_hashable(xs.iter().copied(), "set element")?,
            _ => {}
        }
        let inner = match &node {
            Node::Tuple(xs) => xs.iter().find_map(|&x| self.unhashable(x)),
            _ => None,
        };
        let id = self.add(node)?;
        if let Some(type_name) = inner {
            self.unhashable_tuples.insert(id, type_name);
        }
        self.push(id)
    }

    /// Python's type name of node `id` when Python cannot hash it (`hash(x)` raises
    /// `TypeError: unhashable type`), as far as the pickle shows: lists, dicts, sets,
    /// bytearrays, calls that build one of those (`builtins.set(...)`,
    /// `collections.OrderedDict()`) and tuples holding any of them. Everything else (objects
    /// of other classes included) counts as hashable.
    fn unhashable(&self, id: NodeId) -> Option<&'static str> {
        match self.node(id) {
            Node::List(_) => Some("list"),
            Node::Dict(_) => Some("dict"),
            Node::Set(_) => Some("set"),
            Node::ByteArray(_) => Some("bytearray"),
            Node::Tuple(_) => self.unhashable_tuples.get(&id).copied(),
            Node::Call(c) => match self.node(c.callable) {
                Node::Global(g) => match (&*g.module, &*g.name) {
                    ("builtins" | "__builtin__", "list") => Some("list"),
                    ("builtins" | "__builtin__", "dict") => Some("dict"),
                    ("builtins" | "__builtin__", "set") => Some("set"),
                    ("builtins" | "__builtin__", "bytearray") => Some("bytearray"),
                    ("collections", "OrderedDict") => Some("collections.OrderedDict"),
                    _ => None,
                },
                _ => None,
            },
            _ => None,
        }
    }

    /// Refuses, as Python does, a key or element it cannot hash.
    fn check_hashable(
        &self,
        mut ids: impl Iterator<Item = NodeId>,
        used_as: &'static str,
    ) -> R<()> {
        match ids.find_map(|id| self.unhashable(id)) {
            Some(type_name) => Err(self.err(PickleErrorKind::Unhashable { type_name, used_as })),
            None => Ok(()),
        }
    }

    /// Whether SETITEM(S) on this call result stores keys in a dict (`dict`, `OrderedDict`):
    /// then they must be hashable. Other classes' `__setitem__` may take anything.
    fn is_dict_call(&self, c: &Call) -> bool {
        matches!(self.node(c.callable), Node::Global(g) if matches!(
            (&*g.module, &*g.name),
            ("builtins" | "__builtin__", "dict") | ("collections", "OrderedDict")
        ))
    }

    fn pop(&mut self, what: &str) -> R<NodeId> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.err(PickleErrorKind::Stack(format!(
                "{what} needs a value but the stack is empty"
            ))));
        }
        Ok(self.stack.pop().unwrap_or(NONE))
    }

    fn top(&self, what: &str) -> R<NodeId> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.err(PickleErrorKind::Stack(format!(
                "{what} needs a value but the stack is empty"
            ))));
        }
        Ok(*self.stack.last().unwrap_or(&NONE))
    }

    /// Pops everything down to the last MARK, and the MARK.
    fn pop_mark(&mut self, what: &str) -> R<Vec<NodeId>> {
        let m = self
            .marks
            .pop()
            .ok_or_else(|| self.err(PickleErrorKind::Stack(format!("{what} without a MARK"))))?;
        Ok(self.stack.split_off(m.min(self.stack.len())))
    }

    fn memo_put(&mut self, idx: u64) -> R<()> {
        let top = self.top("PUT")?;
        if !self.memo.contains_key(&idx) && self.memo.len() >= self.limits.max_memo {
            return Err(self.err(PickleErrorKind::Limit {
                what: "memo size",
                limit: self.limits.max_memo,
            }));
        }
        self.memo.insert(idx, top);
        Ok(())
    }

    fn memo_get(&mut self, idx: u64) -> R<()> {
        let id = *self
            .memo
            .get(&idx)
            .ok_or_else(|| self.err(PickleErrorKind::MemoMissing(idx)))?;
        self.push(id)
    }

    fn int_node(&mut self, bytes: &[u8]) -> R<Node> {
        if bytes.len() > self.limits.max_int_bytes {
            return Err(self.err(PickleErrorKind::Limit {
                what: "integer size in bytes",
                limit: self.limits.max_int_bytes,
            }));
        }
        if bytes.len() > 8 {
            self.count_bigint(bytes.len())?;
        }
        Ok(int_from_le(bytes))
    }

    /// Counts big-integer bytes against [`Limits::max_bigint_total`].
    fn count_bigint(&mut self, n: usize) -> R<()> {
        self.bigint_bytes = self.bigint_bytes.saturating_add(n);
        if self.bigint_bytes > self.limits.max_bigint_total {
            return Err(self.err(PickleErrorKind::Limit {
                what: "total size of big integers",
                limit: self.limits.max_bigint_total,
            }));
        }
        Ok(())
    }

    fn str_node(&self, b: &[u8], what: &str) -> R<Node> {
        match std::str::from_utf8(b) {
            Ok(s) => Ok(Node::Str(s.into())),
            // Python writes lone surrogates with 'surrogatepass'; keep them readable.
            Err(_) => Ok(Node::Str(decode_surrogatepass(b).ok_or_else(|| {
                self.err(PickleErrorKind::BadText(format!("{what} is not UTF-8")))
            })?)),
        }
    }

    fn global(&mut self, module: &str, name: &str) -> R<NodeId> {
        if module.len() > self.limits.max_global_name || name.len() > self.limits.max_global_name {
            return Err(self.err(PickleErrorKind::Limit {
                what: "length of a global's module or name",
                limit: self.limits.max_global_name,
            }));
        }
        self.add(Node::Global(Box::new(Global {
            module: module.into(),
            name: name.into(),
            offset: self.op_start as u64,
        })))
    }

    fn call(
        &mut self,
        kind: CallKind,
        callable: NodeId,
        args: NodeId,
        kwargs: Option<NodeId>,
    ) -> R<()> {
        self.push_new(Node::Call(Box::new(Call {
            kind,
            callable,
            args,
            kwargs,
            states: Vec::new(),
            items: Vec::new(),
            appends: Vec::new(),
        })))
    }

    fn set_items(&mut self, target: NodeId, pairs: Vec<(NodeId, NodeId)>, op: &str) -> R<()> {
        self.count_items(pairs.len())?;
        let keys_hashed = match self.node(target) {
            Node::Dict(_) => true,
            Node::Call(c) => self.is_dict_call(c),
            _ => false,
        };
        if keys_hashed {
            self.check_hashable(pairs.iter().map(|p| p.0), "dict key")?;
        }
        match &mut self.nodes[target as usize] {
            Node::Dict(items) => items.extend(pairs),
            Node::Call(c) => c.items.extend(pairs),
            other => {
                let k = kind_name(other);
                return Err(self.err(PickleErrorKind::WrongTarget(format!(
                    "{op} applied to a {k}, not a dict"
                ))));
            }
        }
        Ok(())
    }

    fn append_items(&mut self, target: NodeId, xs: Vec<NodeId>, op: &str) -> R<()> {
        self.count_items(xs.len())?;
        match &mut self.nodes[target as usize] {
            Node::List(items) => items.extend(xs),
            Node::Call(c) => c.appends.extend(xs),
            other => {
                let k = kind_name(other);
                return Err(self.err(PickleErrorKind::WrongTarget(format!(
                    "{op} applied to a {k}, not a list"
                ))));
            }
        }
        Ok(())
    }

    fn run(mut self) -> R<Pickle> {
        loop {
            self.op_start = self.pos;
            let op = self.u8("opcode (no STOP)")?;
            match op {
                // --- framing and protocol ---
                0x80 => {
                    let p = self.u8("PROTO")?;
                    self.protocol = self.protocol.max(p);
                }
                0x95 => {
                    // FRAME: advisory length; the frame must not claim more than remains.
                    let n = u64::from_le_bytes(self.fixed::<8>("FRAME")?);
                    if n > self.remaining() as u64 {
                        return Err(self.err(PickleErrorKind::LengthPastEnd {
                            what: "FRAME",
                            declared: n,
                            remaining: self.remaining() as u64,
                        }));
                    }
                }
                b'.' => {
                    let root = self.pop("STOP")?;
                    return Ok(Pickle {
                        nodes: self.nodes,
                        root,
                        consumed: self.pos,
                        protocol: self.protocol,
                    });
                }
                // --- stack manipulation ---
                b'(' => {
                    if self.marks.len() >= self.limits.max_marks {
                        return Err(self.err(PickleErrorKind::Limit {
                            what: "MARK depth",
                            limit: self.limits.max_marks,
                        }));
                    }
                    self.marks.push(self.stack.len());
                }
                b'0' => {
                    self.pop("POP")?;
                }
                b'1' => {
                    self.pop_mark("POP_MARK")?;
                }
                b'2' => {
                    let t = self.top("DUP")?;
                    self.push(t)?;
                }
                // --- memo ---
                b'p' => {
                    let l = self.line_str("PUT")?;
                    let i = parse_decimal_u64(l).ok_or_else(|| {
                        self.err(PickleErrorKind::BadText(format!("PUT index {l:?}")))
                    })?;
                    self.memo_put(i)?;
                }
                b'q' => {
                    let i = self.u8("BINPUT")? as u64;
                    self.memo_put(i)?;
                }
                b'r' => {
                    let i = u32::from_le_bytes(self.fixed::<4>("LONG_BINPUT")?) as u64;
                    self.memo_put(i)?;
                }
                0x94 => {
                    let i = self.memo.len() as u64;
                    self.memo_put(i)?;
                }
                b'g' => {
                    let l = self.line_str("GET")?;
                    let i = parse_decimal_u64(l).ok_or_else(|| {
                        self.err(PickleErrorKind::BadText(format!("GET index {l:?}")))
                    })?;
                    self.memo_get(i)?;
                }
                b'h' => {
                    let i = self.u8("BINGET")? as u64;
                    self.memo_get(i)?;
                }
                b'j' => {
                    let i = u32::from_le_bytes(self.fixed::<4>("LONG_BINGET")?) as u64;
                    self.memo_get(i)?;
                }
                // --- constants ---
                b'N' => self.push(NONE)?,
                0x88 => self.push(TRUE)?,
                0x89 => self.push(FALSE)?,
                // --- integers ---
                b'I' => {
                    let l = self.line_str("INT")?;
                    let node = match l {
                        "00" => Node::Bool(false),
                        "01" => Node::Bool(true),
                        _ => self.decimal_int(l, "INT")?,
                    };
                    self.push_new(node)?;
                }
                b'L' => {
                    let l = self.line_str("LONG")?;
                    let l = l.strip_suffix('L').unwrap_or(l);
                    let node = self.decimal_int(l, "LONG")?;
                    self.push_new(node)?;
                }
                b'J' => {
                    let v = i32::from_le_bytes(self.fixed::<4>("BININT")?);
                    self.push_new(Node::Int(v as i64))?;
                }
                b'K' => {
                    let v = self.u8("BININT1")?;
                    self.push_new(Node::Int(v as i64))?;
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.fixed::<2>("BININT2")?);
                    self.push_new(Node::Int(v as i64))?;
                }
                0x8a => {
                    let n = self.u8("LONG1")? as u64;
                    let b = self.take_len(n, "LONG1")?;
                    let node = self.int_node(b)?;
                    self.push_new(node)?;
                }
                0x8b => {
                    let n = i32::from_le_bytes(self.fixed::<4>("LONG4")?);
                    if n < 0 {
                        return Err(self.err(PickleErrorKind::BadText(format!(
                            "LONG4 with negative length {n}"
                        ))));
                    }
                    if n as usize > self.limits.max_int_bytes {
                        return Err(self.err(PickleErrorKind::Limit {
                            what: "integer size in bytes",
                            limit: self.limits.max_int_bytes,
                        }));
                    }
                    let b = self.take_len(n as u64, "LONG4")?;
                    let node = self.int_node(b)?;
                    self.push_new(node)?;
                }
                // --- floats ---
                b'F' => {
                    let l = self.line_str("FLOAT")?;
                    let v = parse_py_float(l).ok_or_else(|| {
                        self.err(PickleErrorKind::BadText(format!("FLOAT {l:?}")))
                    })?;
                    self.push_new(Node::Float(v))?;
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.fixed::<8>("BINFLOAT")?);
                    self.push_new(Node::Float(v))?;
                }
                // --- strings and bytes ---
                b'S' => {
                    let l = self.line("STRING")?;
                    let b = unquote_py2_string(l).ok_or_else(|| {
                        self.err(PickleErrorKind::BadText(
                            "STRING argument is not a quoted string".into(),
                        ))
                    })?;
                    self.push_new(Node::ByteStr(b.into()))?;
                }
                b'T' => {
                    let n = i32::from_le_bytes(self.fixed::<4>("BINSTRING")?);
                    if n < 0 {
                        return Err(self.err(PickleErrorKind::BadText(format!(
                            "BINSTRING with negative length {n}"
                        ))));
                    }
                    let b = self.take_len(n as u64, "BINSTRING")?;
                    self.push_new(Node::ByteStr(b.into()))?;
                }
                b'U' => {
                    let n = self.u8("SHORT_BINSTRING")? as u64;
                    let b = self.take_len(n, "SHORT_BINSTRING")?;
                    self.push_new(Node::ByteStr(b.into()))?;
                }
                b'V' => {
                    let l = self.line("UNICODE")?;
                    let s = raw_unicode_escape(l).ok_or_else(|| {
                        self.err(PickleErrorKind::BadText("UNICODE escape".into()))
                    })?;
                    self.push_new(Node::Str(s.into()))?;
                }
                b'X' => {
                    let n = u32::from_le_bytes(self.fixed::<4>("BINUNICODE")?) as u64;
                    let b = self.take_len(n, "BINUNICODE")?;
                    let node = self.str_node(b, "BINUNICODE")?;
                    self.push_new(node)?;
                }
                0x8c => {
                    let n = self.u8("SHORT_BINUNICODE")? as u64;
                    let b = self.take_len(n, "SHORT_BINUNICODE")?;
                    let node = self.str_node(b, "SHORT_BINUNICODE")?;
                    self.push_new(node)?;
                }
                0x8d => {
                    let n = u64::from_le_bytes(self.fixed::<8>("BINUNICODE8")?);
                    let b = self.take_len(n, "BINUNICODE8")?;
                    let node = self.str_node(b, "BINUNICODE8")?;
                    self.push_new(node)?;
                }
                b'B' => {
                    let n = u32::from_le_bytes(self.fixed::<4>("BINBYTES")?) as u64;
                    let b = self.take_len(n, "BINBYTES")?;
                    self.push_new(Node::Bytes(b.into()))?;
                }
                b'C' => {
                    let n = self.u8("SHORT_BINBYTES")? as u64;
                    let b = self.take_len(n, "SHORT_BINBYTES")?;
                    self.push_new(Node::Bytes(b.into()))?;
                }
                0x8e => {
                    let n = u64::from_le_bytes(self.fixed::<8>("BINBYTES8")?);
                    let b = self.take_len(n, "BINBYTES8")?;
                    self.push_new(Node::Bytes(b.into()))?;
                }
                0x96 => {
                    let n = u64::from_le_bytes(self.fixed::<8>("BYTEARRAY8")?);
                    let b = self.take_len(n, "BYTEARRAY8")?;
                    self.push_new(Node::ByteArray(b.into()))?;
                }
                0x97 | 0x98 => return Err(self.err(PickleErrorKind::OutOfBand)),
                // --- containers ---
                b']' => self.push_new(Node::List(Vec::new()))?,
                b')' => self.push_new(Node::Tuple(Vec::new()))?,
                b'}' => self.push_new(Node::Dict(Vec::new()))?,
                0x8f => self.push_new(Node::Set(Vec::new()))?,
                b'l' => {
                    let xs = self.pop_mark("LIST")?;
                    self.push_new(Node::List(xs))?;
                }
                b't' => {
                    let xs = self.pop_mark("TUPLE")?;
                    self.push_new(Node::Tuple(xs))?;
                }
                0x85 => {
                    let a = self.pop("TUPLE1")?;
                    self.push_new(Node::Tuple(vec![a]))?;
                }
                0x86 => {
                    let b = self.pop("TUPLE2")?;
                    let a = self.pop("TUPLE2")?;
                    self.push_new(Node::Tuple(vec![a, b]))?;
                }
                0x87 => {
                    let c = self.pop("TUPLE3")?;
                    let b = self.pop("TUPLE3")?;
                    let a = self.pop("TUPLE3")?;
                    self.push_new(Node::Tuple(vec![a, b, c]))?;
                }
                b'd' => {
                    let xs = self.pop_mark("DICT")?;
                    let pairs = self.pairs(xs, "DICT")?;
                    self.push_new(Node::Dict(pairs))?;
                }
                0x91 => {
                    let xs = self.pop_mark("FROZENSET")?;
                    self.push_new(Node::FrozenSet(xs))?;
                }
                b'a' => {
                    let x = self.pop("APPEND")?;
                    let l = self.top("APPEND")?;
                    self.append_items(l, vec![x], "APPEND")?;
                }
                b'e' => {
                    let xs = self.pop_mark("APPENDS")?;
                    let l = self.top("APPENDS")?;
                    self.append_items(l, xs, "APPENDS")?;
                }
                b's' => {
                    let v = self.pop("SETITEM")?;
                    let k = self.pop("SETITEM")?;
                    let d = self.top("SETITEM")?;
                    self.set_items(d, vec![(k, v)], "SETITEM")?;
                }
                b'u' => {
                    let xs = self.pop_mark("SETITEMS")?;
                    let pairs = self.pairs(xs, "SETITEMS")?;
                    let d = self.top("SETITEMS")?;
                    self.set_items(d, pairs, "SETITEMS")?;
                }
                0x90 => {
                    let xs = self.pop_mark("ADDITEMS")?;
                    self.count_items(xs.len())?;
                    let s = self.top("ADDITEMS")?;
                    if let Node::Set(_) = self.node(s) {
                        self.check_hashable(xs.iter().copied(), "set element")?;
                    }
                    match &mut self.nodes[s as usize] {
                        Node::Set(items) => items.extend(xs),
                        Node::Call(c) => c.appends.extend(xs),
                        other => {
                            let k = kind_name(other);
                            return Err(self.err(PickleErrorKind::WrongTarget(format!(
                                "ADDITEMS applied to a {k}, not a set"
                            ))));
                        }
                    }
                }
                // --- globals and objects ---
                b'c' => {
                    let module = self.line_str("GLOBAL module")?;
                    let name = self.line_str("GLOBAL name")?;
                    let id = self.global(module, name)?;
                    self.push(id)?;
                }
                0x93 => {
                    let name = self.pop("STACK_GLOBAL")?;
                    let module = self.pop("STACK_GLOBAL")?;
                    let (m, n) = match (self.node(module), self.node(name)) {
                        (Node::Str(m), Node::Str(n)) => (m.to_string(), n.to_string()),
                        _ => {
                            return Err(self.err(PickleErrorKind::Stack(
                                "STACK_GLOBAL needs two strings".into(),
                            )))
                        }
                    };
                    let id = self.global(&m, &n)?;
                    self.push(id)?;
                }
                b'i' => {
                    let module = self.line_str("INST module")?;
                    let name = self.line_str("INST name")?;
                    let cls = self.global(module, name)?;
                    let args = self.pop_mark("INST")?;
                    let args = self.add(Node::Tuple(args))?;
                    self.call(CallKind::Inst, cls, args, None)?;
                }
                b'o' => {
                    let mut xs = self.pop_mark("OBJ")?;
                    if xs.is_empty() {
                        return Err(self.err(PickleErrorKind::Stack(
                            "OBJ needs a class after the MARK".into(),
                        )));
                    }
                    let cls = xs.remove(0);
                    let args = self.add(Node::Tuple(xs))?;
                    self.call(CallKind::Obj, cls, args, None)?;
                }
                b'R' => {
                    let args = self.pop("REDUCE")?;
                    let f = self.pop("REDUCE")?;
                    self.call(CallKind::Reduce, f, args, None)?;
                }
                0x81 => {
                    let args = self.pop("NEWOBJ")?;
                    let cls = self.pop("NEWOBJ")?;
                    self.call(CallKind::NewObj, cls, args, None)?;
                }
                0x92 => {
                    let kwargs = self.pop("NEWOBJ_EX")?;
                    let args = self.pop("NEWOBJ_EX")?;
                    let cls = self.pop("NEWOBJ_EX")?;
                    self.call(CallKind::NewObjEx, cls, args, Some(kwargs))?;
                }
                b'b' => {
                    let state = self.pop("BUILD")?;
                    let obj = self.top("BUILD")?;
                    match &mut self.nodes[obj as usize] {
                        Node::Call(c) => c.states.push(state),
                        other => {
                            let k = kind_name(other);
                            return Err(self.err(PickleErrorKind::WrongTarget(format!(
                                "BUILD applied to a {k}, not an object"
                            ))));
                        }
                    }
                }
                0x82 => {
                    let code = self.u8("EXT1")? as i64;
                    self.push_new(Node::Ext {
                        code,
                        offset: self.op_start as u64,
                    })?;
                }
                0x83 => {
                    let code = u16::from_le_bytes(self.fixed::<2>("EXT2")?) as i64;
                    self.push_new(Node::Ext {
                        code,
                        offset: self.op_start as u64,
                    })?;
                }
                0x84 => {
                    let code = i32::from_le_bytes(self.fixed::<4>("EXT4")?) as i64;
                    self.push_new(Node::Ext {
                        code,
                        offset: self.op_start as u64,
                    })?;
                }
                // --- persistent ids ---
                b'P' => {
                    let l = self.line("PERSID")?;
                    let s = self.str_node(l, "PERSID")?;
                    let sid = self.add(s)?;
                    self.push_new(Node::PersId(sid))?;
                }
                b'Q' => {
                    let pid = self.pop("BINPERSID")?;
                    self.push_new(Node::PersId(pid))?;
                }
                other => return Err(self.err(PickleErrorKind::UnknownOpcode(other))),
            }
        }
    }

    fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id as usize]
    }

    fn pairs(&self, xs: Vec<NodeId>, op: &str) -> R<Vec<(NodeId, NodeId)>> {
        if !xs.len().is_multiple_of(2) {
            return Err(self.err(PickleErrorKind::Stack(format!(
                "{op} has an odd number of items ({})",
                xs.len()
            ))));
        }
        Ok(xs.chunks_exact(2).map(|p| (p[0], p[1])).collect())
    }

    fn decimal_int(&mut self, l: &str, what: &str) -> R<Node> {
        if let Ok(v) = l.trim().parse::<i64>() {
            return Ok(Node::Int(v));
        }
        let digits = l.trim();
        if digits.len() > self.limits.max_int_bytes * 2 {
            return Err(self.err(PickleErrorKind::Limit {
                what: "integer size in bytes",
                limit: self.limits.max_int_bytes,
            }));
        }
        self.count_bigint(digits.len())?;
        let b = decimal_to_bigint(digits)
            .ok_or_else(|| self.err(PickleErrorKind::BadText(format!("{what} {l:?}"))))?;
        Ok(int_from_le(&b))
    }
}

/// The name of a node's kind, for messages.
pub fn kind_name(n: &Node) -> &'static str {
    match n {
        Node::None => "None",
        Node::Bool(_) => "bool",
        Node::Int(_) | Node::BigInt(_) => "int",
        Node::Float(_) => "float",
        Node::Str(_) => "str",
        Node::ByteStr(_) => "py2 str",
        Node::Bytes(_) => "bytes",
        Node::ByteArray(_) => "bytearray",
        Node::Tuple(_) => "tuple",
        Node::List(_) => "list",
        Node::Dict(_) => "dict",
        Node::Set(_) => "set",
        Node::FrozenSet(_) => "frozenset",
        Node::Global(_) => "global",
        Node::Call(_) => "object",
        Node::PersId(_) => "persistent id",
        Node::Ext { .. } => "extension code",
    }
}

/// An int node from two's-complement little-endian bytes.
fn int_from_le(b: &[u8]) -> Node {
    if b.is_empty() {
        return Node::Int(0);
    }
    if b.len() <= 8 {
        let neg = b[b.len() - 1] & 0x80 != 0;
        let mut buf = if neg { [0xffu8; 8] } else { [0u8; 8] };
        buf[..b.len()].copy_from_slice(b);
        return Node::Int(i64::from_le_bytes(buf));
    }
    // Trim redundant sign bytes so that values that fit in i64 become Int.
    let neg = b[b.len() - 1] & 0x80 != 0;
    let fill = if neg { 0xff } else { 0 };
    let mut n = b.len();
    while n > 8 && b[n - 1] == fill && (b[n - 2] & 0x80 != 0) == neg {
        n -= 1;
    }
    if n <= 8 {
        return int_from_le(&b[..n]);
    }
    Node::BigInt(b[..n].into())
}

fn parse_decimal_u64(s: &str) -> Option<u64> {
    let s = s.trim();
    if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn parse_py_float(s: &str) -> Option<f64> {
    let t = s.trim();
    match t {
        "nan" | "NaN" | "-nan" => Some(f64::NAN),
        "inf" | "Infinity" => Some(f64::INFINITY),
        "-inf" | "-Infinity" => Some(f64::NEG_INFINITY),
        _ => t.parse().ok(),
    }
}

/// Decodes a Python 2 `repr` string literal: `'...'` or `"..."` with backslash escapes.
fn unquote_py2_string(l: &[u8]) -> Option<Vec<u8>> {
    let l = l.strip_suffix(b"\r").unwrap_or(l);
    if l.len() < 2 {
        return None;
    }
    let q = l[0];
    if (q != b'\'' && q != b'"') || l[l.len() - 1] != q {
        return None;
    }
    let body = &l[1..l.len() - 1];
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        let c = body[i];
        if c != b'\\' {
            out.push(c);
            i += 1;
            continue;
        }
        i += 1;
        let e = *body.get(i)?;
        i += 1;
        match e {
            b'n' => out.push(b'\n'),
            b't' => out.push(b'\t'),
            b'r' => out.push(b'\r'),
            b'a' => out.push(7),
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'v' => out.push(11),
            b'\\' | b'\'' | b'"' => out.push(e),
            b'\n' => {}
            b'x' => {
                let h = body.get(i..i + 2)?;
                out.push(u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()?);
                i += 2;
            }
            b'0'..=b'7' => {
                let mut v = (e - b'0') as u32;
                let mut k = 0;
                while k < 2 && i < body.len() && (b'0'..=b'7').contains(&body[i]) {
                    v = v * 8 + (body[i] - b'0') as u32;
                    i += 1;
                    k += 1;
                }
                out.push((v & 0xff) as u8);
            }
            other => {
                out.push(b'\\');
                out.push(other);
            }
        }
    }
    Some(out)
}

/// Decodes Python's `raw-unicode-escape`: bytes are Latin-1, `\uXXXX` and `\UXXXXXXXX` escapes.
fn raw_unicode_escape(l: &[u8]) -> Option<String> {
    let mut out = String::with_capacity(l.len());
    let mut i = 0;
    while i < l.len() {
        if l[i] == b'\\' && i + 1 < l.len() && (l[i + 1] == b'u' || l[i + 1] == b'U') {
            let n = if l[i + 1] == b'u' { 4 } else { 8 };
            let h = l.get(i + 2..i + 2 + n)?;
            let v = u32::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()?;
            out.push(char::from_u32(v).unwrap_or('\u{fffd}'));
            i += 2 + n;
        } else {
            out.push(l[i] as char);
            i += 1;
        }
    }
    Some(out)
}

/// UTF-8 with lone surrogates encoded as 3-byte sequences ('surrogatepass'): replaced by U+FFFD.
fn decode_surrogatepass(b: &[u8]) -> Option<Box<str>> {
    let mut out = String::with_capacity(b.len());
    let mut rest = b;
    while !rest.is_empty() {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                out.push_str(s);
                break;
            }
            Err(e) => {
                let (good, bad) = rest.split_at(e.valid_up_to());
                // valid_up_to guarantees `good` is UTF-8.
                out.push_str(std::str::from_utf8(good).ok()?);
                if bad.len() >= 3 && bad[0] == 0xed && (0xa0..=0xbf).contains(&bad[1]) {
                    out.push('\u{fffd}');
                    rest = &bad[3..];
                } else {
                    return None;
                }
            }
        }
    }
    Some(out.into())
}

#[cfg(test)]
mod tests;
