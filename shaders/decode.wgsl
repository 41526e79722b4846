// decode.wgsl — rebuilds ecfloat-coded tensors on the GPU, bit for bit.
//
// Each element was split on the host into a *head* (its exponent, maybe a
// few more top bits, and the sign when it is coded; at most 9 bits) and a
// *rest* (the sign when it is not, and the low mantissa bits). Rests are
// stored raw at a fixed width, so element k's rest is just bits k*S.. of
// the rest plane. Heads are Huffman-coded per *block* (64K elements by
// default), one code table per block; one workgroup decodes one block.
//
// The hard part of decoding Huffman in parallel is that codewords have
// different lengths: nobody knows where the k-th codeword starts without
// decoding the ones before it. We cut each block's bit stream into *chunks*
// of `chunk_bits` bits and give each thread a chunk. A chunk owns the
// codewords that *start* inside it. Its thread starts decoding
// `warmup_bits` before the chunk and throws away what it decodes there:
// Huffman codes resynchronise within a few codewords, so by the time the
// thread reaches its chunk it stands on a true codeword boundary. Where the
// encoder found that this would not happen, it stored an *exception*: the
// exact offset of the chunk's first codeword, where the thread starts
// instead. (Chunk 0 starts at bit 0.) This is the rule of
// src/codec/sync.rs, and every decoder checks that it holds (below).
//
// A thread holds its place in the stream in registers — a *reader*: the
// two stream words around the next codeword and a bit position — and looks
// codewords up in a *decode table* of 4096 entries in workgroup memory,
// one per *window* of 12 stream bits (a codeword's most): the window's
// first codeword's symbol and length. Beside it, a byte per window says how
// many whole codewords (up to four) the window holds and their total
// length, so that counting walks a window at a time. Both are built from
// the block's code table by the workgroup first.
//
// Each round of 256 chunks then goes:
//   1. count pass: every thread walks its chunk from its start, a window at
//      a time, and counts the codewords that start in it;
//   2. a workgroup prefix sum turns counts into each chunk's first element;
//   3. write pass: every thread decodes again, from its chunk's first
//      codeword, its *run*: from its chunk's first element rounded up to a
//      multiple of RUN_ELEMENTS in the block to the next chunk's, rounded
//      up the same way. It passes over the few codewords before, and goes
//      on a few codewords into the next chunk. So every element is written
//      by one thread, and no output word is shared by two. A run is
//      decoded a *group* of RUN_ELEMENTS at a time: their heads, joined
//      with their rest bits by the layout's own shifts (Params.fast_layout),
//      are stored a vector's words at a time, VECTOR_BYTES as CUDA stores
//      them at once; layouts without a path of their own, and a block's
//      last partial group, go a word at a time.
//
// Nothing is staged in workgroup memory and no thread waits for another
// within a pass: a thread's stream words and rest bits come straight from
// memory, and its output goes straight there.
//
// A wrong exception or warm-up would make a chunk start off the true
// codeword boundaries and decode garbage that looks like codewords. So each
// thread checks that the next chunk starts exactly where its own codewords
// end, the last chunk must end at the stream's last bit, and the block must
// hold as many codewords as elements: that is exactly when chunked decoding
// equals decoding in order (src/codec/sync.rs). Thread 0 writes the
// block's *status word* — 0, or the first problem, as the CPU decoder would
// report it — and the host turns it into an error naming the block. A
// thread never reads past its block's stream by more than the planes'
// padding (PADDING_WORDS), whatever the stream holds.
//
// Raw and constant blocks need no decoding: every thread builds whole
// words directly. Blocks start on word boundaries, and a tensor's output
// is padded to a whole word, so no word is shared by two workgroups.
//
// The compact form, for devices with only WebGPU's default 16 KiB of
// workgroup memory, keeps two 16-bit entries in each decode table word
// (the slots 2048 apart: a pair of consecutive codes' windows) and no
// window counts: it counts one codeword at a time. It decodes the same
// bits, more slowly. Everything the shader reads was validated on the
// host (src/backend/gpu/layout.rs, which holds the constants and layouts
// below); kernels/decode.cu is the same algorithm for CUDA, with the same
// names.

struct Params {
    block_count: u32,
    width_bytes: u32,
    head_bits: u32,
    rest_bits: u32,
    stored_rest_bits: u32,
    rest_const_bits: u32,
    rest_const_value: u32,
    chunk_bits: u32,
    warmup_bits: u32,
    // Word index in `output` of the segment's first element.
    out_word: u32,
    // Index in `status` of the dispatch's first block's word.
    status_base: u32,
    // 1: heads are sign first (FieldSplit::join).
    sign_in_head: u32,
    // The layout of the write path: LAYOUT_*.
    fast_layout: u32,
    reserved0: u32,
    reserved1: u32,
    reserved2: u32,
}

