//! The one table of dtypes: torch name <-> ScalarType / storage class name <-> element size
//! <-> safetensors name. Every other part of ptfile asks this table; there is no second one.

use std::fmt;

/// How the elements of a dtype are encoded (for printing values and byte swapping).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Kind {
    /// IEEE binary floats (float16/32/64).
    Float,
    /// bfloat16.
    BFloat,
    /// An 8-bit float format (see [`Float8`]).
    Float8(Float8),
    /// Signed integers.
    Int,
    /// Unsigned integers.
    UInt,
    /// bool (one byte, 0 or 1).
    Bool,
    /// Complex numbers; the element is two halves of the given part dtype.
    Complex(Part),
    /// Quantized integers (qint8, quint8, qint32, packed quint4x2/2x4).
    Quantized,
    /// Opaque bit containers (bits8, bits16, ...), packed sub-byte types and shell dtypes.
    Opaque,
}

/// The part type of a complex dtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Part {
    /// float16 halves (complex32).
    F16,
    /// bfloat16 halves (bcomplex32).
    BF16,
    /// float32 halves (complex64).
    F32,
    /// float64 halves (complex128).
    F64,
}

/// The 8-bit float encodings torch has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Float8 {
    /// float8_e5m2 (IEEE-like, with inf and NaN).
    E5M2,
    /// float8_e4m3fn (no inf; NaN is S.1111.111).
    E4M3FN,
    /// float8_e5m2fnuz (no inf, no -0; NaN is 0x80; bias 16).
    E5M2FNUZ,
    /// float8_e4m3fnuz (no inf, no -0; NaN is 0x80; bias 8).
    E4M3FNUZ,
    /// float8_e8m0fnu (exponent only; 0xFF is NaN).
    E8M0FNU,
}

/// A torch dtype (an entry of the table).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct DType(u8);

struct Entry {
    name: &'static str,
    scalar: &'static str,
    size: usize,
    kind: Kind,
    legacy: bool,
    safetensors: Option<&'static str>,
    aliases: &'static [&'static str],
}

macro_rules! e {
    ($n:expr, $s:expr, $sz:expr, $k:expr, $l:expr, $st:expr) => {
        e!($n, $s, $sz, $k, $l, $st, &[])
    };
    ($n:expr, $s:expr, $sz:expr, $k:expr, $l:expr, $st:expr, $al:expr) => {
        Entry {
            name: $n,
            scalar: $s,
            size: $sz,
            kind: $k,
            legacy: $l,
            safetensors: $st,
            aliases: $al,
        }
    };
}

use Kind::*;

