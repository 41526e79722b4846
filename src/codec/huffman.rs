//! Canonical, length-limited Huffman codes over the head alphabet.
//!
//! Code lengths are optimal under the length limit (package-merge), codes are
//! assigned canonically (shorter codes first, then by symbol), and written
//! bit-reversed so an LSB-first stream can be decoded by indexing a table
//! with the next `max_len` bits.

use super::CodecError;
use super::float::MAX_HEAD_BITS;

/// The longest codeword the format allows; decode tables have at most
/// 2^12 entries so they fit in GPU workgroup memory.
pub const MAX_CODE_BITS: u32 = 12;

/// Number of head symbols (heads are at most [`MAX_HEAD_BITS`] wide).
pub const ALPHABET: usize = 1 << MAX_HEAD_BITS;

/// A decode table entry is `symbol | length << ENTRY_LENGTH_SHIFT`: 9 bits
/// of symbol and 4 of length fit the 16 bits of an entry, on every backend.
pub const ENTRY_LENGTH_SHIFT: u32 = MAX_HEAD_BITS;
pub const ENTRY_SYMBOL_MASK: u16 = (1 << ENTRY_LENGTH_SHIFT) - 1;

/// Optimal code lengths no longer than `limit` for the symbol `counts`
/// (plain Huffman where it fits the limit, else package-merge). Symbols with a zero count get length 0. At least two
/// symbols must occur and `2^limit` must cover them all.
pub(crate) fn limited_code_lengths(counts: &[u64; ALPHABET], limit: u32) -> [u8; ALPHABET] {
    let leaves = sorted_leaves(counts);
    assert!(leaves.len() >= 2, "a code needs at least two symbols");
    assert!(leaves.len() <= 1 << limit, "length limit too small");
    let mut lengths = [0u8; ALPHABET];
    // Mostly the limit does not bind: then a plain Huffman code is optimal
    // under it too, and far cheaper than package-merge.
    let plain = huffman_depths(&leaves);
    if plain.iter().all(|&depth| depth <= limit) {
        for (&(_, symbol), &depth) in leaves.iter().zip(&plain) {
            lengths[symbol as usize] = depth as u8;
        }
        return lengths;
    }
    package_merge(&leaves, limit)
}

/// The used symbols as (count, symbol), by increasing count.
fn sorted_leaves(counts: &[u64; ALPHABET]) -> Vec<(u64, u16)> {
    let mut leaves: Vec<(u64, u16)> = counts
        .iter()
        .enumerate()
        .filter(|&(_, &count)| count > 0)
        .map(|(symbol, &count)| (count, symbol as u16))
        .collect();
    leaves.sort_unstable();
    leaves
}

/// Optimal code lengths within `limit` (package-merge) for `leaves`, the
/// used symbols' (count, symbol) sorted by count.
fn package_merge(leaves: &[(u64, u16)], limit: u32) -> [u8; ALPHABET] {
    let mut lengths = [0u8; ALPHABET];

    // Arena of package nodes: a node id below LEAF_BASE is a package whose
    // children are packages[id]; an id at or above it is a leaf.
    const LEAF_BASE: u32 = 1 << 16;
    let mut packages: Vec<(u32, u32)> = Vec::with_capacity(leaves.len() * limit as usize);
    let leaf_items: Vec<(u64, u32)> = leaves
        .iter()
        .enumerate()
        .map(|(rank, &(count, _))| (count, LEAF_BASE + rank as u32))
        .collect();

    let mut list = leaf_items.clone();
    for _ in 1..limit {
        let paired: Vec<(u64, u32)> = list
            .chunks_exact(2)
            .map(|pair| {
                packages.push((pair[0].1, pair[1].1));
                (pair[0].0 + pair[1].0, packages.len() as u32 - 1)
            })
            .collect();
        list = merge_by_weight(&leaf_items, &paired);
    }

    let mut rank_lengths = vec![0u8; leaves.len()];
    let mut stack = Vec::with_capacity(2 * limit as usize);
    for &(_, root) in &list[..2 * leaves.len() - 2] {
        stack.push(root);
        while let Some(node) = stack.pop() {
            if node >= LEAF_BASE {
                rank_lengths[(node - LEAF_BASE) as usize] += 1;
            } else {
                let (left, right) = packages[node as usize];
                stack.push(left);
                stack.push(right);
            }
        }
    }

    for (rank, &(_, symbol)) in leaves.iter().enumerate() {
        lengths[symbol as usize] = rank_lengths[rank];
    }
    lengths
}

