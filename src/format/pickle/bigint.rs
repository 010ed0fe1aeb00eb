//! Arbitrary-size integers as pickle carries them: two's-complement little-endian bytes.
//! Only conversion to and from decimal text is needed, so a few lines of schoolbook
//! arithmetic on u32 limbs do (sizes are bounded by [`super::Limits::max_int_bytes`]).

/// Formats two's-complement little-endian bytes as a decimal string.
pub fn bigint_to_decimal(le: &[u8]) -> String {
    if le.is_empty() {
        return "0".into();
    }
    let neg = le[le.len() - 1] & 0x80 != 0;
    // Magnitude: negate when negative (invert and add one).
    let mut mag: Vec<u8> = le.to_vec();
    if neg {
        let mut carry = 1u16;
        for b in mag.iter_mut() {
            let v = (!*b) as u16 + carry;
            *b = v as u8;
            carry = v >> 8;
        }
    }
    let mut limbs: Vec<u32> = mag
        .chunks(4)
        .map(|c| {
            let mut a = [0u8; 4];
            a[..c.len()].copy_from_slice(c);
            u32::from_le_bytes(a)
        })
        .collect();
    let mut chunks = Vec::new();
    while limbs.iter().any(|&l| l != 0) {
        let mut rem = 0u64;
        for l in limbs.iter_mut().rev() {
            let cur = (rem << 32) | *l as u64;
            *l = (cur / 1_000_000_000) as u32;
            rem = cur % 1_000_000_000;
        }
        chunks.push(rem as u32);
        while limbs.last() == Some(&0) {
            limbs.pop();
        }
    }
    let mut s = String::new();
    if neg {
        s.push('-');
    }
    match chunks.split_last() {
        None => s.push('0'),
        Some((first, rest)) => {
            s.push_str(&first.to_string());
            for c in rest.iter().rev() {
                s.push_str(&format!("{c:09}"));
            }
        }
    }
    s
}

/// Parses a decimal string (optional sign) into minimal two's-complement little-endian bytes.
pub fn decimal_to_bigint(s: &str) -> Option<Vec<u8>> {
    let (neg, digits) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let mut limbs: Vec<u32> = vec![0];
    for d in digits.bytes() {
        let mut carry = (d - b'0') as u64;
        for l in limbs.iter_mut() {
            let v = *l as u64 * 10 + carry;
            *l = v as u32;
            carry = v >> 32;
        }
        if carry > 0 {
            limbs.push(carry as u32);
        }
    }
    let mut bytes: Vec<u8> = limbs.iter().flat_map(|l| l.to_le_bytes()).collect();
    bytes.push(0); // room for the sign bit
    if neg {
        let mut carry = 1u16;
        for b in bytes.iter_mut() {
            let v = (!*b) as u16 + carry;
            *b = v as u8;
            carry = v >> 8;
        }
    }
    // Minimal length: drop redundant sign bytes.
    let fill = if neg { 0xff } else { 0 };
    while bytes.len() > 1 && bytes[bytes.len() - 1] == fill {
        let next_sign = bytes[bytes.len() - 2] & 0x80 != 0;
        if next_sign != neg {
            break;
        }
        bytes.pop();
    }
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for s in [
            "0",
            "1",
            "-1",
            "127",
            "128",
            "-128",
            "-129",
            "255",
            "1180591620717411303424",
            "-1180591620717411303424",
            "9223372036854775808",
            "123456789012345678901234567890123456789",
        ] {
            let b = decimal_to_bigint(s).unwrap();
            assert_eq!(bigint_to_decimal(&b), s, "{s} -> {b:?}");
        }
        assert_eq!(decimal_to_bigint("128").unwrap(), vec![0x80, 0]);
        assert_eq!(decimal_to_bigint("-128").unwrap(), vec![0x80]);
        assert!(decimal_to_bigint("12a").is_none());
        assert!(decimal_to_bigint("").is_none());
        assert!(decimal_to_bigint("-").is_none());
    }
}
