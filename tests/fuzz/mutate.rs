//! Structure-aware mutations of compressed files: a file is taken apart
//! into its safetensors header and its tensors, each coded tensor into its
//! coded header fields, block records and planes, one of those is changed,
//! and the file is put back together — consistently, so that the change
//! reaches the check meant to catch it, or not, to test the outer checks.

use std::ops::Range;

use ecfloat::codec::index::Reader;
use ecfloat::codec::table::read_table;
use rand::Rng;
use rand::seq::IndexedRandom;
use rand_pcg::Pcg64Mcg;
use serde_json::{Map, Value};

/// A compressed file taken apart.
#[derive(Clone)]
pub struct Parts {
    /// The safetensors header, in its order.
    pub header: Map<String, Value>,
    /// Each tensor's bytes, by name, in data order.
    pub tensors: Vec<(String, Vec<u8>)>,
    /// Whether the header's data offsets were mutated and must be kept.
    pub keep_offsets: bool,
}

/// Where the pieces of one coded tensor lie within its bytes.
pub struct CodedLayout {
    /// The coded header's fields: head_bits, rest_const_bits, log2 block,
    /// log2 chunk (a byte each), warm-up and rest constant (varints), the
    /// checksum (8 bytes), the three plane lengths (varints).
    pub fields: Vec<Range<usize>>,
    /// Each block record's pieces: its mode byte, then its table, stream
    /// length, exception count and exceptions' varints and bytes.
    pub records: Vec<Vec<Range<usize>>>,
    pub head: Range<usize>,
    pub rest: Range<usize>,
}

impl Parts {
    /// `None` for a file whose header does not read, or whose offsets
    /// do not fit it.
    pub fn parse(bytes: &[u8]) -> Option<Parts> {
        let len = usize::try_from(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?)).ok()?;
        let json = bytes.get(8..8usize.checked_add(len)?)?;
        let header: Map<String, Value> = serde_json::from_slice(json).ok()?;
        let data = &bytes[8 + len..];
        let mut spans = Vec::new();
        for (name, entry) in header.iter().filter(|(name, _)| *name != "__metadata__") {
            let offsets = entry.get("data_offsets")?;
            let (start, end) = (offsets.get(0)?.as_u64()?, offsets.get(1)?.as_u64()?);
            spans.push((start as usize, end as usize, name.clone()));
        }
        spans.sort();
        let tensors = spans
            .into_iter()
            .map(|(start, end, name)| Some((name, data.get(start..end)?.to_vec())))
            .collect::<Option<_>>()?;
        Some(Parts {
            header,
            tensors,
            keep_offsets: false,
        })
    }

    /// The file again, its header's offsets (and a U8 tensor's shape)
    /// following the tensors' bytes.
    pub fn assemble(&self) -> Vec<u8> {
        let mut header = self.header.clone();
        let mut data = Vec::new();
        for (name, bytes) in &self.tensors {
            if let Some(entry) = header.get_mut(name) {
                let start = data.len();
                data.extend_from_slice(bytes);
                if !self.keep_offsets {
                    entry["data_offsets"] = serde_json::json!([start, data.len()]);
                }
                if entry["dtype"] == "U8" {
                    entry["shape"] = serde_json::json!([bytes.len()]);
                }
            }
        }
        let mut json = serde_json::to_vec(&header).unwrap();
        json.resize(json.len().next_multiple_of(8), b' ');
        let mut file = (json.len() as u64).to_le_bytes().to_vec();
        file.extend_from_slice(&json);
        file.extend_from_slice(&data);
        file
    }

    /// The coded tensors (U8 tensors other than the source header), with
    /// the dtype and element count of their source from the source header.
    fn coded(&self) -> Vec<usize> {
        (0..self.tensors.len())
            .filter(|&i| {
                let name = &self.tensors[i].0;
                name != ecfloat::container::schema::SOURCE_HEADER_TENSOR
                    && self
                        .header
                        .get(name)
                        .is_some_and(|entry| entry["dtype"] == "U8")
            })
            .collect()
    }
}