/// name, ScalarType, element size, kind, has a legacy typed storage class, safetensors name.
static TABLE: &[Entry] = &[
    e!(
        "float64",
        "Double",
        8,
        Float,
        true,
        Some("F64"),
        &["double"]
    ),
    e!("float32", "Float", 4, Float, true, Some("F32"), &["float"]),
    e!("float16", "Half", 2, Float, true, Some("F16"), &["half"]),
    e!("bfloat16", "BFloat16", 2, BFloat, true, Some("BF16")),
    e!("int64", "Long", 8, Int, true, Some("I64"), &["long"]),
    e!("int32", "Int", 4, Int, true, Some("I32"), &["int"]),
    e!("int16", "Short", 2, Int, true, Some("I16"), &["short"]),
    e!("int8", "Char", 1, Int, true, Some("I8")),
    e!("uint8", "Byte", 1, UInt, true, Some("U8")),
    e!("bool", "Bool", 1, Bool, true, Some("BOOL")),
    e!(
        "complex128",
        "ComplexDouble",
        16,
        Complex(Part::F64),
        true,
        Some("C128"),
        &["cdouble"]
    ),
    e!(
        "complex64",
        "ComplexFloat",
        8,
        Complex(Part::F32),
        true,
        Some("C64"),
        &["cfloat"]
    ),
    e!("qint8", "QInt8", 1, Quantized, true, None),
    e!("quint8", "QUInt8", 1, Quantized, true, None),
    e!("qint32", "QInt32", 4, Quantized, true, None),
    e!("quint4x2", "QUInt4x2", 1, Quantized, true, None),
    e!("quint2x4", "QUInt2x4", 1, Quantized, true, None),
    e!(
        "complex32",
        "ComplexHalf",
        4,
        Complex(Part::F16),
        false,
        None,
        &["chalf"]
    ),
    e!("uint16", "UInt16", 2, UInt, false, Some("U16")),
    e!("uint32", "UInt32", 4, UInt, false, Some("U32")),
    e!("uint64", "UInt64", 8, UInt, false, Some("U64")),
    e!(
        "float8_e5m2",
        "Float8_e5m2",
        1,
        Float8(self::Float8::E5M2),
        false,
        Some("F8_E5M2")
    ),
    e!(
        "float8_e4m3fn",
        "Float8_e4m3fn",
        1,
        Float8(self::Float8::E4M3FN),
        false,
        Some("F8_E4M3")
    ),
    e!(
        "float8_e5m2fnuz",
        "Float8_e5m2fnuz",
        1,
        Float8(self::Float8::E5M2FNUZ),
        false,
        None
    ),
    e!(
        "float8_e4m3fnuz",
        "Float8_e4m3fnuz",
        1,
        Float8(self::Float8::E4M3FNUZ),
        false,
        None
    ),
    e!(
        "float8_e8m0fnu",
        "Float8_e8m0fnu",
        1,
        Float8(self::Float8::E8M0FNU),
        false,
        Some("F8_E8M0")
    ),
    e!(
        "float4_e2m1fn_x2",
        "Float4_e2m1fn_x2",
        1,
        Opaque,
        false,
        Some("F4")
    ),
    e!("bits8", "Bits8", 1, Opaque, false, None),
    e!("bits16", "Bits16", 2, Opaque, false, None),
    e!("bits1x8", "Bits1x8", 1, Opaque, false, None),
    e!("bits2x4", "Bits2x4", 1, Opaque, false, None),
    e!("bits4x2", "Bits4x2", 1, Opaque, false, None),
    e!(
        "bcomplex32",
        "BComplex32",
        4,
        Complex(Part::BF16),
        false,
        None
    ),
    // Shell dtypes: names torch accepts as globals; no tensor data of them can exist.
    e!("uint1", "UInt1", 1, Opaque, false, None),
    e!("uint2", "UInt2", 1, Opaque, false, None),
    e!("uint3", "UInt3", 1, Opaque, false, None),
    e!("uint4", "UInt4", 1, Opaque, false, None),
    e!("uint5", "UInt5", 1, Opaque, false, None),
    e!("uint6", "UInt6", 1, Opaque, false, None),
    e!("uint7", "UInt7", 1, Opaque, false, None),
    e!("int1", "Int1", 1, Opaque, false, None),
    e!("int2", "Int2", 1, Opaque, false, None),
    e!("int3", "Int3", 1, Opaque, false, None),
    e!("int4", "Int4", 1, Opaque, false, None),
    e!("int5", "Int5", 1, Opaque, false, None),
    e!("int6", "Int6", 1, Opaque, false, None),
    e!("int7", "Int7", 1, Opaque, false, None),
];

/// Whether two strs are equal, in a const context.
const fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// The table entry named `name`, found at compile time (a name missing from the table fails
/// the build, so the constants below cannot drift from the table).
const fn named(name: &str) -> DType {
    let mut i = 0;
    while i < TABLE.len() {
        if same(TABLE[i].name, name) {
            return DType(i as u8);
        }
        i += 1;
    }
    panic!("a DType constant names a dtype missing from the table")
}