/// The depths of an unrestricted Huffman tree over `leaves`, sorted by
/// count: two queues, leaves and merged nodes, both in increasing weight.
fn huffman_depths(leaves: &[(u64, u16)]) -> Vec<u32> {
    let n = leaves.len();
    let mut weight: Vec<u64> = Vec::with_capacity(2 * n - 1);
    weight.extend(leaves.iter().map(|&(count, _)| count));
    let mut parent = vec![0usize; 2 * n - 1];
    // The next leaf and the next merged node not yet taken.
    let (mut leaf, mut merged) = (0, n);
    for node in n..2 * n - 1 {
        let mut children = [0usize; 2];
        for child in &mut children {
            let take_leaf = leaf < n && (merged == node || weight[leaf] <= weight[merged]);
            *child = if take_leaf { leaf } else { merged };
            if take_leaf {
                leaf += 1;
            } else {
                merged += 1;
            }
        }
        weight.push(weight[children[0]] + weight[children[1]]);
        parent[children[0]] = node;
        parent[children[1]] = node;
    }
    // Parents come after their children: the root is last.
    let mut depth = vec![0u32; 2 * n - 1];
    for node in (0..2 * n - 2).rev() {
        depth[node] = depth[parent[node]] + 1;
    }
    depth.truncate(n);
    depth
}

fn merge_by_weight(leaves: &[(u64, u32)], packages: &[(u64, u32)]) -> Vec<(u64, u32)> {
    let mut merged = Vec::with_capacity(leaves.len() + packages.len());
    let (mut i, mut j) = (0, 0);
    while i < leaves.len() && j < packages.len() {
        if leaves[i].0 <= packages[j].0 {
            merged.push(leaves[i]);
            i += 1;
        } else {
            merged.push(packages[j]);
            j += 1;
        }
    }
    merged.extend_from_slice(&leaves[i..]);
    merged.extend_from_slice(&packages[j..]);
    merged
}

/// Checks that `lengths` form a complete prefix code within the limit, and
/// returns its longest length. Completeness matters to the decoders: every
/// bit pattern then decodes to some symbol, so no table entry is undefined.
pub fn validate_lengths(lengths: &[u8; ALPHABET]) -> Result<u32, CodecError> {
    let mut kraft: u32 = 0;
    let mut used = 0;
    let mut max_len = 0;
    for &len in lengths {
        if len as u32 > MAX_CODE_BITS {
            return Err(CodecError::InvalidTable(format!(
                "code length {len} exceeds the limit of {MAX_CODE_BITS}"
            )));
        }
        if len > 0 {
            used += 1;
            kraft += 1 << (MAX_CODE_BITS - len as u32);
            max_len = max_len.max(len as u32);
        }
    }
    if used < 2 {
        return Err(CodecError::InvalidTable(format!(
            "a code table needs at least two symbols, found {used}"
        )));
    }
    if kraft != 1 << MAX_CODE_BITS {
        let state = if kraft > 1 << MAX_CODE_BITS {
            "oversubscribed"
        } else {
            "incomplete"
        };
        return Err(CodecError::InvalidTable(format!(
            "code lengths are not a complete prefix code ({state})"
        )));
    }
    Ok(max_len)
}

/// Canonical codewords, bit-reversed for LSB-first streams.
pub(crate) fn canonical_codes(lengths: &[u8; ALPHABET]) -> [u32; ALPHABET] {
    let mut codes = [0u32; ALPHABET];
    for (symbol, _, code) in canonical_codewords(lengths) {
        codes[symbol] = code;
    }
    codes
}

/// `(symbol, length, codeword)` of every symbol with a codeword, in symbol
/// order; codewords bit-reversed for LSB-first streams.
pub(crate) fn canonical_codewords(
    lengths: &[u8; ALPHABET],
) -> impl Iterator<Item = (usize, u32, u32)> + '_ {
    let mut count_per_length = [0u32; MAX_CODE_BITS as usize + 1];
    for (_, len) in used_symbols(lengths) {
        count_per_length[len as usize] += 1;
    }
    let mut next_code = [0u32; MAX_CODE_BITS as usize + 1];
    let mut code = 0u32;
    for len in 1..=MAX_CODE_BITS as usize {
        code = (code + count_per_length[len - 1]) << 1;
        next_code[len] = code;
    }
    used_symbols(lengths).map(move |(symbol, len)| {
        let code = next_code[len as usize];
        next_code[len as usize] += 1;
        (symbol, len, code.reverse_bits() >> (32 - len))
    })
}

