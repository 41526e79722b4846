//! The block index: one record per block, saying how its heads are stored.
//!
//! ```text
//! record := mode:u8 body
//! mode 0  raw       heads stored at head_bits each; no body
//! mode 1  constant  value; every head equals value, no stream (value is one
//!                   byte for alphabets of up to 256 symbols, else two, LE)
//! mode 2  coded     table stream_bits:varint exceptions
//! mode 3  coded     stream_bits:varint exceptions      (reuses the last table)
//! exceptions := count:varint { chunk_delta:varint first_boundary:u8 }*count
//! ```
//!
//! Varints are unsigned LEB128. Each block's stream starts on a byte in the
//! head plane, right after the previous block's; a raw block's stream is
//! `elements * head_bits` bits. Exception chunk numbers are stored as the
//! distance from the previous exception's chunk plus one (from chunk 0 for
//! the first), so they strictly increase and never name chunk 0.
//!
//! [`BlockIndex::parse`] validates everything a decoder relies on, so that
//! no backend ever reads outside the planes or meets an undefined code.

use std::ops::Range;

use super::huffman::{self, MAX_CODE_BITS};
use super::table::{self, CodeLengths};
use super::{CodecError, EncodedView};

const MODE_RAW: u8 = 0;
const MODE_CONSTANT: u8 = 1;
const MODE_CODED_NEW_TABLE: u8 = 2;
const MODE_CODED_LAST_TABLE: u8 = 3;

/// How one block's heads are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockMode {
    Raw,
    Constant(u16),
    Coded { table: u32 },
}

/// A chunk whose warm-up decode does not resynchronise: its first codeword
/// starts `first_boundary` bits into it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkException {
    pub chunk: u32,
    pub first_boundary: u8,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockEntry {
    pub mode: BlockMode,
    /// Byte offset of the block's stream in the head plane.
    pub stream_offset: u64,
    pub stream_bits: u64,
    /// This block's entries in [`BlockIndex::exceptions`].
    pub exceptions: Range<u32>,
}

/// The parsed, validated block index of one tensor.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlockIndex {
    pub blocks: Vec<BlockEntry>,
    pub tables: Vec<CodeLengths>,
    /// Longest code of each table.
    pub table_max_len: Vec<u8>,
    pub exceptions: Vec<ChunkException>,
}

/// What the encoder writes for one block.
pub enum BlockRecord<'a> {
    Raw,
    Constant(u16),
    Coded {
        new_table: Option<&'a CodeLengths>,
        stream_bits: u64,
        exceptions: &'a [ChunkException],
    },
}

/// Appends `record`, a block's of a tensor with `alphabet` head symbols.
pub fn write_record(record: &BlockRecord, alphabet: usize, out: &mut Vec<u8>) {
    match *record {
        BlockRecord::Raw => out.push(MODE_RAW),
        BlockRecord::Constant(value) => {
            out.push(MODE_CONSTANT);
            table::write_symbol(value, alphabet, out);
        }
        BlockRecord::Coded {
            new_table,
            stream_bits,
            exceptions,
        } => {
            match new_table {
                Some(lengths) => {
                    out.push(MODE_CODED_NEW_TABLE);
                    table::write_table(lengths, alphabet, out);
                }
                None => out.push(MODE_CODED_LAST_TABLE),
            }
            write_varint(stream_bits, out);
            write_varint(exceptions.len() as u64, out);
            let mut next_chunk = 0;
            for exception in exceptions {
                write_varint((exception.chunk - next_chunk) as u64, out);
                out.push(exception.first_boundary);
                next_chunk = exception.chunk + 1;
            }
        }
    }
}

pub fn write_varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Reads bytes and varints from an untrusted buffer; running out is an
/// error, never a panic.
pub struct Reader<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, position: 0 }
    }

    pub fn position(&self) -> usize {
        self.position
    }

    pub fn byte(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    pub fn take(&mut self, len: usize) -> Result<&'a [u8], String> {
        let bytes = self
            .bytes
            .get(self.position..)
            .and_then(|rest| rest.get(..len))
            .ok_or("data ends inside a record")?;
        self.position += len;
        Ok(bytes)
    }

    /// An unsigned LEB128 varint in its one shortest form: a last byte of
    /// zero after others (an overlong form) is refused, so that every
    /// value has exactly one encoding.
    pub fn varint(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.byte()?;
            value |= ((byte & 0x7F) as u64) << shift;
            if byte & 0x80 == 0 {
                if shift == 63 && byte > 1 {
                    break;
                }
                if shift > 0 && byte == 0 {
                    return Err("varint is not in its shortest form".to_string());
                }
                return Ok(value);
            }
        }
        Err("varint overflows 64 bits".to_string())
    }
}

