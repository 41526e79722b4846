//! Compact serialisation of code-length tables inside the block index.
//!
//! A table lists the code length of every symbol of the head alphabet. Used
//! symbols cluster (neighbouring exponents have similar frequencies), so the
//! lengths are written as a bit sequence over the symbols `lo..=hi` that
//! contains every used symbol, each coded relative to the previous length:
//!
//! ```text
//! lo, hi (one byte each for alphabets of up to 256 symbols, two bytes
//! little-endian for the 512 of 9-bit heads), then for each symbol in
//! lo..=hi (LSB-first bits):
//!   0          same length as the previous symbol (the first compares with 0)
//!   10 s       previous length + 1 (s = 0) or - 1 (s = 1)
//!   110 llll   the length l (0..=12), 0 meaning the symbol is unused
//!   111 nnnnn  n + 2 unused symbols (a run of 2..=33); the length becomes 0
//! ```
//!
//! The bit sequence is padded with zero bits to a whole byte.

use super::CodecError;
use super::bits::{BitWriter, peek_bits};
use super::huffman::{ALPHABET, MAX_CODE_BITS};

const MAX_ZERO_RUN: usize = 33;

pub type CodeLengths = [u8; ALPHABET];

/// Bytes a head symbol takes in the index (a table's `lo` and `hi`, a
/// constant block's value) for an alphabet of `alphabet` symbols: one up to
/// 256 symbols, else two, little-endian.
pub(crate) fn symbol_bytes(alphabet: usize) -> usize {
    if alphabet <= 256 { 1 } else { 2 }
}

/// Appends `symbol` in `symbol_bytes(alphabet)` bytes.
pub(crate) fn write_symbol(symbol: u16, alphabet: usize, out: &mut Vec<u8>) {
    out.extend_from_slice(&symbol.to_le_bytes()[..symbol_bytes(alphabet)]);
}

/// The symbol in `bytes`, which holds `symbol_bytes` of them.
pub(crate) fn read_symbol(bytes: &[u8]) -> u16 {
    bytes
        .iter()
        .rev()
        .fold(0u16, |value, &byte| value << 8 | byte as u16)
}

/// Appends the encoding of `lengths`, a code over the first `alphabet`
/// symbols, to `out`.
pub fn write_table(lengths: &CodeLengths, alphabet: usize, out: &mut Vec<u8>) {
    let used = |s: &usize| lengths[*s] > 0;
    let lo = (0..ALPHABET).find(used).expect("a table has used symbols");
    let hi = (0..ALPHABET).rev().find(used).unwrap();
    write_symbol(lo as u16, alphabet, out);
    write_symbol(hi as u16, alphabet, out);
    // At most 7 bits per symbol of the range.
    let mut buffer = [0u8; ALPHABET * 7 / 8];
    let mut bits = BitWriter::new(&mut buffer);
    let mut previous = 0u8;
    let mut symbol = lo;
    while symbol <= hi {
        let len = lengths[symbol];
        let zero_run = lengths[symbol..=hi]
            .iter()
            .take(MAX_ZERO_RUN)
            .take_while(|&&l| l == 0)
            .count();
        if zero_run >= 2 {
            bits.put(0b111, 3);
            bits.put((zero_run - 2) as u32, 5);
            previous = 0;
            symbol += zero_run;
            continue;
        }
        if len == previous {
            bits.put(0b0, 1);
        } else if len == previous + 1 {
            bits.put(0b001, 3);
        } else if len + 1 == previous {
            bits.put(0b101, 3);
        } else {
            bits.put(0b011, 3);
            bits.put(len as u32, 4);
        }
        previous = len;
        symbol += 1;
    }
    let len = bits.finish().div_ceil(8) as usize;
    out.extend_from_slice(&buffer[..len]);
}

/// Bytes [`write_table`] will use for `lengths`.
pub(crate) fn table_size(lengths: &CodeLengths, alphabet: usize) -> usize {
    let mut scratch = Vec::with_capacity(64);
    write_table(lengths, alphabet, &mut scratch);
    scratch.len()
}