/// The symbols with a codeword and their lengths, in order. A code uses a
/// few dozen of the 512 symbols, in runs (neighbouring exponents), so
/// eight lengths are tested at a time and the zero runs skipped, where a
/// branch on every symbol mispredicts about once per codeword.
fn used_symbols(lengths: &[u8; ALPHABET]) -> impl Iterator<Item = (usize, u32)> + '_ {
    let (groups, _) = lengths.as_chunks::<8>();
    groups
        .iter()
        .enumerate()
        .filter(|(_, group)| u64::from_ne_bytes(**group) != 0)
        .flat_map(|(first, group)| {
            group
                .iter()
                .enumerate()
                .filter(|&(_, &len)| len != 0)
                .map(move |(k, &len)| (8 * first + k, len as u32))
        })
}

/// Entries of a CPU decode table: indexed by the next `MAX_CODE_BITS` bits.
pub(crate) const TABLE_ENTRIES: usize = 1 << MAX_CODE_BITS;
/// Mask selecting a decode table index from the next stream bits.
pub(crate) const TABLE_MASK: u64 = TABLE_ENTRIES as u64 - 1;

/// A flat decode table: entry `i` holds the symbol and length of the
/// codeword that the bits `i` (the next `MAX_CODE_BITS` of the stream)
/// begin with. Its fixed size keeps the index mask a constant.
pub struct DecodeTable {
    pub max_len: u32,
    /// `symbol | length << ENTRY_LENGTH_SHIFT`
    pub entries: Box<[u16; TABLE_ENTRIES]>,
}

impl DecodeTable {
    /// Builds the table for lengths already checked by [`validate_lengths`].
    pub fn new(lengths: &[u8; ALPHABET], max_len: u32) -> Self {
        let mut entries = Box::new([0u16; TABLE_ENTRIES]);
        // Each codeword's entry at its own code, the one window below
        // `1 << len` that begins with it...
        for (symbol, len, code) in canonical_codewords(lengths) {
            entries[code as usize] = symbol as u16 | (len as u16) << ENTRY_LENGTH_SHIFT;
        }
        // ...and the windows above by doubling: a window of `width + 1`
        // bits with its top bit set holds a codeword of its own (placed
        // above), or the codeword of the window without that bit. In the
        // second case the entry is still empty: every entry is nonzero (a
        // length of at least one), and the code is complete, so no window
        // is left empty. Whole ranges, so the loop vectorises; far fewer
        // instructions than a strided fill per codeword.
        for width in 0..MAX_CODE_BITS {
            let half = 1usize << width;
            let (low, high) = entries[..2 * half].split_at_mut(half);
            for (high, &low) in high.iter_mut().zip(low.iter()) {
                // A select, not a conditional store, so that it vectorises.
                *high = if *high == 0 { low } else { *high };
            }
        }
        DecodeTable { max_len, entries }
    }

    /// (symbol, length) of the codeword the low bits of `bits` begin with.
    #[inline(always)]
    pub(crate) fn lookup(&self, bits: u64) -> (u32, u32) {
        let entry = self.entries[(bits & TABLE_MASK) as usize];
        (
            (entry & ENTRY_SYMBOL_MASK) as u32,
            (entry >> ENTRY_LENGTH_SHIFT) as u32,
        )
    }
}

/// Codewords one lookup in a [`MultiSymbolTable`] gives at most.
pub const MULTI_SYMBOLS: usize = 4;
/// A [`MultiSymbolTable`] entry holds its symbols in four 16-bit slots,
/// slot `k` at bits `16k..16k + 16`; each symbol takes a slot's low 9
/// bits. While the table is built, the spare bits above hold the entry's
/// total code length (bits 9..13 of the first slot) and its symbol count
/// (the last slot's top 3 bits); the finished table keeps those apart, as
/// steps.
const MULTI_SLOT_SYMBOLS: u64 = 0x01FF_01FF_01FF_01FF;
const MULTI_LENGTH_SHIFT: u32 = MAX_HEAD_BITS;
const MULTI_COUNT_SHIFT: u32 = 61;