impl BlockIndex {
    /// Parses and validates the index of `view` against its planes. Its
    /// memory grows with the tensor's block count; [`IndexWalker`] reads an
    /// index a window at a time instead.
    pub fn parse(view: &EncodedView) -> Result<Self, CodecError> {
        let mut walker = IndexWalker::new(view)?;
        Ok(walker
            .next_window(u64::MAX)?
            .map(|window| window.index)
            .unwrap_or_default())
    }

    fn read_record(
        &mut self,
        reader: &mut Reader,
        alphabet: usize,
        elements: u64,
        params: &super::TensorParams,
    ) -> Result<(BlockMode, u64, Range<u32>), String> {
        let no_exceptions = self.exceptions.len() as u32..self.exceptions.len() as u32;
        let table = match reader.byte()? {
            MODE_RAW => {
                let bits = elements * params.split.head_bits as u64;
                return Ok((BlockMode::Raw, bits, no_exceptions));
            }
            MODE_CONSTANT => {
                let value = table::read_symbol(reader.take(table::symbol_bytes(alphabet))?);
                if value as usize >= alphabet {
                    return Err(format!(
                        "constant head {value} is outside the alphabet of {alphabet}"
                    ));
                }
                return Ok((BlockMode::Constant(value), 0, no_exceptions));
            }
            MODE_CODED_NEW_TABLE => {
                let (lengths, used) = table::read_table(&reader.bytes[reader.position..], alphabet)
                    .map_err(|e| e.to_string())?;
                reader.position += used;
                let max_len = huffman::validate_lengths(&lengths).map_err(|e| e.to_string())?;
                self.tables.push(lengths);
                self.table_max_len.push(max_len as u8);
                self.tables.len() as u32 - 1
            }
            MODE_CODED_LAST_TABLE => {
                if self.tables.is_empty() {
                    return Err("reuses the last code table, but none came before".to_string());
                }
                self.tables.len() as u32 - 1
            }
            other => return Err(format!("mode {other} is not defined")),
        };
        let max_len = self.table_max_len[table as usize] as u64;
        let stream_bits = reader.varint()?;
        // Each head takes between one bit and the longest code.
        if stream_bits < elements || stream_bits > elements * max_len {
            return Err(format!(
                "stream of {stream_bits} bits cannot hold {elements} codes of 1..={max_len} bits"
            ));
        }
        let chunk_count = params.geometry.chunk_count(stream_bits);
        let exception_count = reader.varint()?;
        if exception_count >= chunk_count.max(1) {
            return Err(format!(
                "{exception_count} exceptions for {chunk_count} chunks (chunk 0 needs none)"
            ));
        }
        let first = self.exceptions.len() as u32;
        let mut next_chunk = 0u64;
        for _ in 0..exception_count {
            let chunk = next_chunk
                .checked_add(reader.varint()?)
                .filter(|&c| c >= 1 && c < chunk_count)
                .ok_or_else(|| format!("exception names a chunk outside 1..{chunk_count}"))?;
            let first_boundary = reader.byte()?;
            let chunk_begin = chunk * params.geometry.chunk_bits as u64;
            if first_boundary as u32 >= MAX_CODE_BITS
                || chunk_begin + first_boundary as u64 > stream_bits
            {
                return Err(format!(
                    "exception of chunk {chunk} starts {first_boundary} bits in, past its code or stream"
                ));
            }
            self.exceptions.push(ChunkException {
                chunk: chunk as u32,
                first_boundary,
            });
            next_chunk = chunk + 1;
        }
        let exceptions = first..self.exceptions.len() as u32;
        Ok((BlockMode::Coded { table }, stream_bits, exceptions))
    }

    /// Exceptions of `block` in chunk order.
    pub fn block_exceptions(&self, block: usize) -> &[ChunkException] {
        let range = &self.blocks[block].exceptions;
        &self.exceptions[range.start as usize..range.end as usize]
    }
}

/// Reads a tensor's block index a window of consecutive blocks at a time,
/// checking every record as [`BlockIndex::parse`] does, so that memory
/// holds one window whatever the tensor claims. Each window is a tensor of
/// its own — parameters, planes and index — that any decoder takes as it is.
pub struct IndexWalker<'a> {
    params: &'a super::TensorParams,
    reader: Reader<'a>,
    head: &'a [u8],
    head_len: u64,
    block_count: u64,
    next_block: u64,
    stream_offset: u64,
    /// The code table a record that reuses the last one refers to.
    last_table: Option<(CodeLengths, u8)>,
    tables_read: u64,
    exceptions_read: u64,
}