impl DType {
    /// float64 (`torch.double`).
    pub const FLOAT64: DType = named("float64");
    /// float32 (`torch.float`).
    pub const FLOAT32: DType = named("float32");
    /// float16 (`torch.half`).
    pub const FLOAT16: DType = named("float16");
    /// bfloat16.
    pub const BFLOAT16: DType = named("bfloat16");
    /// int64 (`torch.long`).
    pub const INT64: DType = named("int64");
    /// int32 (`torch.int`).
    pub const INT32: DType = named("int32");
    /// int16 (`torch.short`).
    pub const INT16: DType = named("int16");
    /// int8.
    pub const INT8: DType = named("int8");
    /// uint8 (the dtype of untyped storages).
    pub const UINT8: DType = named("uint8");
    /// uint16.
    pub const UINT16: DType = named("uint16");
    /// uint32.
    pub const UINT32: DType = named("uint32");
    /// uint64.
    pub const UINT64: DType = named("uint64");
    /// bool.
    pub const BOOL: DType = named("bool");
    /// complex64 (`torch.cfloat`).
    pub const COMPLEX64: DType = named("complex64");
    /// complex128 (`torch.cdouble`).
    pub const COMPLEX128: DType = named("complex128");
    /// float8_e4m3fn.
    pub const FLOAT8_E4M3FN: DType = named("float8_e4m3fn");
    /// float8_e5m2.
    pub const FLOAT8_E5M2: DType = named("float8_e5m2");

    fn e(self) -> &'static Entry {
        &TABLE[self.0 as usize]
    }
    /// Every dtype in the table.
    pub fn all() -> impl Iterator<Item = DType> {
        (0..TABLE.len() as u8).map(DType)
    }
    /// torch's name without `torch.` (`float32`, `float8_e4m3fn`).
    pub fn name(self) -> &'static str {
        self.e().name
    }
    /// The c10 ScalarType name (`Float`, `Float8_e4m3fn`).
    pub fn scalar_type(self) -> &'static str {
        self.e().scalar
    }
    /// Size of one element in bytes.
    pub fn element_size(self) -> usize {
        self.e().size
    }
    /// How elements are encoded.
    pub fn kind(self) -> Kind {
        self.e().kind
    }
    /// Whether torch has a legacy typed storage class (`torch.FloatStorage`) for it; the
    /// others are saved as `torch.storage.UntypedStorage` with `_rebuild_tensor_v3`.
    pub fn has_legacy_storage(self) -> bool {
        self.e().legacy
    }
    /// The legacy storage class name (`FloatStorage`), for dtypes that have one.
    pub fn legacy_storage_class(self) -> Option<String> {
        self.e()
            .legacy
            .then(|| format!("{}Storage", self.e().scalar))
    }
    /// The safetensors dtype name, where safetensors has one.
    pub fn safetensors_name(self) -> Option<&'static str> {
        self.e().safetensors
    }
    /// Whether this is an unsigned quantized dtype (quint8, quint4x2, quint2x4).
    pub fn is_unsigned_quantized(self) -> bool {
        self.kind() == Kind::Quantized && self.scalar_type().starts_with("QU")
    }
    /// Whether tensors of this dtype can carry data (not a shell dtype).
    pub fn is_shell(self) -> bool {
        // The shell dtypes are the table's tail, from uint1 on.
        self.0 >= named("uint1").0
    }
    /// Looks up a dtype by torch name or alias (`float32`, `float`, `torch.float32`).
    pub fn from_name(name: &str) -> Option<DType> {
        let name = name.strip_prefix("torch.").unwrap_or(name);
        TABLE
            .iter()
            .position(|e| e.name == name || e.aliases.contains(&name))
            .map(|i| DType(i as u8))
    }
    /// Looks up a dtype by its storage class name: legacy (`FloatStorage`) or the ScalarType
    /// form TorchScript writes for every dtype (`Float8_e4m3fnStorage`, `UInt16Storage`).
    pub fn from_storage_class(name: &str) -> Option<DType> {
        let scalar = name.strip_suffix("Storage")?;
        TABLE
            .iter()
            .position(|e| e.scalar == scalar)
            .map(|i| DType(i as u8))
    }
    /// Looks up a dtype by safetensors name.
    pub fn from_safetensors(name: &str) -> Option<DType> {
        TABLE
            .iter()
            .position(|e| e.safetensors == Some(name))
            .map(|i| DType(i as u8))
    }
    /// The size in bytes of the units that byte order applies to (complex: each half).
    pub fn swap_unit(self) -> usize {
        match self.kind() {
            Kind::Complex(_) => self.element_size() / 2,
            _ => self.element_size(),
        }
    }
}

