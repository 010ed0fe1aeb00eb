//! Element access: every element of a tensor view in row-major order (strides, offset), with
//! torch's conjugate / negative bits resolved bit for bit, and typed decoding.

use crate::torch::dtype::{DType, Kind, Part};
use crate::torch::model::{Object, Tensor};

/// Calls `f` with the byte offset (in the storage) of each element of `t`, row-major.
/// Offsets were validated against the storage when the checkpoint was opened.
pub fn for_each_element(t: &Tensor, mut f: impl FnMut(usize)) {
    let es = t.dtype.element_size();
    let n = t.numel();
    if n == 0 {
        return;
    }
    let nd = t.shape.len();
    let mut idx = vec![0i64; nd];
    // i128: a stride on a dimension of size 1 is never used but may be i64::MAX, so the
    // intermediate sums must not overflow. Offsets actually visited were validated at open.
    let mut off = t.storage_offset as i128;
    loop {
        f(usize::try_from(off)
            .unwrap_or(usize::MAX)
            .saturating_mul(es));
        // Advance the multi-index (last dimension fastest).
        let mut d = nd;
        loop {
            if d == 0 {
                return;
            }
            d -= 1;
            idx[d] += 1;
            off += t.stride[d] as i128;
            if idx[d] < t.shape[d] {
                break;
            }
            off -= t.stride[d] as i128 * t.shape[d] as i128;
            idx[d] = 0;
        }
    }
}

/// The conjugate and negative bits torch saves in a tensor's metadata (`{'conj': True}`,
/// `{'neg': True}`): the tensor's values are the storage's, conjugated or negated.
fn view_bits(t: &Tensor) -> (bool, bool) {
    let flag = |k: &str| {
        t.metadata
            .as_ref()
            .and_then(|m| m.get(k))
            .is_some_and(|v| matches!(v, Object::Bool(true)))
    };
    (flag("conj"), flag("neg"))
}

/// Applies a tensor's conjugate / negative bits to its elements with the bits torch's own
/// `resolve_conj()` and `resolve_neg()` give on an x86-64 CPU with AVX2, NaN payloads and
/// signed zeros included. Those kernels run a vectorized loop over runs of elements that are
/// contiguous in memory, two vectors per step, and finish each run with scalar code, and the
/// two paths differ: vectorized float16 / bfloat16 negation flips the sign bit where the
/// scalar one goes through float32 (quieting a NaN; bfloat16 turns it into 0x7fc0);
/// vectorized complex64 / complex128 negation computes `0 - x` (a NaN keeps its sign and is
/// quieted, a zero becomes +0) where the scalar one flips the sign bit; complex32 is always
/// scalar, through float32. float32 / float64 and every conjugation of complex64 / complex128
/// flip the sign bit; integers negate in two's complement. (Tensors over 32 768 elements are
/// split between threads, each with its own scalar tail; that split is not modelled.)
pub(crate) struct Resolver {
    dtype: DType,
    conj: bool,
    neg: bool,
    /// Elements per vectorized step of the negation kernel (0: never vectorized).
    step: u64,
    runs: Runs,
}

/// How the elements fall into contiguous runs in the kernel's loop.
enum Runs {
    /// Non-overlapping and dense: one run of `n` elements in memory order, starting at the
    /// storage offset.
    Dense { n: u64, base: u64 },
    /// Runs of `m` consecutive elements in row-major order (the inner dimensions that are
    /// contiguous in memory).
    Rows { m: u64 },
    /// No contiguous inner dimension: every element takes the scalar path.
    Scalar,
}

impl Resolver {
    /// The resolver for `t`, or `None` when it has neither bit set.
    pub(crate) fn new(t: &Tensor) -> Option<Resolver> {
        let (conj, neg) = view_bits(t);
        if !conj && !neg {
            return None;
        }
        Some(Resolver {
            dtype: t.dtype,
            conj,
            neg,
            step: vector_step(t.dtype),
            runs: runs_of(t),
        })
    }