/// A decode table that gives, for the next [`MAX_CODE_BITS`] bits of a
/// stream, every whole codeword they hold, up to [`MULTI_SYMBOLS`]: where
/// codewords are short (exponents of 2–3 bits' entropy) one lookup decodes
/// three or four. The greedy decode of the window, so a decoder that
/// follows it reads exactly the codewords a one-symbol table would.
pub struct MultiSymbolTable {
    /// The symbols, four 16-bit slots that one native store writes in
    /// order (see [`multi_symbols`]).
    entries: Box<[u64; TABLE_ENTRIES]>,
    /// Each entry's step: its total code length in the low byte, its
    /// symbol count above (see [`multi_step`]). A table of its own, so
    /// that a decoder shifts its bits by a step straight from a load.
    steps: Box<[u16; TABLE_ENTRIES]>,
    /// The entries of narrower windows with fewer codewords, that the
    /// entries are built from (see [`MultiSymbolTable::rebuild`]).
    fewer: [Box<[u64; TABLE_ENTRIES]>; 2],
}

impl Default for MultiSymbolTable {
    fn default() -> Self {
        MultiSymbolTable {
            entries: Box::new([0; TABLE_ENTRIES]),
            steps: Box::new([0; TABLE_ENTRIES]),
            fewer: [Box::new([0; TABLE_ENTRIES]), Box::new([0; TABLE_ENTRIES])],
        }
    }
}

impl MultiSymbolTable {
    /// Fills the table for the code of `lengths` (already checked by
    /// [`validate_lengths`]), reusing its memory.
    ///
    /// A window's entry is its first codeword followed by the entry of the
    /// window that remains after it, which is narrower and may hold one
    /// codeword fewer. So the entries are built in levels: level `c` holds,
    /// for every window of every width up to 12, its first `c` codewords
    /// (those whole within the window). A window of `m` bits is stored at
    /// index `1 << m | bits`, so the window left after a codeword of `len`
    /// bits at index `i` is at `i >> len`, and the windows a codeword
    /// begins are `j << len | code` for every `j` from 1: one run over `j`
    /// per codeword and level, reading the level below in order. Level 4
    /// at width 12 is the table. A level needs only the widths the level
    /// above reads, 12 less a shortest codeword per level above.
    #[inline(always)]
    pub fn rebuild(&mut self, lengths: &[u8; ALPHABET]) {
        #[cfg(target_arch = "x86_64")]
        let avx2 = std::arch::is_x86_feature_detected!("avx2");
        #[cfg(not(target_arch = "x86_64"))]
        let avx2 = false;
        self.rebuild_with(lengths, avx2);
    }

    /// [`rebuild`](Self::rebuild), computing four entries a vector where
    /// `avx2` says the core can.
    #[inline(always)]
    fn rebuild_with(&mut self, lengths: &[u8; ALPHABET], avx2: bool) {
        let mut codewords = [(0u64, 0u32, 0usize); ALPHABET];
        let mut used = 0;
        for (symbol, len, code) in canonical_codewords(lengths) {
            let entry = multi_entry_of_one(symbol as u16 | (len as u16) << ENTRY_LENGTH_SHIFT);
            codewords[used] = (entry, len, code as usize);
            used += 1;
        }
        let codewords = &codewords[..used];
        let shortest = codewords.iter().map(|&(_, len, _)| len).min().unwrap_or(1);
        // The indices past the widest window level `level` needs.
        let limit = |level: u32| {
            2usize << MAX_CODE_BITS.saturating_sub((MULTI_SYMBOLS as u32 - level) * shortest)
        };
        // Level 0 is empty everywhere: the entries one level up take a
        // codeword and nothing after it.
        let [below, above] = &mut self.fewer;
        below[..limit(0)].fill(0);
        for level in 1..MULTI_SYMBOLS as u32 {
            let limit = limit(level);
            // A window whose first codeword is longer than it stays empty.
            above[..limit].fill(0);
            for &(entry, len, code) in codewords {
                let rows = 1..(limit >> len).max(1);
                spread(avx2, entry, len, code, rows.start, &below[rows], above);
            }
            std::mem::swap(below, above);
        }
        // Width 12: index `1 << 12 | window`, stored at `window`.
        for &(entry, len, code) in codewords {
            let rows = TABLE_ENTRIES >> len..(2 * TABLE_ENTRIES) >> len;
            spread(
                avx2,
                entry,
                len,
                code,
                rows.start,
                &below[rows],
                &mut self.entries,
            );
        }
        // The built entries carry their length and count among the
        // symbols' spare bits; the decoder wants them apart.
        for (entry, step) in self.entries.iter_mut().zip(self.steps.iter_mut()) {
            let (length, count) = multi_length_and_count(*entry);
            *step = multi_step(length, count);
            *entry = multi_symbols(*entry);
        }
    }

