//! LSB-first bit streams: bit `k` of a stream is bit `k % 8` of byte `k / 8`,
//! so a little-endian load of any word puts the next bits at its bottom.
//! The GPU decoders read the same layout with 32-bit loads.

/// Writes bit fields into a caller's buffer, sized exactly for them. Every
/// put stores the whole 64-bit accumulator and moves on by the whole bytes
/// it holds: a shift, an or, a store and no branch on the running bit
/// count, however the field widths fall — a flush that depends on it would
/// mispredict every few fields of a Huffman stream. Only the last few
/// bytes of the buffer take a slower, shorter store, so parallel writers
/// can fill adjacent parts of one plane with no scratch copy.
pub(crate) struct BitWriter<'a> {
    bytes: &'a mut [u8],
    /// Whole bytes written to `bytes`.
    flushed: usize,
    /// The bits after them, fewer than 8 between puts.
    pending: u64,
    pending_bits: u32,
}

impl<'a> BitWriter<'a> {
    /// A writer that fills `bytes` from its start.
    pub fn new(bytes: &'a mut [u8]) -> Self {
        BitWriter {
            bytes,
            flushed: 0,
            pending: 0,
            pending_bits: 0,
        }
    }

    /// Appends the low `bits` bits of `value` (`bits` ≤ 32); writing past
    /// the end of the buffer is a bug and panics.
    #[inline(always)]
    pub fn put(&mut self, value: u32, bits: u32) {
        self.push(value, bits);
        self.flush();
    }

    /// Appends the low `bits` bits of `value` to the accumulator only: the
    /// fields pushed since the last [`flush`](Self::flush) must come to at
    /// most 56 bits. Several pushes per flush shorten the chain of
    /// dependent operations per field.
    #[inline(always)]
    pub fn push(&mut self, value: u32, bits: u32) {
        debug_assert!(bits <= 32 && (bits == 32 || value >> bits == 0));
        debug_assert!(self.pending_bits + bits <= 64);
        self.pending |= (value as u64) << self.pending_bits;
        self.pending_bits += bits;
    }

    /// [`push`](Self::push) of a field of up to 56 bits, the only one
    /// since the last flush.
    #[inline(always)]
    pub fn push_wide(&mut self, value: u64, bits: u32) {
        debug_assert!(bits <= 56 && (bits == 0 || value >> bits == 0));
        self.pending |= value << self.pending_bits;
        self.pending_bits += bits;
    }

    /// Stores the accumulator and moves on by the whole bytes it holds.
    #[inline(always)]
    pub fn flush(&mut self) {
        match self.bytes.get_mut(self.flushed..self.flushed + 8) {
            Some(word) => word.copy_from_slice(&self.pending.to_le_bytes()),
            None => store_near_the_end(self.bytes, self.flushed, self.pending, self.pending_bits),
        }
        let whole = self.pending_bits / 8;
        self.flushed += whole as usize;
        // Fewer than 64 bits were pending: the shift is below 64.
        self.pending >>= whole * 8;
        self.pending_bits -= whole * 8;
    }

    /// Bits written so far.
    pub(crate) fn bit_len(&self) -> u64 {
        self.flushed as u64 * 8 + self.pending_bits as u64
    }

    /// The next `len` bytes, to be filled by the caller and counted as
    /// written; only between whole bytes.
    pub(crate) fn whole_bytes(&mut self, len: usize) -> &mut [u8] {
        assert_eq!(self.pending_bits, 0, "whole bytes start on a byte");
        self.flushed += len;
        &mut self.bytes[self.flushed - len..self.flushed]
    }

    /// The bytes written so far, the last one zero-padded.
    pub(crate) fn written(&self) -> &[u8] {
        &self.bytes[..self.bit_len().div_ceil(8) as usize]
    }

    /// Returns how many bits were written. Their last byte is zero-padded.
    pub fn finish(self) -> u64 {
        let bits = self.bit_len();
        if self.pending_bits > 0 {
            self.bytes[self.flushed] = self.pending as u8;
        }
        bits
    }
}