    /// Resolves element number `index` (row-major) found at element offset `at` of the storage.
    pub(crate) fn apply(&self, el: &mut [u8], index: u64, at: usize) {
        let step = self.step.max(1);
        let vector = self.step > 0
            && match self.runs {
                Runs::Dense { n, base } => (at as u64).wrapping_sub(base) < n - n % step,
                Runs::Rows { m } => index % m < m - m % step,
                Runs::Scalar => false,
            };
        match self.dtype.kind() {
            Kind::Complex(part) => {
                let h = el.len() / 2;
                let (re, im) = el.split_at_mut(h);
                // With both bits, torch resolves them in one kernel: negation, then the
                // conjugate's sign flip.
                if self.neg {
                    negate(part, re, vector);
                    negate(part, im, vector);
                }
                if self.conj {
                    negate(part, im, false);
                }
            }
            Kind::Float if self.neg => {
                let part = match el.len() {
                    2 => Part::F16,
                    4 => Part::F32,
                    _ => Part::F64,
                };
                negate(part, el, vector);
            }
            Kind::BFloat if self.neg => negate(Part::BF16, el, vector),
            Kind::Float8(_) if self.neg => flip_sign(el),
            Kind::Int | Kind::UInt if self.neg => {
                // Two's-complement negation: invert and add one.
                let mut carry = 1u16;
                for b in el.iter_mut() {
                    let v = (!*b) as u16 + carry;
                    *b = v as u8;
                    carry = v >> 8;
                }
            }
            _ => {}
        }
    }
}

/// Elements per step of the vectorized negation kernel for `dtype`: two AVX2 (256-bit)
/// vectors; 0 where the scalar and vectorized paths agree or there is no vectorized path.
fn vector_step(dtype: DType) -> u64 {
    match (dtype.kind(), dtype.element_size()) {
        (Kind::Float, 2) | (Kind::BFloat, _) => 32,
        (Kind::Complex(Part::F32), _) => 8,
        (Kind::Complex(Part::F64), _) => 4,
        _ => 0,
    }
}

/// The contiguous runs of `t`'s elements (dimensions of size 1 do not count).
fn runs_of(t: &Tensor) -> Runs {
    let dims: Vec<(u64, i64)> = t
        .shape
        .iter()
        .zip(&t.stride)
        .filter(|(&size, _)| size > 1)
        .map(|(&size, &stride)| (size as u64, stride))
        .collect();
    let n: u64 = dims.iter().map(|d| d.0).product();
    let mut by_stride = dims.clone();
    by_stride.sort_by_key(|d| d.1);
    let mut expect = 1i128;
    let mut dense = true;
    for &(size, stride) in &by_stride {
        dense &= stride as i128 == expect;
        expect = expect.saturating_mul(size as i128);
    }
    if dense {
        return Runs::Dense {
            n,
            base: t.storage_offset.max(0) as u64,
        };
    }
    // Otherwise the result is row-major and the loop's inner run is the trailing dimensions
    // that are contiguous in the source as well.
    let mut m = 1u64;
    for &(size, stride) in dims.iter().rev() {
        if stride as i128 != m as i128 {
            break;
        }
        m = m.saturating_mul(size);
    }
    if m > 1 {
        Runs::Rows { m }
    } else {
        Runs::Scalar
    }
}

/// Flips the sign bit of a little-endian float.
fn flip_sign(x: &mut [u8]) {
    if let Some(last) = x.last_mut() {
        *last ^= 0x80;
    }
}

/// Negates one little-endian float of `part`'s format as torch's CPU kernels do on the
/// vectorized path (`vector`) or the scalar one (see [`Resolver`]).
fn negate(part: Part, x: &mut [u8], vector: bool) {
    let half = |x: &[u8]| -> Option<u16> { Some(u16::from_le_bytes([*x.first()?, *x.get(1)?])) };
    let store16 = |x: &mut [u8], v: u16| x.copy_from_slice(&v.to_le_bytes());
    match (part, vector) {
        // Through float32: a NaN is quieted with its payload kept, then the sign flips.
        (Part::F16, false) => {
            if let Some(mut v) = half(x) {
                if v & 0x7c00 == 0x7c00 && v & 0x03ff != 0 {
                    v |= 0x0200;
                }
                store16(x, v ^ 0x8000);
            }
        }
        // Through float32 and back with round-to-nearest-even: a NaN becomes 0x7fc0.
        (Part::BF16, false) => {
            if let Some(v) = half(x) {
                let nan = v & 0x7f80 == 0x7f80 && v & 0x007f != 0;
                store16(x, if nan { 0x7fc0 } else { v ^ 0x8000 });
            }
        }
        // `0 - x` for complex64 / complex128 lanes.
        (Part::F32, true) => {
            if let Ok(b) = <[u8; 4]>::try_from(&*x) {
                let v = u32::from_le_bytes(b);
                let r = if v & 0x7f80_0000 == 0x7f80_0000 && v & 0x007f_ffff != 0 {
                    v | 0x0040_0000
                } else if v & 0x7fff_ffff == 0 {
                    0
                } else {
                    v ^ 0x8000_0000
                };
                x.copy_from_slice(&r.to_le_bytes());
            }
        }
        (Part::F64, true) => {
            if let Ok(b) = <[u8; 8]>::try_from(&*x) {
                let v = u64::from_le_bytes(b);
                let exp = 0x7ff0_0000_0000_0000u64;
                let r = if v & exp == exp && v & !(exp | 1 << 63) != 0 {
                    v | 0x0008_0000_0000_0000
                } else if v << 1 == 0 {
                    0
                } else {
                    v ^ 1 << 63
                };
                x.copy_from_slice(&r.to_le_bytes());
            }
        }
        _ => flip_sign(x),
    }
}

