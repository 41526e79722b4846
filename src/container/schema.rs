//! What a compressed file's safetensors header and tensors carry.
//!
//! * `__metadata__` keeps the source file's entries and adds
//!   [`FORMAT_KEY`], [`VERSION_KEY`] and [`SOURCE_CHECKSUM_KEY`].
//! * [`SOURCE_HEADER_TENSOR`] (U8) is the source file's header JSON, byte
//!   for byte, compressed with raw DEFLATE.
//! * A tensor kept as it was appears under its name with its dtype and shape.
//! * A coded tensor appears under its name as a 1-D U8 tensor: a
//!   [`CodedHeader`] followed by its block index, head and rest planes.

use crate::codec::index::write_varint;
use crate::codec::{
    ChunkGeometry, FieldSplit, FloatKind, TensorParams, chunk_bits_of_code, chunk_code,
};

/// `__metadata__` key whose value marks an ecfloat file.
pub const FORMAT_KEY: &str = "ecf.format";
pub const FORMAT_NAME: &str = "ecfloat";
/// `__metadata__` key of the format version (a decimal integer).
pub const VERSION_KEY: &str = "ecf.version";
/// The version this build writes.
pub const FORMAT_VERSION: u32 = 2;
/// Every version this build reads, each spelled exactly so in
/// [`VERSION_KEY`].
pub const READABLE_VERSIONS: [u32; 2] = [1, 2];

/// The version spelled `text`, if this build reads it. The spelling must be
/// exact: `"2"` is version 2, `"02"` and `"+2"` are no version.
pub fn parse_version(text: &str) -> Option<u32> {
    READABLE_VERSIONS
        .into_iter()
        .find(|version| version.to_string() == text)
}

/// The readable versions, for messages: `1, 2`.
pub fn readable_versions() -> String {
    READABLE_VERSIONS.map(|v| v.to_string()).join(", ")
}
/// XXH3-64 of the whole source file, 16 lowercase hex digits.
pub const SOURCE_CHECKSUM_KEY: &str = "ecf.source_xxh3";
/// The tensor holding the deflated source header.
pub const SOURCE_HEADER_TENSOR: &str = "ecf.source_header";
/// safetensors' own limit on a header.
pub const MAX_HEADER_BYTES: usize = 100_000_000;

/// The fixed part of a coded tensor's bytes: codec parameters, the
/// checksum of the decoded bytes, and the lengths of the three planes.
///
/// ```text
/// head_bits:u8 sign_in_head:u8 rest_const_bits:u8
/// log2(block_elements):u8 chunk_code:u8
/// warmup_bits:varint rest_const_value:varint xxh3:u64le
/// index_len:varint head_len:varint rest_len:varint
/// ```
///
/// `chunk_code` is `codec::chunk_code`: log2(chunk_bits) for a power of
/// two, else 31 + chunk_bits / 64. Version 1 has no `sign_in_head` byte
/// (its heads are all exponent first) and only powers of two.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodedHeader {
    pub params: TensorParams,
    /// XXH3-64 of the decoded bytes.
    pub checksum: u64,
    pub index_len: u64,
    pub head_len: u64,
    pub rest_len: u64,
}

impl CodedHeader {
    pub fn write(&self, out: &mut Vec<u8>) {
        let params = &self.params;
        out.extend_from_slice(&[
            params.split.head_bits as u8,
            params.split.sign_in_head as u8,
            params.split.rest_const_bits as u8,
            params.block_elements.trailing_zeros() as u8,
            chunk_code(params.geometry.chunk_bits).expect("validated parameters"),
        ]);
        write_varint(params.geometry.warmup_bits as u64, out);
        write_varint(params.split.rest_const_value as u64, out);
        out.extend_from_slice(&self.checksum.to_le_bytes());
        for len in [self.index_len, self.head_len, self.rest_len] {
            write_varint(len, out);
        }
    }

    /// Parses the header at the front of a coded tensor's bytes, in a file
    /// of format `version`; returns it and its length. `kind` and
    /// `elements` come from the source header.
    pub fn read(
        bytes: &[u8],
        version: u32,
        kind: FloatKind,
        elements: u64,
    ) -> Result<(Self, usize), String> {
        let mut reader = crate::codec::index::Reader::new(bytes);
        let head_bits = reader.byte()? as u32;
        let sign_in_head = match version {
            1 => false,
            _ => match reader.byte()? {
                0 => false,
                1 => true,
                other => return Err(format!("sign_in_head {other} is neither 0 nor 1")),
            },
        };
        let fixed: Vec<u32> = (0..3)
            .map(|_| reader.byte().map(u32::from))
            .collect::<Result<_, _>>()?;
        let [rest_const_bits, block_log2, chunk_code] = fixed[..] else {
            unreachable!("three bytes were read")
        };
        let chunk_bits = chunk_bits_of_code(chunk_code as u8)
            .filter(|bits| version >= 2 || bits.is_power_of_two())
            .ok_or_else(|| format!("chunk code {chunk_code} stores no chunk length"))?;
        if block_log2 >= 32 {
            return Err("block size is out of range".to_string());
        }
        let small = |value: u64, what: &str| {
            u32::try_from(value).map_err(|_| format!("{what} {value} is out of range"))
        };
        let warmup_bits = small(reader.varint()?, "warmup_bits")?;
        let rest_const_value = small(reader.varint()?, "rest_const_value")?;
        let checksum =
            u64::from_le_bytes(reader.take(8)?.try_into().expect("eight bytes were taken"));
        let index_len = reader.varint()?;
        let head_len = reader.varint()?;
        let rest_len = reader.varint()?;
        let params = TensorParams {
            split: FieldSplit {
                kind,
                sign_in_head,
                head_bits,
                rest_const_bits,
                rest_const_value,
            },
            elements,
            block_elements: 1 << block_log2,
            geometry: ChunkGeometry {
                chunk_bits,
                warmup_bits,
            },
        };
        params.validate().map_err(|e| e.to_string())?;
        let header = CodedHeader {
            params,
            checksum,
            index_len,
            head_len,
            rest_len,
        };
        Ok((header, reader.position()))
    }
}

