//! LSB-first bit streams: bit `k` of a stream is bit `k % 8` of byte `k / 8`,
//! so a little-endian load of any word puts the next bits at its bottom.
//! The GPU decoders read the same layout with 32-bit loads.

/// Appends bit fields to a byte vector.
#[derive(Default)]
pub struct BitWriter {
    bytes: Vec<u8>,
    pending: u64,
    pending_bits: u32,
}

impl BitWriter {
    pub fn with_capacity(bytes: usize) -> Self {
        BitWriter {
            bytes: Vec::with_capacity(bytes),
            pending: 0,
            pending_bits: 0,
        }
    }

    /// Appends the low `bits` bits of `value` (`bits` ≤ 32).
    #[inline(always)]
    pub fn put(&mut self, value: u32, bits: u32) {
        debug_assert!(bits <= 32 && (bits == 32 || value >> bits == 0));
        self.pending |= (value as u64) << self.pending_bits;
        self.pending_bits += bits;
        if self.pending_bits >= 32 {
            self.bytes
                .extend_from_slice(&(self.pending as u32).to_le_bytes());
            self.pending >>= 32;
            self.pending_bits -= 32;
        }
    }

    /// Bits written so far.
    pub fn bit_len(&self) -> u64 {
        self.bytes.len() as u64 * 8 + self.pending_bits as u64
    }

    /// Pads with zero bits to a whole byte and returns the bytes.
    pub fn finish(mut self) -> Vec<u8> {
        let tail_bytes = self.pending_bits.div_ceil(8) as usize;
        self.bytes
            .extend_from_slice(&self.pending.to_le_bytes()[..tail_bytes]);
        self.bytes
    }

    /// Pads to a whole byte and appends the result to `out`.
    pub fn finish_into(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.finish());
    }
}

/// Reads `bits` (≤ 32) bits starting at bit `position`; bits past the end of
/// `bytes` read as zero, so a hostile stream can never index out of bounds.
#[inline(always)]
pub fn peek_bits(bytes: &[u8], position: u64, bits: u32) -> u32 {
    debug_assert!(bits <= 32);
    let byte = (position / 8) as usize;
    let shift = (position % 8) as u32;
    let word = load_le_u64_padded(bytes, byte);
    ((word >> shift) & ((1u64 << bits) - 1)) as u32
}

/// Little-endian u64 at `offset`, zero-filled past the end of `bytes`.
#[inline(always)]
pub fn load_le_u64_padded(bytes: &[u8], offset: usize) -> u64 {
    if let Some(window) = bytes.get(offset..offset + 8) {
        u64::from_le_bytes(window.try_into().unwrap())
    } else {
        let mut buf = [0u8; 8];
        if offset < bytes.len() {
            let tail = &bytes[offset..];
            buf[..tail.len()].copy_from_slice(tail);
        }
        u64::from_le_bytes(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_across_word_boundaries() {
        let fields: Vec<(u32, u32)> = (0..500u32)
            .map(|i| {
                let bits = i % 33;
                let value = if bits == 0 {
                    0
                } else {
                    i.wrapping_mul(2_654_435_761) >> (32 - bits)
                };
                (value, bits)
            })
            .collect();
        let mut writer = BitWriter::default();
        for &(value, bits) in &fields {
            writer.put(value, bits);
        }
        let total = writer.bit_len();
        let bytes = writer.finish();
        assert_eq!(bytes.len() as u64, total.div_ceil(8));
        let mut position = 0;
        for &(value, bits) in &fields {
            assert_eq!(peek_bits(&bytes, position, bits), value);
            position += bits as u64;
        }
        assert_eq!(peek_bits(&bytes, position + 1000, 32), 0);
    }
}