/// One float of `p`'s format from its little-endian bytes (`b` holds at least its size).
pub(crate) fn part(p: Part, b: &[u8]) -> f64 {
    match p {
        Part::F16 => half::f16::from_le_bytes([b[0], b[1]]).to_f64(),
        Part::BF16 => half::bf16::from_le_bytes([b[0], b[1]]).to_f64(),
        Part::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
        Part::F64 => {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[..8]);
            f64::from_le_bytes(a)
        }
    }
}

/// A float element of `dtype` (float16/32/64, bfloat16, float8) as f64, NaN, infinities and
/// signed zeros kept; None for other kinds.
pub(crate) fn float_value(dtype: DType, b: &[u8]) -> Option<f64> {
    Some(match dtype.kind() {
        Kind::Float => match dtype.element_size() {
            2 => part(Part::F16, b),
            4 => part(Part::F32, b),
            _ => part(Part::F64, b),
        },
        Kind::BFloat => part(Part::BF16, b),
        Kind::Float8(f) => crate::torch::dtype::float8_to_f64(f, b[0]),
        _ => return None,
    })
}

/// An integer element (int, uint below 64 bits, bool, quantized) of `dtype` as i64,
/// sign-extended where the dtype is signed; None for other kinds.
pub(crate) fn int_value(dtype: DType, b: &[u8]) -> Option<i64> {
    let es = dtype.element_size();
    let unsigned = match dtype.kind() {
        Kind::Int => false,
        Kind::UInt | Kind::Bool => true,
        Kind::Quantized => dtype.is_unsigned_quantized(),
        _ => return None,
    };
    if es > 8 || (unsigned && es == 8) {
        return None;
    }
    let mut a = [0u8; 8];
    a[..es].copy_from_slice(b.get(..es)?);
    let v = i64::from_le_bytes(a);
    let shift = 64 - 8 * es as u32;
    Some(if unsigned { v } else { (v << shift) >> shift })
}

/// The elements of `t` as f64, one per element in row-major order (per-channel scales, dense
/// conversions): floats exactly (NaN, infinities, -0.0 kept), integers converted; elements of
/// other kinds, or outside `bytes`, give NaN so that later elements keep their positions.
pub fn elements_f64(t: &Tensor, bytes: &[u8]) -> Vec<f64> {
    let es = t.dtype.element_size();
    let mut v = Vec::with_capacity(t.numel().min(1 << 20) as usize);
    for_each_element(t, |o| {
        let x = bytes.get(o..o.saturating_add(es)).and_then(|b| {
            float_value(t.dtype, b).or_else(|| int_value(t.dtype, b).map(|i| i as f64))
        });
        v.push(x.unwrap_or(f64::NAN));
    });
    v
}