impl fmt::Debug for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "torch.{}", self.name())
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Decodes an 8-bit float.
pub fn float8_to_f64(fmt: Float8, b: u8) -> f64 {
    let sign = if b & 0x80 != 0 { -1.0 } else { 1.0 };
    let (ebits, mbits, bias): (u32, u32, i32) = match fmt {
        Float8::E5M2 => (5, 2, 15),
        Float8::E4M3FN => (4, 3, 7),
        Float8::E5M2FNUZ => (5, 2, 16),
        Float8::E4M3FNUZ => (4, 3, 8),
        Float8::E8M0FNU => {
            return if b == 0xff {
                f64::NAN
            } else {
                2f64.powi(b as i32 - 127)
            }
        }
    };
    let e = ((b >> mbits) & ((1 << ebits) - 1) as u8) as i32;
    let m = (b & ((1 << mbits) - 1) as u8) as f64;
    let emax = (1 << ebits) - 1;
    match fmt {
        Float8::E5M2 if e == emax => {
            return if m == 0.0 {
                sign * f64::INFINITY
            } else {
                f64::NAN
            };
        }
        Float8::E4M3FN if e == emax && m == 7.0 => return f64::NAN,
        Float8::E5M2FNUZ | Float8::E4M3FNUZ if b == 0x80 => return f64::NAN,
        _ => {}
    }
    let scale = (1u32 << mbits) as f64;
    if e == 0 {
        sign * (m / scale) * 2f64.powi(1 - bias)
    } else {
        sign * (1.0 + m / scale) * 2f64.powi(e - bias)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_lookups_agree() {
        for d in DType::all() {
            assert_eq!(DType::from_name(d.name()), Some(d));
            if !d.is_shell() {
                assert_eq!(
                    DType::from_storage_class(&format!("{}Storage", d.scalar_type())),
                    Some(d)
                );
            }
            if let Some(s) = d.safetensors_name() {
                assert_eq!(DType::from_safetensors(s), Some(d));
            }
        }
        assert_eq!(DType::from_name("float32"), Some(DType::FLOAT32));
        assert_eq!(DType::from_name("bfloat16"), Some(DType::BFLOAT16));
        assert_eq!(DType::from_name("uint8"), Some(DType::UINT8));
        assert_eq!(
            DType::from_storage_class("LongStorage").unwrap().name(),
            "int64"
        );
        assert_eq!(
            DType::from_storage_class("CharStorage").unwrap().name(),
            "int8"
        );
        assert_eq!(DType::from_name("torch.half").unwrap().name(), "float16");
        assert!(DType::from_name("uint1").unwrap().is_shell());
        assert!(!DType::from_name("bcomplex32").unwrap().is_shell());
        assert_eq!(DType::from_name("complex64").unwrap().swap_unit(), 4);
    }

    #[test]
    fn float8_values() {
        assert_eq!(float8_to_f64(Float8::E4M3FN, 0x7e), 448.0);
        assert!(float8_to_f64(Float8::E4M3FN, 0x7f).is_nan());
        assert_eq!(float8_to_f64(Float8::E5M2, 0x7c), f64::INFINITY);
        assert_eq!(float8_to_f64(Float8::E5M2, 0x3e), 1.5);
        assert!(float8_to_f64(Float8::E5M2FNUZ, 0x80).is_nan());
        assert_eq!(float8_to_f64(Float8::E4M3FNUZ, 0x44), 1.5);
        assert_eq!(float8_to_f64(Float8::E8M0FNU, 127), 1.0);
        assert_eq!(float8_to_f64(Float8::E4M3FN, 0x01), 2f64.powi(-9));
    }
}