/// Reads where the pieces of a coded tensor lie; `None` where it does not
/// read as one (it is then only mutated as bytes).
pub fn coded_layout(bytes: &[u8]) -> Option<CodedLayout> {
    let mut reader = Reader::new(bytes);
    let mut fields = Vec::new();
    let mut piece = |reader: &mut Reader, read: &dyn Fn(&mut Reader) -> Option<u64>| {
        let start = reader.position();
        let value = read(reader)?;
        fields.push(start..reader.position());
        Some(value)
    };
    let byte = |r: &mut Reader| r.byte().ok().map(u64::from);
    let varint = |r: &mut Reader| r.varint().ok();
    let head_bits = piece(&mut reader, &byte)?;
    for _ in 0..3 {
        piece(&mut reader, &byte)?;
    }
    piece(&mut reader, &varint)?;
    piece(&mut reader, &varint)?;
    piece(&mut reader, &|r: &mut Reader| r.take(8).ok().map(|_| 0))?;
    let index_len = piece(&mut reader, &varint)? as usize;
    let head_len = piece(&mut reader, &varint)? as usize;
    let rest_len = piece(&mut reader, &varint)? as usize;
    let index_start = reader.position();
    let head_start = index_start.checked_add(index_len)?;
    let rest_start = head_start.checked_add(head_len)?;
    if rest_start.checked_add(rest_len)? != bytes.len() {
        return None;
    }
    let alphabet = 1usize << head_bits.min(8);
    let index = &bytes[index_start..head_start];
    let mut records = Vec::new();
    let mut reader = Reader::new(index);
    while reader.position() < index.len() {
        let at = |range: Range<usize>| index_start + range.start..index_start + range.end;
        let mut record = Vec::new();
        let start = reader.position();
        let mode = reader.byte().ok()?;
        record.push(at(start..reader.position()));
        match mode {
            0 => {}
            1 => {
                let start = reader.position();
                reader.byte().ok()?;
                record.push(at(start..reader.position()));
            }
            2 | 3 => {
                if mode == 2 {
                    let start = reader.position();
                    let (_, used) = read_table(&index[start..], alphabet).ok()?;
                    reader.take(used).ok()?;
                    record.push(at(start..reader.position()));
                }
                let start = reader.position();
                reader.varint().ok()?;
                record.push(at(start..reader.position()));
                let start = reader.position();
                let exceptions = reader.varint().ok()?;
                record.push(at(start..reader.position()));
                for _ in 0..exceptions.min(1 << 16) {
                    let start = reader.position();
                    reader.varint().ok()?;
                    record.push(at(start..reader.position()));
                    let start = reader.position();
                    reader.byte().ok()?;
                    record.push(at(start..reader.position()));
                }
            }
            _ => return None,
        }
        records.push(record);
    }
    Some(CodedLayout {
        fields,
        records,
        head: head_start..rest_start,
        rest: rest_start..bytes.len(),
    })
}

/// Values a mutated number is likely to break a check with: its
/// neighbours, zero, powers of two and their neighbours, the extremes.
fn interesting(rng: &mut Pcg64Mcg, value: u64) -> u64 {
    match rng.random_range(0..8) {
        0 => value.wrapping_add(1),
        1 => value.wrapping_sub(1),
        2 => 0,
        3 => 1u64 << rng.random_range(0..64),
        4 => (1u64 << rng.random_range(0..63)) - 1,
        5 => u64::MAX,
        6 => value.wrapping_add(rng.random_range(2..64)),
        _ => value ^ (1 << rng.random_range(0..8)),
    }
}

fn varint(value: u64) -> Vec<u8> {
    let mut out = Vec::new();
    ecfloat::codec::index::write_varint(value, &mut out);
    out
}

fn flip_bits(rng: &mut Pcg64Mcg, bytes: &mut [u8], range: Range<usize>) {
    if range.is_empty() {
        return;
    }
    for _ in 0..rng.random_range(1..4) {
        let at = rng.random_range(range.clone());
        bytes[at] ^= 1 << rng.random_range(0..8);
    }
}

/// Replaces `range` of `bytes` with `with`.
fn splice(bytes: &mut Vec<u8>, range: Range<usize>, with: &[u8]) {
    bytes.splice(range, with.iter().copied());
}

