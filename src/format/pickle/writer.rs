//! A protocol-2 pickle writer emitting only the opcodes `torch.save` itself emits, so that
//! `torch.load(weights_only=True)` accepts the output.

use std::collections::HashMap;

/// Builds a protocol-2 pickle opcode by opcode. Strings and globals are memoized by value and
/// re-emitted with `BINGET`, as Python's pickler does for the interned strings torch repeats.
#[derive(Debug)]
pub struct PickleWriter {
    buf: Vec<u8>,
    next_memo: u32,
    strings: HashMap<String, u32>,
    globals: HashMap<(String, String), u32>,
}

impl Default for PickleWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl PickleWriter {
    /// Starts a pickle (`PROTO 2`).
    pub fn new() -> Self {
        PickleWriter {
            buf: vec![0x80, 2],
            next_memo: 0,
            strings: HashMap::new(),
            globals: HashMap::new(),
        }
    }

    fn memoize(&mut self) -> u32 {
        let i = self.next_memo;
        self.next_memo += 1;
        if i < 256 {
            self.buf.extend_from_slice(&[b'q', i as u8]);
        } else {
            self.buf.push(b'r');
            self.buf.extend_from_slice(&i.to_le_bytes());
        }
        i
    }

    fn get(&mut self, i: u32) {
        if i < 256 {
            self.buf.extend_from_slice(&[b'h', i as u8]);
        } else {
            self.buf.push(b'j');
            self.buf.extend_from_slice(&i.to_le_bytes());
        }
    }

    /// `None`.
    pub fn none(&mut self) {
        self.buf.push(b'N');
    }
    /// `True` / `False`.
    pub fn bool(&mut self, v: bool) {
        self.buf.push(if v { 0x88 } else { 0x89 });
    }
    /// An int, in the smallest encoding Python uses.
    pub fn int(&mut self, v: i64) {
        if (0..=0xff).contains(&v) {
            self.buf.extend_from_slice(&[b'K', v as u8]);
        } else if (0..=0xffff).contains(&v) {
            self.buf.push(b'M');
            self.buf.extend_from_slice(&(v as u16).to_le_bytes());
        } else if i32::try_from(v).is_ok() {
            self.buf.push(b'J');
            self.buf.extend_from_slice(&(v as i32).to_le_bytes());
        } else {
            let b = v.to_le_bytes();
            let mut n = 8;
            let neg = v < 0;
            let fill = if neg { 0xff } else { 0 };
            while n > 1 && b[n - 1] == fill && ((b[n - 2] & 0x80) != 0) == neg {
                n -= 1;
            }
            self.bigint(&b[..n]);
        }
    }
    /// An int given as two's-complement little-endian bytes (`LONG1`/`LONG4`).
    pub fn bigint(&mut self, le: &[u8]) {
        if le.len() < 256 {
            self.buf.extend_from_slice(&[0x8a, le.len() as u8]);
        } else {
            self.buf.push(0x8b);
            self.buf.extend_from_slice(&(le.len() as u32).to_le_bytes());
        }
        self.buf.extend_from_slice(le);
    }
    /// A float (`BINFLOAT`, big-endian).
    pub fn float(&mut self, v: f64) {
        self.buf.push(b'G');
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    /// A str (`BINUNICODE`), memoized by value.
    pub fn str(&mut self, s: &str) {
        if let Some(&i) = self.strings.get(s) {
            self.get(i);
            return;
        }
        self.buf.push(b'X');
        self.buf.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(s.as_bytes());
        let i = self.memoize();
        self.strings.insert(s.to_string(), i);
    }
    /// `bytes`, as protocol 2 writes them: `_codecs.encode(latin1_text, 'latin1')`.
    pub fn bytes(&mut self, b: &[u8]) {
        self.global("_codecs", "encode");
        let text: String = b.iter().map(|&c| c as char).collect();
        self.str(&text);
        self.str("latin1");
        self.buf.push(0x86);
        self.memoize();
        self.reduce();
    }
    /// A global reference (`GLOBAL module\nname\n`), memoized by value.
    pub fn global(&mut self, module: &str, name: &str) {
        let key = (module.to_string(), name.to_string());
        if let Some(&i) = self.globals.get(&key) {
            self.get(i);
            return;
        }
        self.buf.push(b'c');
        self.buf.extend_from_slice(module.as_bytes());
        self.buf.push(b'\n');
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(b'\n');
        let i = self.memoize();
        self.globals.insert(key, i);
    }
    /// `MARK`.
    pub fn mark(&mut self) {
        self.buf.push(b'(');
    }
    /// Closes a tuple of `n` items pushed since the matching [`Self::mark`]
    /// (`n` of 0..=3 use the short opcodes and need no mark; pass `marked` accordingly).
    pub fn tuple(&mut self, n: usize, marked: bool) {
        match (n, marked) {
            (0, false) => self.buf.push(b')'),
            (1, false) => self.buf.push(0x85),
            (2, false) => self.buf.push(0x86),
            (3, false) => self.buf.push(0x87),
            _ => self.buf.push(b't'),
        }
        if n > 0 {
            self.memoize();
        }
    }
    /// `EMPTY_LIST`, memoized.
    pub fn empty_list(&mut self) {
        self.buf.push(b']');
        self.memoize();
    }
    /// `EMPTY_DICT`, memoized.
    pub fn empty_dict(&mut self) {
        self.buf.push(b'}');
        self.memoize();
    }
    /// `APPENDS` (items since the last mark go into the list below it).
    pub fn appends(&mut self) {
        self.buf.push(b'e');
    }
    /// `APPEND` (one item into the list below it).
    pub fn append(&mut self) {
        self.buf.push(b'a');
    }
    /// `SETITEMS`.
    pub fn setitems(&mut self) {
        self.buf.push(b'u');
    }
    /// `SETITEM`.
    pub fn setitem(&mut self) {
        self.buf.push(b's');
    }
    /// `REDUCE`, memoized as Python does.
    pub fn reduce(&mut self) {
        self.buf.push(b'R');
        self.memoize();
    }
    /// `NEWOBJ` (`cls.__new__(cls, *args)` of the class and argument tuple below), memoized.
    pub fn newobj(&mut self) {
        self.buf.push(0x81);
        self.memoize();
    }
    /// `BUILD`.
    pub fn build(&mut self) {
        self.buf.push(b'b');
    }
    /// `BINPERSID`.
    pub fn binpersid(&mut self) {
        self.buf.push(b'Q');
    }
    /// `STOP`, returning the pickle.
    pub fn finish(mut self) -> Vec<u8> {
        self.buf.push(b'.');
        self.buf
    }
}