/// What a whole index holds, read by [`IndexWalker::summarise`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IndexSummary {
    pub blocks: u64,
    /// Code tables stored (blocks that reuse one add none).
    pub tables: u64,
    pub exceptions: u64,
}

/// Consecutive blocks of a tensor, as a tensor of their own.
pub struct IndexWindow {
    /// Which blocks of the tensor.
    pub blocks: Range<u64>,
    /// The tensor's parameters for these blocks' elements only.
    pub params: super::TensorParams,
    /// The blocks' records: stream offsets count from `head_bytes.start`,
    /// and a record that reuses the last code table finds it here even
    /// when an earlier window stored it.
    pub index: BlockIndex,
    /// The blocks' bytes of the head and rest planes.
    pub head_bytes: Range<usize>,
    pub rest_bytes: Range<usize>,
}

impl IndexWindow {
    /// The window's planes within `tensor`'s.
    pub fn view<'a>(&'a self, tensor: &EncodedView<'a>) -> EncodedView<'a> {
        EncodedView {
            params: &self.params,
            head: &tensor.head[self.head_bytes.clone()],
            rest: &tensor.rest[self.rest_bytes.clone()],
            index: &[],
        }
    }

    /// The tensor's first element in this window.
    pub fn first_element(&self) -> u64 {
        self.blocks.start * self.params.block_elements as u64
    }
}

impl<'a> IndexWalker<'a> {
    /// Checks `view`'s parameters and the length of its rest plane; the
    /// records are checked as the windows are read.
    pub fn new(view: &EncodedView<'a>) -> Result<Self, CodecError> {
        let params = view.params;
        params.validate()?;
        let block_count = params.block_count();
        // Every record takes at least one byte.
        if block_count > view.index.len() as u64 {
            return Err(CodecError::InvalidIndex(format!(
                "{} blocks need at least {} index bytes, found {}",
                block_count,
                block_count,
                view.index.len()
            )));
        }
        let expected_rest = params.rest_bytes();
        if view.rest.len() as u64 != expected_rest {
            return Err(CodecError::LengthMismatch(format!(
                "rest plane holds {} bytes, {} elements of {} bits need {}",
                view.rest.len(),
                params.elements,
                params.split.stored_rest_bits(),
                expected_rest
            )));
        }
        let rest_padding =
            (expected_rest * 8 - params.elements * params.split.stored_rest_bits() as u64) as u32;
        if rest_padding > 0 && view.rest[view.rest.len() - 1] >> (8 - rest_padding) != 0 {
            return Err(CodecError::InvalidParameters(
                "padding bits at the end of the rest plane are not zero".to_string(),
            ));
        }
        let walker = IndexWalker {
            params,
            reader: Reader::new(view.index),
            head: view.head,
            head_len: view.head.len() as u64,
            block_count,
            next_block: 0,
            stream_offset: 0,
            last_table: None,
            tables_read: 0,
            exceptions_read: 0,
        };
        if block_count == 0 {
            walker.check_end()?;
        }
        Ok(walker)
    }

    /// Reads the whole index, one window at a time, and says what it holds.
    pub fn summarise(mut self) -> Result<IndexSummary, CodecError> {
        while self.next_window(1 << 14)?.is_some() {}
        Ok(IndexSummary {
            blocks: self.block_count,
            tables: self.tables_read,
            exceptions: self.exceptions_read,
        })
    }

    /// The window of blocks whose decoded bytes come to at most
    /// `max_bytes` (one block at least).
    pub fn next_window_of_bytes(
        &mut self,
        max_bytes: u64,
    ) -> Result<Option<IndexWindow>, CodecError> {
        let block_bytes =
            self.params.block_elements as u64 * self.params.kind().width_bytes() as u64;
        self.next_window((max_bytes / block_bytes).max(1))
    }