/// One mutation of `file`, and what it was.
pub fn mutate(rng: &mut Pcg64Mcg, file: &[u8]) -> (Vec<u8>, String) {
    let Some(mut parts) = Parts::parse(file).filter(|p| !p.tensors.is_empty()) else {
        let mut bytes = file.to_vec();
        let len = bytes.len();
        flip_bits(rng, &mut bytes, 0..len);
        return (bytes, "bits flipped in an unreadable file".to_string());
    };
    let coded = parts.coded();
    match rng.random_range(0..100) {
        // The header length field.
        0..4 => {
            let mut bytes = file.to_vec();
            let len = u64::from_le_bytes(bytes[..8].try_into().unwrap());
            let new = interesting(rng, len);
            bytes[..8].copy_from_slice(&new.to_le_bytes());
            (bytes, format!("header length {len} -> {new}"))
        }
        // A value of the header JSON.
        4..14 => {
            let what = mutate_json(rng, &mut parts.header);
            parts.keep_offsets = what.contains("data_offsets");
            (parts.assemble(), what)
        }
        // A value of the source file's header, deflated inside the file.
        14..20 => {
            let source = ecfloat::container::schema::SOURCE_HEADER_TENSOR;
            let Some(tensor) = parts.tensors.iter_mut().find(|(name, _)| name == source) else {
                return (file.to_vec(), "no source header: unchanged".to_string());
            };
            let Ok(json) = miniz_oxide::inflate::decompress_to_vec(&tensor.1) else {
                return (
                    file.to_vec(),
                    "source header does not inflate: unchanged".to_string(),
                );
            };
            let Ok(mut header) = serde_json::from_slice::<Map<String, Value>>(&json) else {
                return (
                    file.to_vec(),
                    "source header unreadable: unchanged".to_string(),
                );
            };
            let what = mutate_json(rng, &mut header);
            let mut json = serde_json::to_vec(&header).unwrap();
            json.resize(json.len().next_multiple_of(8), b' ');
            tensor.1 = miniz_oxide::deflate::compress_to_vec(&json, 6);
            (parts.assemble(), format!("source header: {what}"))
        }
        // A coded header field.
        20..40 if !coded.is_empty() => {
            let tensor = *coded.choose(rng).unwrap();
            let (name, bytes) = &mut parts.tensors[tensor];
            let Some(layout) = coded_layout(bytes) else {
                return (file.to_vec(), "unreadable layout: unchanged".to_string());
            };
            let field = rng.random_range(0..layout.fields.len());
            let range = layout.fields[field].clone();
            let old = bytes[range.clone()].to_vec();
            let new = match field {
                0..4 => vec![interesting(rng, old[0] as u64) as u8],
                6 => {
                    let mut new = old.clone();
                    flip_bits(rng, &mut new, 0..8);
                    new
                }
                _ => {
                    let mut reader = Reader::new(&old);
                    varint(interesting(rng, reader.varint().unwrap_or(0)))
                }
            };
            splice(bytes, range, &new);
            let what = format!("{name}: coded header field {field} {old:?} -> {new:?}");
            (parts.assemble(), what)
        }
        // A piece of a block record.
        40..70 if !coded.is_empty() => {
            let tensor = *coded.choose(rng).unwrap();
            let (name, bytes) = &mut parts.tensors[tensor];
            let Some(layout) = coded_layout(bytes).filter(|l| !l.records.is_empty()) else {
                return (file.to_vec(), "no records: unchanged".to_string());
            };
            let block = rng.random_range(0..layout.records.len());
            let record = &layout.records[block];
            let piece = rng.random_range(0..record.len());
            let range = record[piece].clone();
            let old = bytes[range.clone()].to_vec();
            let new = if old.len() == 1 && (piece == 0 || rng.random_bool(0.5)) {
                vec![interesting(rng, old[0] as u64) as u8]
            } else if range.len() > 2 && rng.random_bool(0.3) {
                // A table: flip bits inside it.
                let mut new = old.clone();
                flip_bits(rng, &mut new, 0..old.len());
                new
            } else {
                let mut reader = Reader::new(&old);
                varint(interesting(rng, reader.varint().unwrap_or(0)))
            };
            let fix_length = rng.random_bool(0.7);
            let grown = new.len() as i64 - old.len() as i64;
            splice(bytes, range, &new);
            if fix_length && grown != 0 {
                // Keep the index length field true, so the record is judged
                // by the index checks rather than by the plane lengths.
                let index_field = layout.fields[7].clone();
                let mut reader = Reader::new(&bytes[index_field.clone()]);
                let index_len = reader.varint().unwrap_or(0) as i64 + grown;
                splice(bytes, index_field, &varint(index_len.max(0) as u64));
            }
            let what = format!("{name}: block {block} piece {piece} {old:?} -> {new:?}");
            (parts.assemble(), what)
        }
        // Bits of a plane.
        70..82 if !coded.is_empty() => {
            let tensor = *coded.choose(rng).unwrap();
            let (name, bytes) = &mut parts.tensors[tensor];
            let Some(layout) = coded_layout(bytes) else {
                return (file.to_vec(), "unreadable layout: unchanged".to_string());
            };
            let (plane, range) = if rng.random_bool(0.7) {
                ("head", layout.head)
            } else {
                ("rest", layout.rest)
            };
            flip_bits(rng, bytes, range);
            let what = format!("{name}: bits of the {plane} plane flipped");
            (parts.assemble(), what)
        }
        // A tensor cut short or grown, its planes' lengths left alone.
        82..90 => {
            let tensor = rng.random_range(0..parts.tensors.len());
            let (name, bytes) = &mut parts.tensors[tensor];
            let old = bytes.len();
            if rng.random_bool(0.5) && old > 0 {
                bytes.truncate(rng.random_range(0..old));
            } else {
                let extra = rng.random_range(1..16);
                bytes.extend((0..extra).map(|_| rng.random::<u8>()));
            }
            let what = format!("{name}: {old} bytes -> {}", bytes.len());
            (parts.assemble(), what)
        }
        // The file cut short.
        90..95 if !file.is_empty() => {
            let cut = rng.random_range(0..file.len());
            (file[..cut].to_vec(), format!("file cut to {cut} bytes"))
        }
        // Bytes anywhere.
        _ => {
            let mut bytes = file.to_vec();
            let len = bytes.len();
            flip_bits(rng, &mut bytes, 0..len);
            (bytes, "bits flipped anywhere".to_string())
        }
    }
}

