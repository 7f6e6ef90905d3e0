//! Crockford's base32: 32 symbols, digits and upper-case letters without
//! I, L, O and U, so no two symbols look alike and case does not matter.
//!
//! Decoding is lenient the way Crockford specifies: lower case is accepted,
//! `O`/`o` read as zero and `I`/`i`/`L`/`l` as one, because those are the
//! mistakes people make copying from paper.

/// The 32 symbols, in value order.
pub(crate) const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// The value of one symbol, or `None` if it is not part of the alphabet.
pub(crate) fn symbol_value(c: char) -> Option<u8> {
    let upper = c.to_ascii_uppercase();
    match upper {
        'O' => Some(0),
        'I' | 'L' => Some(1),
        _ if upper.is_ascii() => ALPHABET
            .iter()
            .position(|&s| s == upper as u8)
            .and_then(|p| u8::try_from(p).ok()),
        _ => None,
    }
}

/// Number of symbols needed for `len` bytes.
pub(crate) const fn encoded_len(len: usize) -> usize {
    (len * 8).div_ceil(5)
}

/// Encodes bytes most-significant bit first; the last symbol is padded with
/// zero bits.
pub(crate) fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(encoded_len(bytes.len()));
    let mut buffer: u16 = 0;
    let mut bits = 0u32;
    for &byte in bytes {
        buffer = (buffer << 8) | u16::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[usize::from((buffer >> bits) & 0x1f)] as char);
        }
        buffer &= (1 << bits) - 1;
    }
    if bits > 0 {
        out.push(ALPHABET[usize::from((buffer << (5 - bits)) & 0x1f)] as char);
    }
    out
}

/// Decodes symbol values (already checked against the alphabet) into `N`
/// bytes. Returns `None` when the padding bits of the last symbol are not
/// zero, which no encoder produces: a mistyped final character.
pub(crate) fn decode_values<const N: usize>(values: &[u8]) -> Option<[u8; N]> {
    debug_assert_eq!(values.len(), encoded_len(N));
    let mut out = [0u8; N];
    let mut buffer: u16 = 0;
    let mut bits = 0u32;
    let mut index = 0;
    for &value in values {
        buffer = (buffer << 5) | u16::from(value & 0x1f);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            if index < N {
                out[index] = (buffer >> bits) as u8;
                index += 1;
            }
        }
        buffer &= (1 << bits) - 1;
    }
    (buffer == 0 && index == N).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let bytes: Vec<u8> = (0u8..39).map(|b| b.wrapping_mul(37)).collect();
        let text = encode(&bytes);
        assert_eq!(text.len(), encoded_len(39));
        let values: Vec<u8> = text.chars().map(|c| symbol_value(c).unwrap()).collect();
        let back: [u8; 39] = decode_values(&values).unwrap();
        assert_eq!(back.as_slice(), bytes.as_slice());
    }

    #[test]
    fn look_alikes_and_case_are_forgiven() {
        assert_eq!(symbol_value('o'), Some(0));
        assert_eq!(symbol_value('L'), Some(1));
        assert_eq!(symbol_value('i'), Some(1));
        assert_eq!(symbol_value('z'), Some(31));
        assert_eq!(symbol_value('U'), None);
        assert_eq!(symbol_value('é'), None);
        assert_eq!(symbol_value('-'), None);
    }

    #[test]
    fn nonzero_padding_is_refused() {
        // One byte takes two symbols; the second carries two padding bits.
        assert_eq!(decode_values::<1>(&[0, 1]), None);
        assert_eq!(decode_values::<1>(&[0, 4]), Some([1]));
    }
}