/// Reads a table from the front of `bytes`; returns it and the bytes used.
/// `alphabet` is the number of head symbols of the tensor (2^head_bits).
pub fn read_table(bytes: &[u8], alphabet: usize) -> Result<(CodeLengths, usize), CodecError> {
    let corrupt = |what: &str| CodecError::InvalidTable(what.to_string());
    let bound_bytes = symbol_bytes(alphabet);
    let bounds = bytes
        .get(..2 * bound_bytes)
        .ok_or_else(|| corrupt("table truncated"))?;
    let (lo, hi) = bounds.split_at(bound_bytes);
    let (lo, hi) = (read_symbol(lo) as usize, read_symbol(hi) as usize);
    if lo > hi || hi >= alphabet {
        return Err(corrupt(&format!(
            "symbol range {lo}..={hi} is outside the alphabet of {alphabet}"
        )));
    }
    let body = &bytes[2 * bound_bytes..];
    let body_bits = body.len() as u64 * 8;
    let mut position = 0u64;
    let mut take = |bits: u32| -> Result<u32, CodecError> {
        if position + bits as u64 > body_bits {
            return Err(corrupt("table truncated"));
        }
        let value = peek_bits(body, position, bits);
        position += bits as u64;
        Ok(value)
    };
    let mut lengths = [0u8; ALPHABET];
    let mut previous = 0u8;
    let mut symbol = lo;
    while symbol <= hi {
        let len = if take(1)? == 0 {
            previous
        } else if take(1)? == 0 {
            if take(1)? == 0 {
                previous.checked_add(1)
            } else {
                previous.checked_sub(1)
            }
            .ok_or_else(|| corrupt("code length steps below zero"))?
        } else if take(1)? == 0 {
            take(4)? as u8
        } else {
            let run = take(5)? as usize + 2;
            if symbol + run > hi + 1 {
                return Err(corrupt("run of unused symbols passes the table's end"));
            }
            symbol += run;
            previous = 0;
            continue;
        };
        if len as u32 > MAX_CODE_BITS {
            return Err(corrupt(&format!(
                "code length {len} exceeds the limit of {MAX_CODE_BITS}"
            )));
        }
        lengths[symbol] = len;
        previous = len;
        symbol += 1;
    }
    let used = position.div_ceil(8);
    if position < used * 8 && peek_bits(body, position, (used * 8 - position) as u32) != 0 {
        return Err(corrupt("padding bits after the table are not zero"));
    }
    Ok((lengths, 2 * bound_bytes + used as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(lengths: &CodeLengths) {
        for alphabet in [256, ALPHABET] {
            if lengths[alphabet..].iter().any(|&len| len > 0) {
                continue;
            }
            let mut bytes = vec![0xAA];
            write_table(lengths, alphabet, &mut bytes);
            bytes.push(0x55);
            let (decoded, used) = read_table(&bytes[1..], alphabet).unwrap();
            assert_eq!(&decoded, lengths);
            assert_eq!(used, bytes.len() - 2);
            assert_eq!(table_size(lengths, alphabet), used);
        }
    }

    #[test]
    fn tables_round_trip() {
        let mut bf16_like = [0u8; ALPHABET];
        bf16_like[0] = 11;
        for (i, symbol) in (100..128).enumerate() {
            bf16_like[symbol] = [12, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 3, 2, 2][i % 14];
        }
        bf16_like[200] = 12;
        round_trip(&bf16_like);
        round_trip(&[8u8; ALPHABET]);
        let mut two = [0u8; ALPHABET];
        two[0] = 1;
        two[255] = 1;
        round_trip(&two);
        let mut signed = [0u8; ALPHABET];
        signed[120] = 1;
        signed[256 + 121] = 1;
        round_trip(&signed);
    }

    #[test]
    fn rejects_set_padding_bits() {
        let mut lengths = [0u8; ALPHABET];
        lengths[3] = 1;
        lengths[4] = 1;
        let mut bytes = Vec::new();
        write_table(&lengths, 256, &mut bytes);
        assert!(read_table(&bytes, 256).is_ok());
        *bytes.last_mut().unwrap() |= 0x80;
        let error = read_table(&bytes, 256).unwrap_err().to_string();
        assert!(error.contains("padding"), "{error}");
    }

    /// FORMAT.md: a `lo..hi` range wider than the symbols used changes no
    /// length, and is read as the writer's own table.
    #[test]
    fn reads_a_range_wider_than_the_symbols_used() {
        let mut lengths = [0u8; ALPHABET];
        lengths[10] = 1;
        lengths[11] = 2;
        lengths[12] = 2;
        let mut bytes = Vec::new();
        write_table(&lengths, 256, &mut bytes);
        assert_eq!(&bytes[..2], [10, 12]);
        // Two more unused symbols below: lo 8, then a zero run of two
        // (opcode 1 1 1, count 00000: one whole byte, 0b0000_0111), the
        // rest unchanged.
        let mut wider = vec![8, 12, 0b0000_0111];
        wider.extend_from_slice(&bytes[2..]);
        let (read, used) = read_table(&wider, 256).expect("a wider range is valid");
        assert_eq!(read, lengths);
        assert_eq!(used, wider.len());
    }

    #[test]
    fn rejects_range_outside_alphabet() {
        let mut lengths = [0u8; ALPHABET];
        lengths[3] = 1;
        lengths[40] = 1;
        let mut bytes = Vec::new();
        write_table(&lengths, 256, &mut bytes);
        assert!(read_table(&bytes, 16).is_err());
        assert!(read_table(&bytes, 64).is_ok());
        assert!(read_table(&bytes[..2], 64).is_err());
    }
}