/// Changes one value of the header: a tensor's dtype, shape or offsets, or
/// a metadata entry.
fn mutate_json(rng: &mut Pcg64Mcg, header: &mut Map<String, Value>) -> String {
    let names: Vec<String> = header.keys().cloned().collect();
    let Some(name) = names.choose(rng).cloned() else {
        return "empty header, unchanged".to_string();
    };
    let entry = header.get_mut(&name).unwrap();
    let Some(object) = entry.as_object_mut() else {
        return format!("{name}: not an object, unchanged");
    };
    let keys: Vec<String> = object.keys().cloned().collect();
    let Some(key) = keys.choose(rng).cloned() else {
        return format!("{name}: empty, unchanged");
    };
    if rng.random_bool(0.1) {
        object.remove(&key);
        return format!("{name}.{key} removed");
    }
    let value = object.get_mut(&key).unwrap();
    let old = value.to_string();
    match value {
        Value::String(text) => {
            const DTYPES: [&str; 8] = [
                "U8", "I64", "F32", "BF16", "F16", "F8_E4M3", "F8_E5M2", "BOOL",
            ];
            *text = match rng.random_range(0..4) {
                0 => DTYPES.choose(rng).unwrap().to_string(),
                1 => String::new(),
                2 => text.chars().rev().collect(),
                _ => format!("{text}0"),
            };
        }
        Value::Array(items) if !items.is_empty() => {
            let at = rng.random_range(0..items.len());
            let number = items[at].as_u64().unwrap_or(0);
            items[at] = interesting(rng, number).min(1 << 53).into();
        }
        _ => *value = Value::Null,
    }
    format!("{name}.{key} {old} -> {}", object[&key])
}