    /// The symbols and the steps, indexed by the next [`MAX_CODE_BITS`]
    /// bits.
    pub(crate) fn entries(&self) -> (&[u64; TABLE_ENTRIES], &[u16; TABLE_ENTRIES]) {
        (&self.entries, &self.steps)
    }
}

/// Writes the entries of the windows that begin with the codeword of
/// `entry` (`len` bits, `code`) followed by the windows of `rest`, rows
/// `first_row..` of the level below: row `j`'s at index `j << len | code`
/// of `to`, modulo the table's size (width 12 is stored without its
/// marker bit). Consecutive rows, so the indices are `1 << len` apart.
/// With `avx2` (the core has it), four entries are computed a vector.
#[inline(always)]
fn spread(
    avx2: bool,
    entry: u64,
    len: u32,
    code: usize,
    first_row: usize,
    rest: &[u64],
    to: &mut [u64; TABLE_ENTRIES],
) {
    let mut index = first_row << len | code;
    #[cfg(target_arch = "x86_64")]
    let rest = if avx2 {
        let (quads, tail) = rest.as_chunks::<4>();
        // SAFETY: the core has AVX2.
        index = unsafe { spread_quads(entry, len, index, quads, to) };
        tail
    } else {
        rest
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = avx2;
    for &rest in rest {
        to[index & TABLE_MASK as usize] = prepended(entry, rest);
        index += 1 << len;
    }
}

/// [`spread`] of whole quads of rows, each quad's four entries computed
/// in one vector (the arithmetic of [`prepended`]), then stored one by
/// one; returns the index after the last.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn spread_quads(
    entry: u64,
    len: u32,
    mut index: usize,
    quads: &[[u64; 4]],
    to: &mut [u64; TABLE_ENTRIES],
) -> usize {
    use std::arch::x86_64::*;
    let first = _mm256_set1_epi64x(entry as i64);
    let slot_symbols = _mm256_set1_epi64x(MULTI_SLOT_SYMBOLS as i64);
    for quad in quads {
        // SAFETY: the 32 bytes loaded are the quad's.
        let rest = unsafe { _mm256_loadu_si256(quad.as_ptr().cast()) };
        let symbols = _mm256_and_si256(rest, slot_symbols);
        let moved = _mm256_add_epi64(
            _mm256_slli_epi64::<16>(symbols),
            _mm256_sub_epi64(rest, symbols),
        );
        let entries: [u64; 4] = bytemuck::cast(_mm256_add_epi64(moved, first));
        for entry in entries {
            to[index & TABLE_MASK as usize] = entry;
            index += 1 << len;
        }
    }
    index
}

/// The entry of the codeword of `first` (an entry of one codeword)
/// followed by those of `rest` (of at most three): `rest`'s symbols one
/// slot up, its length and count plus `first`'s. The fields do not
/// overlap, so adding them is or-ing them.
#[inline(always)]
fn prepended(first: u64, rest: u64) -> u64 {
    let symbols = rest & MULTI_SLOT_SYMBOLS;
    (symbols << 16) + (rest - symbols) + first
}

/// The symbols of a [`MultiSymbolTable`] entry as four 16-bit heads that
/// one native store of the word writes in order; slots past its count
/// are zero.
#[inline(always)]
fn multi_symbols(entry: u64) -> u64 {
    let symbols = entry & MULTI_SLOT_SYMBOLS;
    if cfg!(target_endian = "little") {
        symbols
    } else {
        // Slot 0 must come first in memory: the slots in reverse order.
        let halves = symbols.rotate_left(32);
        (halves & 0x0000_FFFF_0000_FFFF) << 16 | (halves >> 16) & 0x0000_FFFF_0000_FFFF
    }
}