struct Block {
    // Byte offset of the block's head stream in `head`.
    stream_byte: u32,
    stream_bits: u32,
    mode: u32,
    // Coded: table number in `tables`; constant: the head value.
    table_or_value: u32,
    exceptions_start: u32,
    exceptions_count: u32,
    elements: u32,
    // Index of the block's first element in the segment.
    first_element: u32,
    // Byte offset of the block's rest bits in `rest`.
    rest_byte: u32,
    reserved0: u32,
    reserved1: u32,
    reserved2: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> blocks: array<Block>;
@group(0) @binding(2) var<storage, read> tables: array<u32>;
@group(0) @binding(3) var<storage, read> exceptions: array<u32>;
@group(0) @binding(4) var<storage, read> head: array<u32>;
@group(0) @binding(5) var<storage, read> rest: array<u32>;
@group(0) @binding(6) var<storage, read_write> output: array<u32>;
@group(0) @binding(7) var<storage, read_write> status: array<u32>;

const WORKGROUP_SIZE: u32 = 256u;
const BLOCK_RAW: u32 = 0u;
const BLOCK_CONSTANT: u32 = 1u;
const BLOCK_CODED: u32 = 2u;
const MAX_CODE_BITS: u32 = 12u;
// Per table: 256 words of 16-bit symbols in canonical order, then one word
// per code length 1..=12: first_code | first_index << TABLE_INDEX_SHIFT |
// count << TABLE_COUNT_SHIFT.
const TABLE_WORDS: u32 = 268u;
const TABLE_LENGTHS: u32 = 256u;
const TABLE_INDEX_SHIFT: u32 = 12u;
const TABLE_COUNT_SHIFT: u32 = 22u;
// The decode table: one entry per window of MAX_CODE_BITS stream bits
// (first bit in bit 0): the symbol of the window's first codeword and its
// length; when the second codeword is whole in the window too, ENTRY_PAIR
// and its symbol; and on top the length of what the entry decodes (one
// codeword or two). Per window also a byte of how many whole codewords it
// holds (up to four) and their total length: count | length <<
// WINDOW_BITS_SHIFT.
const DECODE_ENTRIES: u32 = 4096u;
const WINDOW_MASK: u32 = 0xFFFu;
const ENTRY_SYMBOL_MASK: u32 = 0x1FFu;
const ENTRY_LENGTH_SHIFT: u32 = 9u;
const ENTRY_LENGTH_MASK: u32 = 0xFu;
const ENTRY_PAIR: u32 = 0x2000u;
const ENTRY_SECOND_SHIFT: u32 = 16u;
const ENTRY_STEP_SHIFT: u32 = 28u;
const WINDOW_BITS_SHIFT: u32 = 4u;
const WINDOW_COUNT_MASK: u32 = 0xFu;
const NO_EXCEPTION: u32 = 0xFFFFFFFFu;
// A block's status word: problem | detail << STATUS_DETAIL_SHIFT.
const STATUS_OK: u32 = 0u;
const STATUS_CHUNK_START: u32 = 1u;
const STATUS_OVERRUN: u32 = 2u;
const STATUS_COUNT: u32 = 3u;
const STATUS_NO_BLOCK: u32 = 4u;
const STATUS_DETAIL_SHIFT: u32 = 4u;
const STATUS_NONE: u32 = 0xFFFFFFFFu;
// A thread's run of elements starts and ends on a multiple of
// RUN_ELEMENTS (but at the block's end), which the fast write paths decode
// a group at a time and store in vectors of VECTOR_BYTES.
const RUN_ELEMENTS: u32 = 16u;
const VECTOR_BYTES: u32 = 16u;
// Zero words after each plane: a thread reads past its block's stream by
// at most a group's codewords and two words.
const PADDING_WORDS: u32 = 16u;
// The layouts with a write path of their own (Params.fast_layout): the
// element's width in bits, the stored rest bits, the head's form.
const LAYOUT_GENERIC: u32 = 0u;
const LAYOUT_16_REST_8: u32 = 1u;
const LAYOUT_16_SIGNED_REST_7: u32 = 2u;
const LAYOUT_32_REST_24: u32 = 3u;
const LAYOUT_32_SIGNED_REST_23: u32 = 4u;
const LAYOUT_8_REST_1: u32 = 5u;
const LAYOUT_8_WHOLE: u32 = 6u;
// Words of a group's rest bits, and one more: a 32-bit layout's sixteen
// 24-bit rests.
const GROUP_REST_WORDS: u32 = RUN_ELEMENTS * 24u / 32u + 1u;
// The compact form sets these (src/backend/wgpu.rs): two entries a decode
// table word, no window counts.
const COMPACT: bool = false;
const DECODE_TABLE_WORDS: u32 = DECODE_ENTRIES;
const WINDOW_COUNT_WORDS: u32 = DECODE_ENTRIES / 4u;

// The block's code table, as stored.
var<workgroup> canonical: array<u32, TABLE_WORDS>;
var<workgroup> decode_table: array<u32, DECODE_TABLE_WORDS>;
// Per window, its whole codewords among its first four, four bytes a word;
// while they are counted, among its first two.
var<workgroup> window_counts: array<u32, WINDOW_COUNT_WORDS>;
var<workgroup> pair_counts: array<u32, WINDOW_COUNT_WORDS>;
// The prefix sum's two buffers.
var<workgroup> scan: array<array<u32, WORKGROUP_SIZE>, 2>;
// Per thread: where its chunk's first codeword starts, for the thread of
// the chunk before it to check.
var<workgroup> chunk_starts: array<u32, WORKGROUP_SIZE>;
// The lowest problem found, and the end of the round's last chunk, which
// the next round's first chunk must start at.
var<workgroup> block_status: atomic<u32>;
var<workgroup> previous_end: u32;
// Block fields that steer control flow, shared so they are uniform.
var<workgroup> shared_mode: u32;
var<workgroup> shared_chunks: u32;

@compute @workgroup_size(256)
fn decode(
    @builtin(workgroup_id) workgroup: vec3<u32>,
    @builtin(local_invocation_index) thread: u32,
) {
    let block_index = workgroup.x;
    let status_index = params.status_base + block_index;
    if (block_index >= params.block_count) {
        if (thread == 0u) {
            status[status_index] = STATUS_NO_BLOCK;
        }
        return;
    }
    let block = blocks[block_index];
    let s = segment_of(block);
    if (thread == 0u) {
        shared_mode = block.mode;
        shared_chunks = (block.stream_bits + params.chunk_bits - 1u) / params.chunk_bits;
        atomicStore(&block_status, STATUS_NONE);
    }
    let mode = workgroupUniformLoad(&shared_mode);
    if (mode != BLOCK_CODED) {
        write_uncoded(s, block.mode, block.table_or_value, thread);
        if (thread == 0u) {
            status[status_index] = STATUS_OK;
        }
        return;
    }
    build_decode_table(block.table_or_value * TABLE_WORDS, thread);
    let chunks = workgroupUniformLoad(&shared_chunks);
    let rounds = (chunks + WORKGROUP_SIZE - 1u) / WORKGROUP_SIZE;
    var round_base = 0u;
    for (var round_index = 0u; round_index < rounds; round_index++) {
        let chunk = round_index * WORKGROUP_SIZE + thread;
        let has_chunk = chunk < chunks;
        var walk = ChunkWalk(0u, 0u, 0u);
        if (has_chunk) {
            walk = count_chunk(s, chunk);
        }
        chunk_starts[thread] = walk.start;
        // The prefix sum's barriers also publish chunk_starts.
        let inclusive = inclusive_prefix_sum(thread, walk.count);
        let totals = scan[0][WORKGROUP_SIZE - 1u];
        let chunk_first = round_base + inclusive - walk.count;
        let round_end = round_base + totals;
        if (has_chunk) {
            if (chunk + 1u == chunks) {
                if (walk.end != block.stream_bits) {
                    atomicMin(&block_status, STATUS_OVERRUN | (chunk << STATUS_DETAIL_SHIFT));
                }
            } else if (thread + 1u < WORKGROUP_SIZE && walk.end != chunk_starts[thread + 1u]) {
                atomicMin(&block_status, STATUS_CHUNK_START | ((chunk + 1u) << STATUS_DETAIL_SHIFT));
            }
            if (thread == 0u && round_index > 0u && walk.start != previous_end) {
                atomicMin(&block_status, STATUS_CHUNK_START | (chunk << STATUS_DETAIL_SHIFT));
            }
        }
        // Each thread writes from its chunk's first element, rounded up to
        // a multiple of RUN_ELEMENTS, to the next chunk's, so the last
        // thread of the round goes on to the round's end, rounded up the
        // same way.
        let last_in_round = chunk + 1u >= chunks || thread + 1u == WORKGROUP_SIZE;
        let next_first = select(round_base + inclusive, round_end, last_in_round);
        let first = run_boundary(s, chunk_first);
        let end = run_boundary(s, next_first);
        // chunk_starts, scan and previous_end are rewritten below and in
        // the next round.
        workgroupBarrier();
        if (thread == WORKGROUP_SIZE - 1u) {
            previous_end = walk.end;
        }
        if (has_chunk && first < end) {
            write_run(s, walk.start, chunk_first, first, end);
        }
        round_base = round_end;
    }
    if (thread == 0u) {
        var problem = atomicLoad(&block_status);
        if (problem == STATUS_NONE) {
            problem = select(STATUS_COUNT | (round_base << STATUS_DETAIL_SHIFT), STATUS_OK, round_base == block.elements);
        }
        status[status_index] = problem;
    }
}

// The block's parameters. Its stream and rest bits are addressed from
// their planes' words where they start, so that bit offsets fit 32 bits
// whatever the segment's size.
struct Segment {
    // The word of `head` where the block's stream starts, the bit of it
    // where it does, and its length.
    head_word: u32,
    stream_bit: u32,
    stream_bits: u32,
    // The word of `rest` where the block's rest bits start, and the bit.
    rest_word: u32,
    rest_bit: u32,
    // The word of `output` of the block's first element.
    out_word: u32,
    elements: u32,
    exceptions_start: u32,
    exceptions_count: u32,
}

fn segment_of(block: Block) -> Segment {
    return Segment(
        block.stream_byte / 4u,
        block.stream_byte % 4u * 8u,
        block.stream_bits,
        block.rest_byte / 4u,
        block.rest_byte % 4u * 8u,
        params.out_word + block.first_element / (4u / params.width_bytes),
        block.elements,
        block.exceptions_start,
        block.exceptions_count,
    );
}

// hi:lo shifted right by `shift` (taken mod 32), low word.
fn funnel_shift(low: u32, high: u32, shift: u32) -> u32 {
    let amount = shift & 31u;
    return (low >> amount) | select(0u, high << ((32u - amount) & 31u), amount != 0u);
}

// The element a head and its stored rest bits make (FieldSplit::join).
fn join(head_symbol: u32, field: u32) -> u32 {
    let rest_bits = params.rest_bits;
    let rest_value = (field << params.rest_const_bits) | params.rest_const_value;
    if (params.sign_in_head != 0u) {
        // Sign first: the head is the element's top bits as they are.
        return (head_symbol << rest_bits) | rest_value;
    }
    if (rest_bits == 0u) {
        // The head is the whole FP8 element, rotated left by one.
        return ((head_symbol >> 1u) | (head_symbol << 7u)) & 0xFFu;
    }
    let low_bits = rest_bits - 1u;
    let sign = rest_value >> low_bits;
    let low = rest_value & ((1u << low_bits) - 1u);
    return (sign << (params.width_bytes * 8u - 1u)) | (head_symbol << low_bits) | low;
}

// `count` bits (at most 32) of `head` from bit `bit` of word `word`; the
// second word is read only when the bits reach into it.
fn head_plane_bits(word: u32, bit: u32, count: u32) -> u32 {
    if (count == 0u) {
        return 0u;
    }
    let first = word + (bit >> 5u);
    let shift = bit & 31u;
    var high = 0u;
    if (shift + count > 32u) {
        high = head[first + 1u];
    }
    let bits = funnel_shift(head[first], high, shift);
    return select(bits & ((1u << count) - 1u), bits, count == 32u);
}

// head_plane_bits, of `rest`.
fn rest_plane_bits(word: u32, bit: u32, count: u32) -> u32 {
    if (count == 0u) {
        return 0u;
    }
    let first = word + (bit >> 5u);
    let shift = bit & 31u;
    var high = 0u;
    if (shift + count > 32u) {
        high = rest[first + 1u];
    }
    let bits = funnel_shift(rest[first], high, shift);
    return select(bits & ((1u << count) - 1u), bits, count == 32u);
}

// ---------------------------------------------------------------------
// The decode table.

// Where a window's entry is in the decode table: its first five bits,
// which the most frequent codewords make much alike across a subgroup's
// lookups, are mixed with the next five before they pick a bank.
fn table_slot(window: u32) -> u32 {
    return (window & WINDOW_MASK) ^ ((window >> 5u) & 0x1Fu);
}

// The entry of a window's first codeword.
fn table_entry(window: u32) -> u32 {
    let index = table_slot(window);
    if (COMPACT) {
        // A 16-bit entry, the low half of a whole one: one codeword.
        let half = (decode_table[index % DECODE_TABLE_WORDS] >> (index / DECODE_TABLE_WORDS * 16u)) & 0xFFFFu;
        return half | (entry_length(half) << ENTRY_STEP_SHIFT);
    }
    return decode_table[index];
}

// The window's count | total length << WINDOW_BITS_SHIFT of its whole
// codewords (the compact form: its first codeword only).
fn whole_codewords(window: u32) -> u32 {
    if (COMPACT) {
        return 1u | (entry_length(table_entry(window)) << WINDOW_BITS_SHIFT);
    }
    let index = window & WINDOW_MASK;
    return (window_counts[index / 4u] >> (index % 4u * 8u)) & 0xFFu;
}

// The length of the entry's first codeword.
fn entry_length(entry: u32) -> u32 {
    return (entry >> ENTRY_LENGTH_SHIFT) & ENTRY_LENGTH_MASK;
}

fn entry_symbol(entry: u32) -> u32 {
    return entry & ENTRY_SYMBOL_MASK;
}

// The 12-bit-justified end of the codes of the length that `info` (a
// table's per-length word) describes: (first code + count) << (12 - length).
fn length_limit(info: u32, length: u32) -> u32 {
    return ((info & 0xFFFu) + (info >> TABLE_COUNT_SHIFT)) << (MAX_CODE_BITS - length);
}

// A 12-bit justified code's bits in reverse order: its window. (By hand:
// Metal before 2.1 has no bit reversal.)
fn reversed_code(code: u32) -> u32 {
    var bits = code;
    bits = ((bits >> 1u) & 0x555u) | ((bits & 0x555u) << 1u);
    bits = ((bits >> 2u) & 0x333u) | ((bits & 0x333u) << 2u);
    bits = (bits & 0x0F0u) | ((bits & 0x00Fu) << 8u) | ((bits >> 8u) & 0x00Fu);
    return bits & WINDOW_MASK;
}

// Copies the table at `base` into workgroup memory and expands it into the
// decode table: first each window's first codeword, then how many whole
// codewords among its first four the window holds (four at most, so that
// it takes two steps; fewer would also be right, only slower).
fn build_decode_table(base: u32, thread: u32) {
    for (var word = thread; word < TABLE_WORDS; word += WORKGROUP_SIZE) {
        canonical[word] = tables[base + word];
    }
    workgroupBarrier();
    // Canonical codes, read most significant bit first and justified to 12
    // bits, tile 0..4096 in order of length: each thread fills the entries
    // of 16 consecutive justified codes, whose windows are those codes'
    // bits reversed (so an even code's and the next one's windows are 2048
    // apart, as are their slots, which share a word in the compact form).
    var code = thread * (DECODE_ENTRIES / WORKGROUP_SIZE);
    var length = 1u;
    var info = canonical[TABLE_LENGTHS];
    var even_entry = 0u;
    for (var k = 0u; k < DECODE_ENTRIES / WORKGROUP_SIZE; k++) {
        while (length_limit(info, length) <= code && length < MAX_CODE_BITS) {
            length += 1u;
            info = canonical[TABLE_LENGTHS + length - 1u];
        }
        let slot = ((info >> TABLE_INDEX_SHIFT) & 0x3FFu) + (code >> (MAX_CODE_BITS - length)) - (info & 0xFFFu);
        let symbol = (canonical[(slot >> 1u) & 0xFFu] >> ((slot & 1u) * 16u)) & ENTRY_SYMBOL_MASK;
        let window = reversed_code(code);
        let entry_slot = table_slot(window);
        if (COMPACT) {
            let entry = symbol | (length << ENTRY_LENGTH_SHIFT);
            if ((code & 1u) == 0u) {
                even_entry = entry;
            } else {
                decode_table[entry_slot % DECODE_TABLE_WORDS] = even_entry | (entry << 16u);
            }
        } else {
            decode_table[entry_slot] = symbol | (length << ENTRY_LENGTH_SHIFT) | (length << ENTRY_STEP_SHIFT);
        }
        code += 1u;
    }
    workgroupBarrier();
    if (COMPACT) {
        return;
    }
    // Each window's first two codewords: its entry with the second when
    // that is whole too (written once no thread reads entries any more),
    // and how many whole codewords there are, and their total length, a
    // byte each…
    var pair_entries: array<u32, DECODE_ENTRIES / WORKGROUP_SIZE>;
    for (var round = 0u; round < DECODE_ENTRIES / WORKGROUP_SIZE / 4u; round++) {
        let first = thread * 4u + round * WORKGROUP_SIZE * 4u;
        var packed = 0u;
        for (var k = 0u; k < 4u; k++) {
            let window = first + k;
            let entry = table_entry(window);
            let length = entry_length(entry);
            // The window after the first codeword, its unknown top bits 0:
            // its codeword is whole if it ends within the window.
            let next = table_entry(window >> length);
            let both = length + entry_length(next);
            let whole = both <= MAX_CODE_BITS;
            pair_entries[round * 4u + k] = select(entry,
                (entry & (ENTRY_SYMBOL_MASK | (ENTRY_LENGTH_MASK << ENTRY_LENGTH_SHIFT))) | ENTRY_PAIR |
                    (entry_symbol(next) << ENTRY_SECOND_SHIFT) | (both << ENTRY_STEP_SHIFT),
                whole);
            let pair = select(1u | (length << WINDOW_BITS_SHIFT), 2u | (both << WINDOW_BITS_SHIFT), whole);
            packed |= pair << (k * 8u);
        }
        pair_counts[first / 4u] = packed;
    }
    workgroupBarrier();
    // …then of its first four: the pair after its pair, if whole too.
    for (var round = 0u; round < DECODE_ENTRIES / WORKGROUP_SIZE / 4u; round++) {
        let first = thread * 4u + round * WORKGROUP_SIZE * 4u;
        let pairs = pair_counts[first / 4u];
        var packed = 0u;
        for (var k = 0u; k < 4u; k++) {
            let window = first + k;
            decode_table[table_slot(window)] = pair_entries[round * 4u + k];
            let pair = (pairs >> (k * 8u)) & 0xFFu;
            let length = pair >> WINDOW_BITS_SHIFT;
            let after = window >> length;
            let next = (pair_counts[after / 4u] >> (after % 4u * 8u)) & 0xFFu;
            let counts = select(pair, pair + next, length + (next >> WINDOW_BITS_SHIFT) <= MAX_CODE_BITS);
            packed |= counts << (k * 8u);
        }
        window_counts[first / 4u] = packed;
    }
    workgroupBarrier();
}

// ---------------------------------------------------------------------
// Walking a stream.

// A thread's place in its block's head stream: the bit of the next
// codeword (from the block's first head word), the words `low` and `high`
// that hold at least the 32 bits from it, the bit where `low` is used up,
// and the head plane's word after `high`.
struct Reader {
    bit: u32,
    limit: u32,
    low: u32,
    high: u32,
    next: u32,
}

fn open_reader(s: Segment, bit: u32) -> Reader {
    let word = bit >> 5u;
    return Reader(bit, (word + 1u) * 32u, head[s.head_word + word], head[s.head_word + word + 1u],
                  s.head_word + word + 2u);
}

// The 32 stream bits from the reader's place.
fn peek(reader: Reader) -> u32 {
    return funnel_shift(reader.low, reader.high, reader.bit);
}

// Moves the words along after the reader advanced by at most 32 bits.
fn refill(reader: ptr<function, Reader>) {
    if ((*reader).bit >= (*reader).limit) {
        (*reader).limit += 32u;
        (*reader).low = (*reader).high;
        (*reader).high = head[(*reader).next];
        (*reader).next += 1u;
    }
}

// Binary search of the block's exceptions, stored `chunk << 8 | boundary`
// in chunk order.
fn find_exception(s: Segment, chunk: u32) -> u32 {
    var low = s.exceptions_start;
    var high = s.exceptions_start + s.exceptions_count;
    while (low < high) {
        let middle = (low + high) / 2u;
        let entry = exceptions[middle];
        let entry_chunk = entry >> 8u;
        if (entry_chunk == chunk) {
            return entry & 0xFFu;
        }
        if (entry_chunk < chunk) {
            low = middle + 1u;
        } else {
            high = middle;
        }
    }
    return NO_EXCEPTION;
}

// The stream bit where chunk `chunk`'s decoder starts: 0, its exception,
// or `warmup_bits` before it.
fn decode_start(s: Segment, chunk: u32) -> u32 {
    let begin = chunk * params.chunk_bits;
    if (chunk == 0u) {
        return 0u;
    }
    var boundary = NO_EXCEPTION;
    if (s.exceptions_count != 0u) {
        boundary = find_exception(s, chunk);
    }
    if (boundary != NO_EXCEPTION) {
        return begin + boundary;
    }
    return select(0u, begin - params.warmup_bits, begin > params.warmup_bits);
}

// Where a chunk's first codeword starts (clamped to the stream's end),
// where its last ends, and how many it owns.
struct ChunkWalk {
    start: u32,
    end: u32,
    count: u32,
}

// Count pass: the thread walks its chunk from its decode start and counts
// the codewords that start in it, a window at a time where the window's
// whole codewords all start on the same side of the chunk's bounds.
// Every step advances, so it always ends.
fn count_chunk(s: Segment, chunk: u32) -> ChunkWalk {
    let begin = s.stream_bit + chunk * params.chunk_bits;
    let stop = s.stream_bit + min(chunk * params.chunk_bits + params.chunk_bits, s.stream_bits);
    var reader = open_reader(s, s.stream_bit + decode_start(s, chunk));
    // Warm-up: the codewords before the chunk, whole windows while they
    // end by its start.
    while (reader.bit < begin) {
        let window = peek(reader);
        let whole = whole_codewords(window) >> WINDOW_BITS_SHIFT;
        reader.bit += select(entry_length(table_entry(window)), whole, reader.bit + whole <= begin);
        refill(&reader);
    }
    var walk = ChunkWalk(min(reader.bit, s.stream_bit + s.stream_bits) - s.stream_bit, 0u, 0u);
    // Whole windows while they end before the chunk's end; `counted`
    // gathers count + 16 * length, and the lengths are the bits walked.
    var counted = 0u;
    let walked_from = reader.bit;
    let windows_end = select(0u, stop - MAX_CODE_BITS + 1u, stop >= MAX_CODE_BITS);
    while (reader.bit < windows_end) {
        let counts = whole_codewords(peek(reader));
        counted += counts;
        reader.bit += counts >> WINDOW_BITS_SHIFT;
        refill(&reader);
    }
    var count = counted - 16u * (reader.bit - walked_from);
    // Then a codeword at a time up to the chunk's end.
    while (reader.bit < stop) {
        reader.bit += entry_length(table_entry(peek(reader)));
        count += 1u;
        refill(&reader);
    }
    walk.count = count;
    // A chunk that owns no codeword (only the last can) ends where it
    // starts: the codewords before the next end there.
    walk.end = select(walk.start, reader.bit - s.stream_bit, count > 0u);
    return walk;
}

// Inclusive prefix sum of `value` over the workgroup (Hillis-Steele,
// between two buffers, so one barrier a step).
fn inclusive_prefix_sum(thread: u32, value: u32) -> u32 {
    var sum = value;
    scan[0][thread] = sum;
    workgroupBarrier();
    for (var step = 0u; step < 8u; step++) {
        let offset = 1u << step;
        if (thread >= offset) {
            sum += scan[step & 1u][thread - offset];
        }
        scan[(step + 1u) & 1u][thread] = sum;
        workgroupBarrier();
    }
    return sum;
}

// ---------------------------------------------------------------------
// Writing runs.

// A layout's element width in bytes, and its stored rest bits (its rest
// bits: the layouts with a path of their own have no constant rest bits).
fn layout_width(fast: u32) -> u32 {
    switch fast {
        case LAYOUT_16_REST_8, LAYOUT_16_SIGNED_REST_7: {
            return 2u;
        }
        case LAYOUT_32_REST_24, LAYOUT_32_SIGNED_REST_23: {
            return 4u;
        }
        default: {
            return 1u;
        }
    }
}

fn layout_rest_bits(fast: u32) -> u32 {
    switch fast {
        case LAYOUT_16_REST_8: {
            return 8u;
        }
        case LAYOUT_16_SIGNED_REST_7: {
            return 7u;
        }
        case LAYOUT_32_REST_24: {
            return 24u;
        }
        case LAYOUT_32_SIGNED_REST_23: {
            return 23u;
        }
        case LAYOUT_8_REST_1: {
            return 1u;
        }
        default: {
            return 0u;
        }
    }
}

// The symbols of the next RUN_ELEMENTS codewords, two a peek at the
// stream (a peek holds 32 bits, two codewords at most 24) and two a word,
// the first in the low half: one lookup where the window holds both whole
// (a pair entry holds them just so), else two.
fn decode_group(reader: ptr<function, Reader>) -> array<u32, RUN_ELEMENTS / 2u> {
    var symbol_pairs: array<u32, RUN_ELEMENTS / 2u>;
    for (var k = 0u; k < RUN_ELEMENTS / 2u; k++) {
        let window = peek(*reader);
        let entry = table_entry(window);
        var both = entry & (ENTRY_SYMBOL_MASK | (ENTRY_SYMBOL_MASK << ENTRY_SECOND_SHIFT));
        var step = entry >> ENTRY_STEP_SHIFT;
        if ((entry & ENTRY_PAIR) == 0u) {
            // The second codeword is not whole in the window: the window
            // after the first holds it.
            let next = table_entry(window >> step);
            both = entry_symbol(entry) | (entry_symbol(next) << ENTRY_SECOND_SHIFT);
            step += entry_length(next);
        }
        symbol_pairs[k] = both;
        (*reader).bit += step;
        refill(reader);
    }
    return symbol_pairs;
}

// The rest bits of RUN_ELEMENTS elements from element `element` (a
// multiple of RUN_ELEMENTS) in `words`, from bit 0. A block's rest bits
// start on a 16-byte boundary (write_layout: `rest_bit` is 0), but 1-, 7-
// and 23-bit rests start in the middle of a word every other group.
fn load_group_rests(s: Segment, rest_bits: u32, element: u32) -> array<u32, GROUP_REST_WORDS> {
    var words: array<u32, GROUP_REST_WORDS>;
    let at = element * rest_bits;
    let first = s.rest_word + at / 32u;
    let count = (RUN_ELEMENTS * rest_bits + 31u) / 32u;
    for (var w = 0u; w < count; w++) {
        words[w] = funnel_shift(rest[first + w], rest[first + w + 1u], at);
    }
    return words;
}

// Stored rest bits `at..at + count` (count < 32) of a group's words.
fn group_field(words: array<u32, GROUP_REST_WORDS>, at: u32, count: u32) -> u32 {
    let w = at / 32u;
    return funnel_shift(words[w], words[w + 1u], at) & ((1u << count) - 1u);
}

// Joins a group's heads (their symbols) and rest bits into output
// words, and stores them from output word `word`. The layouts have no
// constant rest bits (write_layout), so each join is a few fixed shifts
// and masks: two elements a word for 16-bit layouts, one for 32-bit, four
// for FP8.
fn store_group(fast: u32, word: u32, symbol_pairs: array<u32, RUN_ELEMENTS / 2u>, rests: array<u32, GROUP_REST_WORDS>) {
    let width = layout_width(fast);
    let rest_bits = layout_rest_bits(fast);
    let per_word = 4u / width;
    for (var w = 0u; w < RUN_ELEMENTS / per_word; w++) {
        let first = w * per_word;
        var value = 0u;
        if (width == 2u) {
            // Both heads at once.
            let heads = symbol_pairs[first / 2u];
            let fields = group_field(rests, first * rest_bits, rest_bits) |
                (group_field(rests, (first + 1u) * rest_bits, rest_bits) << 16u);
            if (fast == LAYOUT_16_REST_8) {
                // sign | exponent | mantissa: the rest's top bit is the sign.
                value = ((fields << 8u) & 0x80008000u) | (heads << 7u) | (fields & 0x007F007Fu);
            } else {
                value = (heads << rest_bits) | fields;
            }
        } else if (width == 4u) {
            let field = group_field(rests, first * rest_bits, rest_bits);
            let head = (symbol_pairs[first / 2u] >> ((first % 2u) * ENTRY_SECOND_SHIFT)) & ENTRY_SYMBOL_MASK;
            if (fast == LAYOUT_32_REST_24) {
                value = ((field << 8u) & 0x80000000u) | (head << 23u) | (field & 0x007FFFFFu);
            } else {
                value = (head << rest_bits) | field;
            }
        } else {
            let low = symbol_pairs[first / 2u];
            let high = symbol_pairs[first / 2u + 1u];
            let heads = (low & 0xFFu) | ((low >> 8u) & 0xFF00u) | ((high & 0xFFu) << 16u) |
                ((high << 8u) & 0xFF000000u);
            if (fast == LAYOUT_8_WHOLE) {
                // The whole element, rotated left by one: rotate back.
                value = ((heads >> 1u) & 0x7F7F7F7Fu) | ((heads << 7u) & 0x80808080u);
            } else {
                // Exponent first with a 1-bit rest, the sign: bit k of the
                // four rest bits goes to the top of byte k.
                let signs = (rests[0] >> (w * 4u)) & 0xFu;
                value = (heads & 0x7F7F7F7Fu) | (((signs * 0x00204081u) & 0x01010101u) << 7u);
            }
        }
        output[word + w] = value;
    }
}

// The thread's run's whole groups, `first` to `end` (elements of the block,
// multiples of RUN_ELEMENTS, the block's output vector-aligned), in the
// layout's write path.
fn write_groups(s: Segment, reader: ptr<function, Reader>, first: u32, end: u32) {
    let fast = params.fast_layout;
    let stream_end = s.stream_bit + s.stream_bits;
    let rest_bits = layout_rest_bits(fast);
    var word = s.out_word + first / (4u / layout_width(fast));
    for (var element = first; element < end; element += RUN_ELEMENTS) {
        if ((*reader).bit >= stream_end) {
            // Only a stream the status check rejects ends early: stop
            // reading before the plane's padding runs out.
            break;
        }
        let symbol_pairs = decode_group(reader);
        let rests = load_group_rests(s, rest_bits, element);
        store_group(fast, word, symbol_pairs, rests);
        word += RUN_ELEMENTS * layout_width(fast) / 4u;
    }
}

// The thread's run from `first` to `end` (elements of the block) a word at
// a time, any layout: a word's elements are decoded one by one and their
// rest bits read together.
fn write_words(s: Segment, reader: ptr<function, Reader>, first: u32, end: u32) {
    let stream_end = s.stream_bit + s.stream_bits;
    let per_word = 4u / params.width_bytes;
    let element_bits = params.width_bytes * 8u;
    let stored = params.stored_rest_bits;
    for (var element = first; element < end; element += per_word) {
        if ((*reader).bit >= stream_end) {
            break;
        }
        let count = min(per_word, end - element);
        let fields = rest_plane_bits(s.rest_word, s.rest_bit + element * stored, count * stored);
        var value = 0u;
        for (var k = 0u; k < count; k++) {
            let entry = table_entry(peek(*reader));
            (*reader).bit += entry_length(entry);
            refill(reader);
            var field = 0u;
            if (stored != 0u) {
                field = (fields >> (k * stored)) & ((1u << stored) - 1u);
            }
            value |= join(entry_symbol(entry), field) << (k * element_bits);
        }
        output[s.out_word + element / per_word] = value;
    }
}

// Write pass: the thread decodes the block's elements `first..end` (its
// run: multiples of RUN_ELEMENTS, but for the block's end) from its
// chunk's first codeword at `start`, which is element `chunk_first`: it
// passes over the codewords before `first` (the previous thread's), and
// goes on past its chunk's end up to `end`.
fn write_run(s: Segment, start: u32, chunk_first: u32, first: u32, end: u32) {
    var reader = open_reader(s, s.stream_bit + start);
    // The codewords of the chunk before `first`, whole windows while they
    // all are.
    var skip = first - chunk_first;
    while (skip > 0u) {
        let window = peek(reader);
        let counts = whole_codewords(window);
        let whole = counts & WINDOW_COUNT_MASK;
        let all = whole <= skip;
        reader.bit += select(entry_length(table_entry(window)), counts >> WINDOW_BITS_SHIFT, all);
        skip -= select(1u, whole, all);
        refill(&reader);
    }
    // Whole groups in the layout's own path where the output is
    // vector-aligned; the block's last partial group, and every other
    // layout, a word at a time.
    let aligned = s.out_word % (VECTOR_BYTES / 4u) == 0u;
    var groups_end = first;
    if (params.fast_layout != LAYOUT_GENERIC && aligned) {
        groups_end = first + (end - first) / RUN_ELEMENTS * RUN_ELEMENTS;
    }
    write_groups(s, &reader, first, groups_end);
    write_words(s, &reader, groups_end, end);
}

// The first element of a thread's run: `element` rounded up to a multiple
// of RUN_ELEMENTS, within the block.
fn run_boundary(s: Segment, element: u32) -> u32 {
    let rounded = (element + RUN_ELEMENTS - 1u) / RUN_ELEMENTS * RUN_ELEMENTS;
    return min(rounded, s.elements);
}

// Raw and constant blocks: each thread builds whole words.
fn write_uncoded(s: Segment, mode: u32, table_or_value: u32, thread: u32) {
    let per_word = 4u / params.width_bytes;
    let words = (s.elements + per_word - 1u) / per_word;
    let element_bits = params.width_bytes * 8u;
    for (var word = thread; word < words; word += WORKGROUP_SIZE) {
        let first = word * per_word;
        let count = min(per_word, s.elements - first);
        var heads = 0u;
        if (mode == BLOCK_RAW) {
            heads = head_plane_bits(s.head_word, s.stream_bit + first * params.head_bits, count * params.head_bits);
        }
        let fields = rest_plane_bits(s.rest_word, s.rest_bit + first * params.stored_rest_bits,
                                     count * params.stored_rest_bits);
        var value = 0u;
        for (var k = 0u; k < count; k++) {
            var head_symbol = table_or_value;
            if (mode == BLOCK_RAW) {
                head_symbol = (heads >> (k * params.head_bits)) & ((1u << params.head_bits) - 1u);
            }
            var field = 0u;
            if (params.stored_rest_bits != 0u) {
                field = (fields >> (k * params.stored_rest_bits)) & ((1u << params.stored_rest_bits) - 1u);
            }
            value |= join(head_symbol, field) << (k * element_bits);
        }
        output[s.out_word + word] = value;
    }
}