/// [`BitWriter::flush`]'s store where fewer than 8 bytes are left: only
/// those bytes, and the pending bits must fit them. It takes the writer's
/// fields, not the writer, so that the writer's address is never taken and
/// its state stays in registers.
#[cold]
#[inline(never)]
fn store_near_the_end(bytes: &mut [u8], flushed: usize, pending: u64, pending_bits: u32) {
    let left = bytes.len().saturating_sub(flushed);
    assert!(
        pending_bits as usize <= left * 8,
        "bits written past the end of the writer's buffer"
    );
    bytes[flushed..].copy_from_slice(&pending.to_le_bytes()[..left]);
}

/// Reads consecutive bit fields of up to 32 bits from the front of a
/// stream; past its end, bits read as zero.
pub(crate) struct FieldReader<'a> {
    bytes: &'a [u8],
    next_byte: usize,
    bits: u64,
    count: u32,
}

impl<'a> FieldReader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        FieldReader {
            bytes,
            next_byte: 0,
            bits: 0,
            count: 0,
        }
    }

    /// The next `width` (≤ 32) bits.
    #[inline(always)]
    pub fn take(&mut self, width: u32) -> u32 {
        debug_assert!(width <= 32);
        if self.count < width {
            let word = match self.bytes.get(self.next_byte..self.next_byte + 4) {
                Some(word) => u32::from_le_bytes(word.try_into().unwrap()),
                None => load_le_u64_padded(self.bytes, self.next_byte) as u32,
            };
            self.bits |= (word as u64) << self.count;
            self.count += 32;
            self.next_byte += 4;
        }
        let field = (self.bits & ((1u64 << width) - 1)) as u32;
        self.bits >>= width;
        self.count -= width;
        field
    }
}

/// Reads `bits` (≤ 32) bits starting at bit `position`; bits past the end of
/// `bytes` read as zero, so a hostile stream can never index out of bounds.
#[inline(always)]
pub(crate) fn peek_bits(bytes: &[u8], position: u64, bits: u32) -> u32 {
    debug_assert!(bits <= 32);
    let byte = (position / 8) as usize;
    let shift = (position % 8) as u32;
    let word = load_le_u64_padded(bytes, byte);
    ((word >> shift) & ((1u64 << bits) - 1)) as u32
}

/// Little-endian u64 at `offset`, zero-filled past the end of `bytes`.
#[inline(always)]
pub(crate) fn load_le_u64_padded(bytes: &[u8], offset: usize) -> u64 {
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
        let total: u64 = fields.iter().map(|f| f.1 as u64).sum();
        let exact = total.div_ceil(8) as usize;
        let mut bytes = vec![0xAAu8; exact + 3];
        let mut writer = BitWriter::new(&mut bytes[..exact]);
        for &(value, bits) in &fields {
            writer.put(value, bits);
        }
        assert_eq!(writer.finish(), total);
        assert_eq!(&bytes[exact..], [0xAA; 3], "nothing past the buffer");
        bytes.truncate(total.div_ceil(8) as usize);
        let mut position = 0;
        for &(value, bits) in &fields {
            assert_eq!(peek_bits(&bytes, position, bits), value);
            position += bits as u64;
        }
        assert_eq!(peek_bits(&bytes, position + 1000, 32), 0);
    }

    #[test]
    fn field_reader_reads_what_the_writer_wrote() {
        let fields: Vec<(u32, u32)> = (0..700u32)
            .map(|i| {
                let bits = i % 25;
                (i.wrapping_mul(2_654_435_761) & ((1u32 << bits) - 1), bits)
            })
            .collect();
        let total: u64 = fields.iter().map(|f| f.1 as u64).sum();
        let mut bytes = vec![0u8; total.div_ceil(8) as usize];
        let mut writer = BitWriter::new(&mut bytes);
        for &(value, bits) in &fields {
            writer.put(value, bits);
        }
        writer.finish();
        let mut reader = FieldReader::new(&bytes);
        for &(value, bits) in &fields {
            assert_eq!(reader.take(bits), value);
        }
        assert_eq!(reader.take(24), 0, "past the end reads zero");
    }
}