pub fn format_checksum(checksum: u64) -> String {
    format!("{checksum:016x}")
}

/// A checksum as the format writes it: exactly 16 lowercase hex digits
/// (`from_str_radix` alone would also take uppercase digits and a `+`).
pub(crate) fn parse_checksum(text: &str) -> Result<u64, String> {
    let lowercase_hex = |c: u8| c.is_ascii_digit() || (b'a'..=b'f').contains(&c);
    if text.len() != 16 || !text.bytes().all(lowercase_hex) {
        return Err(format!("checksum {text:?} is not 16 lowercase hex digits"));
    }
    u64::from_str_radix(text, 16)
        .map_err(|_| format!("checksum {text:?} is not 16 lowercase hex digits"))
}

/// Fails naming the first key that appears twice in one object of `json`,
/// at any depth: a JSON parser keeps the first or the last of two values,
/// so two readers of one file could otherwise see two different files.
/// Keys are compared after their escapes are resolved. JSON that does not
/// parse passes here, for the caller's own parser to report.
pub(crate) fn check_unique_keys(json: &[u8]) -> Result<(), String> {
    use serde::de::DeserializeSeed;

    let mut deserializer = serde_json::Deserializer::from_slice(json);
    match UniqueKeys.deserialize(&mut deserializer) {
        Err(e) if e.is_data() => Err(e
            .to_string()
            .split(" at line ")
            .next()
            .unwrap_or_default()
            .to_string()),
        _ => Ok(()),
    }
}

/// A JSON value walked for keys repeated within one object.
struct UniqueKeys;

impl<'de> serde::de::DeserializeSeed<'de> for UniqueKeys {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for UniqueKeys {
    type Value = ();

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(UniqueKeys)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut keys = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !keys.insert(key.clone()) {
                return Err(serde::de::Error::custom(format!(
                    "the key {key:?} appears twice in one JSON object (every key once, FORMAT.md §1)"
                )));
            }
            map.next_value_seed(UniqueKeys)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_repeated_in_any_object_is_named() {
        for (json, key) in [
            (r#"{"a":1,"a":2}"#, "a"),
            (r#"{"t":{"dtype":"F32","dtype":"BF16"}}"#, "dtype"),
            (r#"[{"x":[{"k":1,"k":1}]}]"#, "k"),
            // The same key after its escapes are resolved.
            (r#"{"ab":1,"\u0061b":2}"#, "ab"),
        ] {
            let error = check_unique_keys(json.as_bytes()).unwrap_err();
            assert!(
                error.contains(&format!("the key {key:?} appears twice")),
                "{json}: {error}"
            );
        }
        for json in [
            r#"{"a":{"b":1},"b":{"a":1}}"#,
            r#"[{"a":1},{"a":1}]"#,
            "{} \t\n",
            // Not JSON: for the caller's parser to report.
            "{\"a\":",
        ] {
            assert_eq!(check_unique_keys(json.as_bytes()), Ok(()), "{json}");
        }
    }

    #[test]
    fn a_checksum_is_16_lowercase_hex_digits() {
        assert_eq!(
            parse_checksum("0123456789abcdef"),
            Ok(0x0123_4567_89ab_cdef)
        );
        for text in [
            "0123456789ABCDEF",
            "+123456789abcdef",
            "0123456789abcde",
            " 123456789abcdef",
        ] {
            assert!(parse_checksum(text).is_err(), "{text}");
        }
    }

    #[test]
    fn coded_header_round_trips() {
        let header = CodedHeader {
            params: TensorParams {
                split: FieldSplit {
                    kind: FloatKind::F32,
                    sign_in_head: true,
                    head_bits: 9,
                    rest_const_bits: 16,
                    rest_const_value: 0x1234,
                },
                elements: 1_000_000,
                block_elements: 1 << 16,
                geometry: ChunkGeometry {
                    chunk_bits: 1024,
                    warmup_bits: 64,
                },
            },
            checksum: 0x0123_4567_89ab_cdef,
            index_len: 300,
            head_len: 1 << 40,
            rest_len: 7,
        };
        let mut bytes = Vec::new();
        header.write(&mut bytes);
        bytes.push(0xEE);
        let (read, used) = CodedHeader::read(&bytes, 2, FloatKind::F32, 1_000_000).unwrap();
        assert_eq!(read, header);
        assert_eq!(used, bytes.len() - 1);
        assert!(CodedHeader::read(&bytes[..5], 2, FloatKind::F32, 1_000_000).is_err());
        bytes[1] = 2;
        assert!(CodedHeader::read(&bytes, 2, FloatKind::F32, 1_000_000).is_err());
        // Version 1 has no layout byte: its heads are exponent first.
        bytes.remove(1);
        bytes[0] = 8;
        let (read, _) = CodedHeader::read(&bytes, 1, FloatKind::F32, 1_000_000).unwrap();
        assert!(!read.params.split.sign_in_head);
        assert_eq!(read.params.split.head_bits, 8);
    }
}