    /// The next `max_blocks` blocks (fewer at the end), or `None` after the
    /// last. The window that holds the last block is returned only once the
    /// index has been checked to its end.
    pub fn next_window(&mut self, max_blocks: u64) -> Result<Option<IndexWindow>, CodecError> {
        if self.next_block == self.block_count {
            return Ok(None);
        }
        let params = self.params;
        let first = self.next_block;
        let end = first
            .saturating_add(max_blocks.max(1))
            .min(self.block_count);
        let head_start = self.stream_offset;
        let mut index = BlockIndex {
            blocks: Vec::with_capacity((end - first).min(1 << 20) as usize),
            ..BlockIndex::default()
        };
        if let Some((lengths, max_len)) = &self.last_table {
            index.tables.push(*lengths);
            index.table_max_len.push(*max_len);
        }
        for block in first..end {
            let in_block =
                |message: String| CodecError::InvalidIndex(format!("block {block}: {message}"));
            let elements = params.block_len(block);
            let tables_before = index.tables.len();
            let (mode, stream_bits, exceptions) = index
                .read_record(&mut self.reader, params.alphabet(), elements, params)
                .map_err(in_block)?;
            if index.tables.len() > tables_before {
                self.tables_read += 1;
            }
            self.exceptions_read += exceptions.len() as u64;
            let stream_bytes = stream_bits.div_ceil(8);
            if self.stream_offset + stream_bytes > self.head_len {
                return Err(in_block(format!(
                    "stream of {stream_bytes} bytes at offset {} passes the end of the {}-byte head plane",
                    self.stream_offset, self.head_len
                )));
            }
            let padding = (stream_bytes * 8 - stream_bits) as u32;
            if padding > 0
                && self.head[(self.stream_offset + stream_bytes - 1) as usize] >> (8 - padding) != 0
            {
                return Err(in_block(
                    "padding bits after the stream are not zero".to_string(),
                ));
            }
            index.blocks.push(BlockEntry {
                mode,
                stream_offset: self.stream_offset - head_start,
                stream_bits,
                exceptions,
            });
            self.stream_offset += stream_bytes;
        }
        if let (Some(lengths), Some(max_len)) = (index.tables.last(), index.table_max_len.last()) {
            self.last_table = Some((*lengths, *max_len));
        }
        self.next_block = end;
        if end == self.block_count {
            self.check_end()?;
        }
        let first_element = first * params.block_elements as u64;
        let end_element = (end * params.block_elements as u64).min(params.elements);
        let stored_bits = params.split.stored_rest_bits() as u64;
        Ok(Some(IndexWindow {
            blocks: first..end,
            params: super::TensorParams {
                elements: end_element - first_element,
                ..params.clone()
            },
            index,
            head_bytes: head_start as usize..self.stream_offset as usize,
            rest_bytes: (first_element * stored_bits / 8) as usize
                ..(end_element * stored_bits).div_ceil(8) as usize,
        }))
    }

    /// After the last block: nothing may follow the records, and the
    /// blocks' streams must fill the head plane exactly.
    fn check_end(&self) -> Result<(), CodecError> {
        let index_len = self.reader.bytes.len();
        if self.reader.position != index_len {
            return Err(CodecError::InvalidIndex(format!(
                "{} bytes left over after the last block",
                index_len - self.reader.position
            )));
        }
        if self.stream_offset != self.head_len {
            return Err(CodecError::LengthMismatch(format!(
                "head plane holds {} bytes but the blocks' streams take {}",
                self.head_len, self.stream_offset
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Padding bits are zero in the only valid file: a set one at the end
    /// of a block's stream or of the rest plane is refused.
    #[test]
    fn set_padding_bits_are_refused() {
        use crate::codec::{EncodeOptions, FloatKind, encode};
        // Five elements: 5 × 7 rest bits leave 5 padding bits; the coded
        // stream's length is not a multiple of 8 either.
        let bytes: Vec<u8> = [0x3F80u16, 0x3F81, 0xBF80, 0x3F80, 0x4000]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let options = EncodeOptions {
            head_bits: Some(9),
            sign_in_head: Some(true),
            ..EncodeOptions::default()
        };
        let tensor = encode(FloatKind::Bf16, &bytes, &options).unwrap();
        assert!(BlockIndex::parse(&tensor.view()).is_ok());
        let stream_bits = BlockIndex::parse(&tensor.view()).unwrap().blocks[0].stream_bits;
        assert_ne!(stream_bits % 8, 0);
        let mut head = tensor.clone();
        *head.head.last_mut().unwrap() |= 0x80;
        let error = BlockIndex::parse(&head.view()).unwrap_err().to_string();
        assert!(error.contains("padding bits after the stream"), "{error}");
        let mut rest = tensor.clone();
        *rest.rest.last_mut().unwrap() |= 0x80;
        let error = BlockIndex::parse(&rest.view()).unwrap_err().to_string();
        assert!(
            error.contains("padding bits at the end of the rest plane"),
            "{error}"
        );
    }

    #[test]
    fn varints_round_trip_and_reject_overflow() {
        for value in [0, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            let mut bytes = Vec::new();
            write_varint(value, &mut bytes);
            let mut reader = Reader::new(&bytes);
            assert_eq!(reader.varint().unwrap(), value);
            assert_eq!(reader.position, bytes.len());
        }
        let overflow = [0xFFu8; 10];
        let mut reader = Reader::new(&overflow);
        assert!(reader.varint().is_err());
        for overlong in [&[0x80u8, 0x00][..], &[0x81, 0x80, 0x00]] {
            let error = Reader::new(overlong).varint().unwrap_err();
            assert!(error.contains("shortest"), "{overlong:?}: {error}");
        }
    }
}