/// The elements of `t` as i64, in row-major order (index tensors, zero points); empty for
/// dtypes that are not integers. Elements outside `bytes` are skipped (views were checked
/// against their storage when the checkpoint was opened).
pub fn elements_i64(t: &Tensor, bytes: &[u8]) -> Vec<i64> {
    let es = t.dtype.element_size();
    let mut v = Vec::new();
    if int_value(t.dtype, &[0u8; 16]).is_none() {
        return v;
    }
    for_each_element(t, |o| {
        if let Some(x) = bytes
            .get(o..o.saturating_add(es))
            .and_then(|b| int_value(t.dtype, b))
        {
            v.push(x);
        }
    });
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A contiguous 1-D tensor of `dtype` made of `input`, resolved, as words of `W` bytes.
    fn resolved<const W: usize>(dtype: &str, input: &[u64], conj: bool, neg: bool) -> Vec<u64> {
        let dtype = DType::from_name(dtype).unwrap();
        let mut bytes: Vec<u8> = input
            .iter()
            .flat_map(|w| w.to_le_bytes()[..W].to_vec())
            .collect();
        let size = dtype.element_size();
        let n = (bytes.len() / size) as u64;
        let r = Resolver {
            dtype,
            conj,
            neg,
            step: vector_step(dtype),
            runs: Runs::Dense { n, base: 0 },
        };
        for (i, el) in bytes.chunks_mut(size).enumerate() {
            r.apply(el, i as u64, i);
        }
        bytes
            .chunks(W)
            .map(|c| {
                let mut w = [0u8; 8];
                w[..W].copy_from_slice(c);
                u64::from_le_bytes(w)
            })
            .collect()
    }

    fn words(dtype: &str, input: &[u16], conj: bool, neg: bool) -> Vec<u16> {
        let input: Vec<u64> = input.iter().map(|&w| w as u64).collect();
        resolved::<2>(dtype, &input, conj, neg)
            .into_iter()
            .map(|w| w as u16)
            .collect()
    }

    /// The bits torch 2.15 gives (resolve_conj / resolve_neg on x86-64), NaN payloads included.
    #[test]
    fn conj_and_neg_bits_match_torch() {
        let input = [0x7c01, 0x7c01, 0xfc01, 0x7e00, 0x3c00, 0x7d00];
        assert_eq!(
            words("complex32", &input, true, false),
            [0x7c01, 0xfe01, 0xfc01, 0xfe00, 0x3c00, 0xff00]
        );
        assert_eq!(
            words("complex32", &input, false, true),
            [0xfe01, 0xfe01, 0x7e01, 0xfe00, 0xbc00, 0xff00]
        );
        assert_eq!(
            words("complex32", &input, true, true),
            [0xfe01, 0x7e01, 0x7e01, 0x7e00, 0xbc00, 0x7f00]
        );
        assert_eq!(
            words("float16", &[0x7c01, 0x7e01, 0x3c00], false, true),
            [0xfe01, 0xfe01, 0xbc00]
        );
        assert_eq!(
            words("bfloat16", &[0x7f81, 0x7fc1, 0x3f80], false, true),
            [0x7fc0, 0x7fc0, 0xbf80]
        );
        // float32: the sign bit alone, signalling NaNs included.
        assert_eq!(
            words("float32", &[0x0001, 0x7f80, 0x0000, 0x3f80], false, true),
            [0x0001, 0xff80, 0x0000, 0xbf80]
        );
        assert_eq!(
            words("complex64", &[0x0001, 0x7f80, 0x0001, 0x7f80], true, false),
            [0x0001, 0x7f80, 0x0001, 0xff80]
        );
        assert_eq!(words("int16", &[1, 0x8000], false, true), [0xffff, 0x8000]);
    }

    /// Long enough for torch's vectorized loop: its lanes and its scalar tail differ.
    #[test]
    fn vectorized_negation_matches_torch() {
        // complex64, 20 elements: 16 through `0 - x`, the last 4 by sign flips.
        let pattern = [
            0x7f80_0001u64,
            0x7fc0_0001,
            0xffc0_0001,
            0,
            0x8000_0000,
            0x3f80_0000,
            0xff80_0001,
            0x8000_0000,
        ];
        let input: Vec<u64> = pattern.iter().cycle().take(40).copied().collect();
        let out = resolved::<4>("complex64", &input, false, true);
        let lanes = [
            0x7fc0_0001,
            0x7fc0_0001,
            0xffc0_0001,
            0,
            0,
            0xbf80_0000,
            0xffc0_0001,
            0,
        ];
        assert_eq!(out[..8], lanes);
        let tail = [
            0xff80_0001u64,
            0xffc0_0001,
            0x7fc0_0001,
            0x8000_0000,
            0,
            0xbf80_0000,
            0x7f80_0001,
            0,
        ];
        assert_eq!(out[32..], tail);
        // float16 / bfloat16, 64 elements: all vectorized, plain sign flips.
        let f16: Vec<u16> = [0x7c01u16, 0, 0x8000, 0x3c00].repeat(16);
        let got = words("float16", &f16, false, true);
        assert_eq!(got[..4], [0xfc01, 0x8000, 0, 0xbc00]);
        let bf16: Vec<u16> = [0x7f81u16, 0, 0x8000, 0x3f80].repeat(16);
        let got = words("bfloat16", &bf16, false, true);
        assert_eq!(got[..4], [0xff81, 0x8000, 0, 0xbf80]);
        // complex128, 8 elements: all vectorized.
        let c128: Vec<u64> =
            [0x7ff0_0000_0000_0001u64, 0, 1 << 63, 0x3ff0_0000_0000_0000].repeat(4);
        let got = resolved::<8>("complex128", &c128, false, true);
        assert_eq!(
            got[..4],
            [0x7ff8_0000_0000_0001, 0, 0, 0xbff0_0000_0000_0000]
        );
    }
}