/// The [`MultiSymbolTable`] entry of the one codeword a [`DecodeTable`]
/// entry gives: its symbol and length already lie where a multi-symbol
/// entry's first slot holds them.
#[inline(always)]
fn multi_entry_of_one(entry: u16) -> u64 {
    const { assert!(ENTRY_LENGTH_SHIFT == MULTI_LENGTH_SHIFT) };
    entry as u64 | 1 << MULTI_COUNT_SHIFT
}

/// A [`MultiSymbolTable`] step: `length` bits read, `count` symbols
/// written. Shifting a 64-bit word by a step (which reads its low six
/// bits) shifts it by the length; summing steps sums both.
#[inline(always)]
pub(crate) fn multi_step(length: u32, count: usize) -> u16 {
    length as u16 | (count as u16) << MULTI_STEP_COUNT_SHIFT
}

/// Where a step's symbol count starts.
pub(crate) const MULTI_STEP_COUNT_SHIFT: u32 = 8;

/// The total code length and the symbol count of a [`MultiSymbolTable`]
/// entry as it is built.
#[inline(always)]
fn multi_length_and_count(entry: u64) -> (u32, usize) {
    (
        (entry >> MULTI_LENGTH_SHIFT) as u32 & 0xF,
        (entry >> MULTI_COUNT_SHIFT) as usize,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every entry of the multi-symbol table, filled with vectors and
    /// without, is the greedy decode of its window with the one-symbol
    /// table: up to four codewords, each whole within the 12 bits.
    #[test]
    fn multi_symbol_entries_are_the_greedy_decode_of_their_window() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(27);
        let mut codes: Vec<[u64; ALPHABET]> = vec![
            // Two symbols: every window holds four one-bit codewords.
            counts_of(&[(0, 1), (511, 1)]),
            // A skewed exponent-like code, and every symbol at once (long
            // codes up to the limit).
            counts_of(&[
                (120, 1000),
                (121, 600),
                (119, 300),
                (122, 50),
                (0, 1),
                (255, 1),
            ]),
            [1; ALPHABET],
        ];
        for _ in 0..40 {
            let mut counts = [0u64; ALPHABET];
            for _ in 0..rng.random_range(2..300) {
                counts[rng.random_range(0..ALPHABET)] += 1 << rng.random_range(0..20);
            }
            if counts.iter().filter(|&&c| c > 0).count() >= 2 {
                codes.push(counts);
            }
        }
        let mut multi = MultiSymbolTable::default();
        for counts in &codes {
            let lengths = limited_code_lengths(counts, MAX_CODE_BITS);
            let max_len = validate_lengths(&lengths).unwrap();
            let single = DecodeTable::new(&lengths, max_len);
            for avx2 in [false, true] {
                #[cfg(target_arch = "x86_64")]
                let avx2 = avx2 && std::arch::is_x86_feature_detected!("avx2");
                #[cfg(not(target_arch = "x86_64"))]
                let avx2 = avx2 && false;
                multi.rebuild_with(&lengths, avx2);
                for window in 0..TABLE_ENTRIES as u64 {
                    let (mut symbols, mut used) = (Vec::new(), 0);
                    while symbols.len() < MULTI_SYMBOLS {
                        let (symbol, len) = single.lookup(window >> used);
                        if used + len > MAX_CODE_BITS {
                            break;
                        }
                        symbols.push(symbol as u16);
                        used += len;
                    }
                    let (entries, steps) = multi.entries();
                    let slots: [u16; MULTI_SYMBOLS] =
                        bytemuck::cast(entries[window as usize].to_ne_bytes());
                    let mut expected = [0u16; MULTI_SYMBOLS];
                    expected[..symbols.len()].copy_from_slice(&symbols);
                    assert_eq!(slots, expected, "window {window:#05x}");
                    assert_eq!(
                        steps[window as usize],
                        multi_step(used, symbols.len()),
                        "window {window:#05x}"
                    );
                }
            }
        }
    }

    fn counts_of(pairs: &[(usize, u64)]) -> [u64; ALPHABET] {
        let mut counts = [0u64; ALPHABET];
        for &(symbol, count) in pairs {
            counts[symbol] = count;
        }
        counts
    }

    fn cost(counts: &[u64; ALPHABET], lengths: &[u8; ALPHABET]) -> u64 {
        counts
            .iter()
            .zip(lengths)
            .map(|(&c, &l)| c * l as u64)
            .sum()
    }

    #[test]
    fn matches_plain_huffman_when_the_limit_does_not_bind() {
        // Huffman for 5,5,4,3,2,1 gives lengths 2,2,2,3,4,4 (cost 49).
        let counts = counts_of(&[(0, 5), (1, 5), (2, 4), (3, 3), (4, 2), (5, 1)]);
        let lengths = limited_code_lengths(&counts, 12);
        assert_eq!(cost(&counts, &lengths), 49);
        assert_eq!(validate_lengths(&lengths).unwrap(), 4);
    }

    /// Where the limit does not bind, the plain Huffman code is as short
    /// as package-merge's, on many shapes of histogram.
    #[test]
    fn plain_huffman_costs_what_package_merge_does() {
        let mut state = 12345u64;
        for trial in 0..200 {
            let mut counts = [0u64; ALPHABET];
            let used = 2 + trial % 300;
            for count in counts.iter_mut().take(used) {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                *count = 1 + (state >> 33) % (1 + (trial as u64 * 37) % 100_000);
            }
            let lengths = limited_code_lengths(&counts, 12);
            let merged = package_merge_for_test(&counts, 12);
            assert_eq!(
                cost(&counts, &lengths),
                cost(&counts, &merged),
                "trial {trial}"
            );
            assert!(validate_lengths(&lengths).is_ok());
        }
    }

    /// Package-merge alone, as `limited_code_lengths` would run it.
    fn package_merge_for_test(counts: &[u64; ALPHABET], limit: u32) -> [u8; ALPHABET] {
        package_merge(&sorted_leaves(counts), limit)
    }

    #[test]
    fn respects_the_length_limit_on_fibonacci_counts() {
        // Fibonacci weights make unrestricted Huffman codes maximally deep.
        let mut counts = [0u64; ALPHABET];
        let (mut a, mut b) = (1u64, 1u64);
        for count in counts.iter_mut().take(40) {
            *count = a;
            (a, b) = (b, a + b);
        }
        for limit in [6, 8, 12] {
            let lengths = limited_code_lengths(&counts, limit);
            let max_len = validate_lengths(&lengths).unwrap();
            assert_eq!(max_len, limit);
        }
    }

    #[test]
    fn all_512_symbols_fit_a_full_table() {
        let counts = [1u64; ALPHABET];
        let lengths = limited_code_lengths(&counts, 9);
        assert!(lengths.iter().all(|&l| l == 9));
        assert_eq!(validate_lengths(&lengths).unwrap(), 9);
    }

    #[test]
    fn rejects_lengths_that_are_not_a_complete_prefix_code() {
        let mut lengths = [0u8; ALPHABET];
        lengths[0] = 1;
        lengths[1] = 2;
        assert!(validate_lengths(&lengths).is_err(), "incomplete");
        lengths[2] = 1;
        assert!(validate_lengths(&lengths).is_err(), "oversubscribed");
        let mut single = [0u8; ALPHABET];
        single[7] = 1;
        assert!(validate_lengths(&single).is_err(), "one symbol");
        let mut too_long = [0u8; ALPHABET];
        too_long[0] = 13;
        assert!(validate_lengths(&too_long).is_err(), "over the limit");
    }

    #[test]
    fn decode_table_inverts_the_codes() {
        let counts = counts_of(&[(3, 100), (9, 40), (10, 30), (200, 7), (255, 1), (511, 1)]);
        let lengths = limited_code_lengths(&counts, 12);
        let max_len = validate_lengths(&lengths).unwrap();
        let codes = canonical_codes(&lengths);
        let table = DecodeTable::new(&lengths, max_len);
        for symbol in [3usize, 9, 10, 200, 255, 511] {
            let (decoded, len) =
                table.lookup((codes[symbol] | (u32::MAX << lengths[symbol])) as u64);
            assert_eq!((decoded as usize, len), (symbol, lengths[symbol] as u32));
        }
    }
}
