// decode.wgsl — rebuilds ecfloat-coded tensors on the GPU, bit for bit.
//
// Each element was split on the host into a *head* (its exponent, maybe a
// few more top bits, and the sign when it is coded; at most 9 bits) and a
// *rest* (the sign when it is not, and the low mantissa bits). Rests are
// stored raw at a fixed width, so element k's rest is just bits k*S.. of
// the rest plane. Heads are Huffman-coded per *block* of 64K elements, one
// code table per block; one workgroup decodes one block.
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
// Each round of 256 chunks then goes:
//   1. count pass: every thread decodes its chunk and counts its codewords;
//   2. a workgroup prefix sum turns counts into each chunk's first element;
//   3. write pass: every thread decodes again, from its chunk's first
//      element rounded up to a *run* boundary (a multiple of RUN_ELEMENTS
//      in the block) up to the next chunk's, rounded up the same way: it
//      passes over the few codewords before, and goes on a few codewords
//      into the next chunk. So every element is written by one thread, and
//      no output word is shared by two.
//
// Memory is touched in whole 32-byte sectors by consecutive threads, as
// GPUs move it fastest:
//   * a thread reads its stream from a *ring* of two sectors in workgroup
//     memory. Threads walk until their ring runs dry, then all meet; the
//     workgroup loads every spent sector's successor, consecutive threads
//     loading consecutive words of it, and they walk on;
//   * the write pass stages each thread's decoded heads as a *run* of up to
//     RUN_ELEMENTS in workgroup memory. When runs are full, the workgroup
//     joins them with their rest bits and stores them, consecutive threads
//     building consecutive words of a run: a run fills whole sectors of
//     output, and its rest bits are whole words.
//
// A wrong exception or warm-up would make a chunk start off the true
// codeword boundaries and decode garbage that looks like codewords. So each
// thread checks that the next chunk starts exactly where its own codewords
// end, the last chunk must end at the stream's last bit, and the block must
// hold as many codewords as elements: that is exactly when chunked decoding
// equals decoding in order (src/codec/sync.rs). Thread 0 writes the
// block's *status word* — 0, or the first problem, as the CPU decoder would
// report it — and the host turns it into an error naming the block.
//
// Raw and constant blocks need no decoding: every thread builds whole
// words directly. Blocks start on word boundaries, and a tensor's output
// is padded to a whole word, so no word is shared by two workgroups.
//
// The code table arrives in canonical form (symbols sorted by code length,
// plus the first code and first symbol index of each length). It is copied
// into workgroup memory and expanded there into a lookup table of the
// codewords up to FAST_BITS long, indexed by the next FAST_BITS stream
// bits; the rare longer codeword is looked up in the canonical form.
// Everything the shader reads was validated on the host.

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
// A decode table entry: symbol | length << ENTRY_LENGTH_SHIFT; length 0
// means the codeword is longer than FAST_BITS.
const ENTRY_LENGTH_SHIFT: u32 = 9u;
const ENTRY_SYMBOL_MASK: u32 = 0x1FFu;
const FAST_BITS: u32 = 10u;
const FAST_ENTRIES: u32 = 1024u;
const NO_EXCEPTION: u32 = 0xFFFFFFFFu;
// A walker that holds no ring words yet.
const NO_WINDOW: u32 = 0xFFFFFFFFu;
// A block's status word: problem | detail << STATUS_DETAIL_SHIFT.
const STATUS_OK: u32 = 0u;
const STATUS_CHUNK_START: u32 = 1u;
const STATUS_OVERRUN: u32 = 2u;
const STATUS_COUNT: u32 = 3u;
const STATUS_NO_BLOCK: u32 = 4u;
const STATUS_DETAIL_SHIFT: u32 = 4u;
const STATUS_NONE: u32 = 0xFFFFFFFFu;
// A thread's ring: two sectors of its stream, the words `base..base + 16`
// with `base` a multiple of SECTOR_WORDS, word w in slot w % RING_WORDS.
const SECTOR_WORDS: u32 = 8u;
const RING_WORDS: u32 = 16u;
// A ring request: the ring's base word, and whether the workgroup loads
// both sectors (RING_FILL) or the second (RING_REFILL) for it; RING_IDLE:
// none.
const RING_FILL: u32 = 0x40000000u;
const RING_REFILL: u32 = 0x80000000u;
const RING_BASE_MASK: u32 = 0x3FFFFFFFu;
const RING_IDLE: u32 = 0u;
// A run: up to RUN_ELEMENTS decoded heads of consecutive elements, staged
// as bytes in RUN_SYMBOL_WORDS words plus a word of their ninth bits.
const RUN_ELEMENTS: u32 = 32u;
const RUN_SYMBOL_WORDS: u32 = 8u;
const RUN_WORDS: u32 = 9u;
// A run request: first element << RUN_COUNT_BITS | elements (0: none).
const RUN_COUNT_BITS: u32 = 6u;

// The block's code table, as stored, and the lookup table of its
// codewords up to FAST_BITS long (two entries per word).
var<workgroup> canonical: array<u32, TABLE_WORDS>;
var<workgroup> decode_table: array<u32, FAST_ENTRIES / 2u>;
var<workgroup> rings: array<u32, WORKGROUP_SIZE * RING_WORDS>;
var<workgroup> runs: array<u32, WORKGROUP_SIZE * RUN_WORDS>;
// Per thread: its ring request; its codeword count, then the prefix sums;
// its chunk's start, for the thread of the chunk before it to check, then
// its run request.
var<workgroup> ring_requests: array<u32, WORKGROUP_SIZE>;
var<workgroup> chunk_counts: array<u32, WORKGROUP_SIZE>;
var<workgroup> chunk_starts: array<u32, WORKGROUP_SIZE>;
// The lowest problem found, and the end of the round's last chunk, which
// the next round's first chunk must start at.
var<workgroup> block_status: atomic<u32>;
var<workgroup> previous_end: u32;
// Whether every thread has finished its walk: `pending` alternates between
// two words (1: nobody is walking), which thread 0 copies to
// `walks_finished` for all to load uniformly.
var<workgroup> pending: array<atomic<u32>, 2>;
var<workgroup> walks_finished: u32;
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
    if (thread == 0u) {
        shared_mode = block.mode;
        shared_chunks = (block.stream_bits + params.chunk_bits - 1u) / params.chunk_bits;
        atomicStore(&block_status, STATUS_NONE);
    }
    let mode = workgroupUniformLoad(&shared_mode);
    if (mode != BLOCK_CODED) {
        write_uncoded(block, thread);
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
        let walk = count_chunk(block, chunk, has_chunk, thread);
        chunk_starts[thread] = walk.start;
        // The prefix sum's barriers also publish chunk_starts.
        let inclusive = inclusive_prefix_sum(thread, walk.count);
        let chunk_first = round_base + inclusive - walk.count;
        let round_end = round_base + chunk_counts[WORKGROUP_SIZE - 1u];
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
        // a run, to the next chunk's, so the last thread of the round goes
        // on to the round's end, rounded up the same way.
        let last_in_round = chunk + 1u == chunks || thread + 1u == WORKGROUP_SIZE;
        let next_first = select(round_base + chunk_counts[thread], round_end, last_in_round);
        let first = run_boundary(block, chunk_first);
        let end = run_boundary(block, next_first);
        // chunk_starts and previous_end are rewritten below.
        workgroupBarrier();
        if (thread == WORKGROUP_SIZE - 1u) {
            previous_end = walk.end;
        }
        write_elements(block, chunk, has_chunk, chunk_first, first, end, thread);
        round_base = round_end;
        // chunk_counts is rewritten next round.
        workgroupBarrier();
    }
    if (thread == 0u) {
        var problem = atomicLoad(&block_status);
        if (problem == STATUS_NONE) {
            problem = select(STATUS_COUNT | (round_base << STATUS_DETAIL_SHIFT), STATUS_OK, round_base == block.elements);
        }
        status[status_index] = problem;
    }
}

// `symbol | length << ENTRY_LENGTH_SHIFT` of the codeword of at most
// `max_length` bits that the stream bits `bits` (first bit in bit 0) begin
// with, or 0 if there is none. Codewords are read most significant bit
// first.
fn canonical_lookup(bits: u32, max_length: u32) -> u32 {
    var code = 0u;
    for (var len = 1u; len <= max_length; len++) {
        code = (code << 1u) | ((bits >> (len - 1u)) & 1u);
        let info = canonical[TABLE_LENGTHS + len - 1u];
        let offset = code - (info & 0xFFFu);
        if (offset < (info >> TABLE_COUNT_SHIFT)) {
            let slot = ((info >> TABLE_INDEX_SHIFT) & 0x3FFu) + offset;
            let symbol = (canonical[slot / 2u] >> (16u * (slot % 2u))) & 0xFFFFu;
            return symbol | (len << ENTRY_LENGTH_SHIFT);
        }
    }
    return 0u;
}

// Copies the table at `base` into workgroup memory and expands it.
fn build_decode_table(base: u32, thread: u32) {
    for (var word = thread; word < TABLE_WORDS; word += WORKGROUP_SIZE) {
        canonical[word] = tables[base + word];
    }
    workgroupBarrier();
    for (var word = thread; word < FAST_ENTRIES / 2u; word += WORKGROUP_SIZE) {
        let low = canonical_lookup(word * 2u, FAST_BITS);
        let high = canonical_lookup(word * 2u + 1u, FAST_BITS);
        decode_table[word] = low | (high << 16u);
    }
    workgroupBarrier();
}

// The table entry of the codeword the stream bits `bits` begin with.
fn table_entry(bits: u32) -> u32 {
    let index = bits & (FAST_ENTRIES - 1u);
    let entry = (decode_table[index >> 1u] >> ((index & 1u) * 16u)) & 0xFFFFu;
    if ((entry >> ENTRY_LENGTH_SHIFT) != 0u) {
        return entry;
    }
    let long_entry = canonical_lookup(bits, MAX_CODE_BITS);
    // Unreachable for the complete codes the host validated; length 1
    // keeps every decoder advancing regardless.
    return select(1u << ENTRY_LENGTH_SHIFT, long_entry, long_entry != 0u);
}

// hi:lo shifted right by `shift` (0..=31), low word.
fn funnel_shift(low: u32, high: u32, shift: u32) -> u32 {
    return (low >> shift) | select(0u, high << ((32u - shift) & 31u), shift != 0u);
}

// The head plane's word holding the block's stream bit `position`.
fn stream_word(block: Block, position: u32) -> u32 {
    return (block.stream_byte >> 2u) + (((block.stream_byte & 3u) * 8u + position) >> 5u);
}

// A thread's walk along the stream, through its ring.
struct Walker {
    // The stream bit of the next codeword.
    position: u32,
    // The plane word in the ring's first slot.
    ring_base: u32,
    // The ring's words `window_word` and the one after, which a peek at
    // `position` reads while it is in `window_word` (NO_WINDOW: none yet).
    window_word: u32,
    low: u32,
    high: u32,
    finished: bool,
}

// Whether the ring holds the two words a peek at the walker's position
// reads.
fn ring_holds(block: Block, walker: Walker) -> bool {
    return stream_word(block, walker.position) + 1u < walker.ring_base + RING_WORDS;
}

// The 32 stream bits from the walker's position, which the ring holds.
// The walker keeps the two words it reads, so walking a word loads one
// word of the ring instead of two per codeword.
fn ring_peek(block: Block, walker: ptr<function, Walker>, thread: u32) -> u32 {
    let bit = (block.stream_byte & 3u) * 8u + (*walker).position;
    let word = (block.stream_byte >> 2u) + (bit >> 5u);
    let ring = thread * RING_WORDS;
    if (word != (*walker).window_word) {
        if ((*walker).window_word != NO_WINDOW && word == (*walker).window_word + 1u) {
            (*walker).low = (*walker).high;
        } else {
            (*walker).low = rings[ring + word % RING_WORDS];
        }
        (*walker).high = rings[ring + (word + 1u) % RING_WORDS];
        (*walker).window_word = word;
    }
    return funnel_shift((*walker).low, (*walker).high, bit & 31u);
}

// A walker at `position`, whose ring the next open_rings loads.
fn open_walker(block: Block, position: u32, finished: bool, thread: u32) -> Walker {
    let base = stream_word(block, position) / SECTOR_WORDS * SECTOR_WORDS;
    ring_requests[thread] = select(base | RING_FILL, RING_IDLE, finished);
    return Walker(position, base, NO_WINDOW, 0u, 0u, finished);
}

// After a walk step: the ring's first sector is spent once the walker has
// moved past it; ask for the sector after the ring in its place.
fn request_refill(block: Block, walker: ptr<function, Walker>, thread: u32) {
    var request = RING_IDLE;
    if (!(*walker).finished && stream_word(block, (*walker).position) >= (*walker).ring_base + SECTOR_WORDS) {
        (*walker).ring_base += SECTOR_WORDS;
        request = (*walker).ring_base | RING_REFILL;
    }
    ring_requests[thread] = request;
}

// Loads what the rings asked for: consecutive threads load consecutive
// words of a sector, so a subgroup moves whole sectors. `sectors` is 2
// after open_walker, 1 after request_refill. The threads meet before and
// after.
fn fill_rings(sectors: u32, thread: u32) {
    let words = sectors * SECTOR_WORDS;
    let flag = select(RING_REFILL, RING_FILL, sectors == 2u);
    for (var step = 0u; step < words; step++) {
        let index = step * WORKGROUP_SIZE + thread;
        let ring = index / words;
        let request = ring_requests[ring];
        if ((request & flag) != 0u) {
            let word = (request & RING_BASE_MASK) + RING_WORDS - words + index % words;
            rings[ring * RING_WORDS + word % RING_WORDS] = head[word];
        }
    }
}

// Loads every walker's first two sectors, with the threads' meetings
// around it; `pending` then says nobody walks.
fn open_rings(thread: u32) {
    if (thread == 0u) {
        atomicStore(&pending[0], 1u);
        atomicStore(&pending[1], 1u);
    }
    workgroupBarrier();
    fill_rings(2u, thread);
    workgroupBarrier();
}

// The end of a walk step, in two halves around what the threads do
// together (store_runs): the threads meet once each has published its
// ring request (and run), and thread 0 notes whether any is still walking;
// then the rings are refilled and the threads meet again. `pending`
// alternates between two words with `parity`, so that each is reset a
// step before it is used.
fn meet_walkers(walker: Walker, parity: u32, thread: u32) {
    if (!walker.finished) {
        atomicMin(&pending[parity], 0u);
    }
    workgroupBarrier();
    if (thread == 0u) {
        walks_finished = atomicLoad(&pending[parity]);
        atomicStore(&pending[parity ^ 1u], 1u);
    }
}

// The second half: whether every walk has finished.
fn refill_rings(parity: ptr<function, u32>, thread: u32) -> bool {
    fill_rings(1u, thread);
    *parity ^= 1u;
    return workgroupUniformLoad(&walks_finished) != 0u;
}

// The element a head and its stored rest bits make (FieldSplit::join).
fn join(head_symbol: u32, field: u32) -> u32 {
    let rest_bits = params.rest_bits;
    if (params.sign_in_head != 0u) {
        // Sign first: the head is the element's top bits as they are.
        return (head_symbol << rest_bits) | (field << params.rest_const_bits) | params.rest_const_value;
    }
    if (rest_bits == 0u) {
        // The head is the whole FP8 element, rotated left by one.
        return ((head_symbol >> 1u) | (head_symbol << 7u)) & 0xFFu;
    }
    let rest_value = (field << params.rest_const_bits) | params.rest_const_value;
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

fn elements_per_word() -> u32 {
    return 4u / params.width_bytes;
}

// Output word holding the block's element `element`.
fn output_word(block: Block, element: u32) -> u32 {
    return params.out_word + (block.first_element + element) / elements_per_word();
}

// Raw and constant blocks: each thread builds whole words.
fn write_uncoded(block: Block, thread: u32) {
    let per_word = elements_per_word();
    let words = (block.elements + per_word - 1u) / per_word;
    let element_bits = params.width_bytes * 8u;
    for (var word = thread; word < words; word += WORKGROUP_SIZE) {
        let first = word * per_word;
        let count = min(per_word, block.elements - first);
        var heads = 0u;
        if (block.mode == BLOCK_RAW) {
            heads = head_plane_bits(block.stream_byte >> 2u, (block.stream_byte & 3u) * 8u + first * params.head_bits,
                              count * params.head_bits);
        }
        let fields = rest_plane_bits(block.rest_byte >> 2u, (block.rest_byte & 3u) * 8u + first * params.stored_rest_bits,
                               count * params.stored_rest_bits);
        var value = 0u;
        for (var k = 0u; k < count; k++) {
            var head_symbol = block.table_or_value;
            if (block.mode == BLOCK_RAW) {
                head_symbol = (heads >> (k * params.head_bits)) & ((1u << params.head_bits) - 1u);
            }
            let field = (fields >> (k * params.stored_rest_bits)) & ((1u << params.stored_rest_bits) - 1u);
            value |= join(head_symbol, field) << (k * element_bits);
        }
        output[output_word(block, first)] = value;
    }
}

// Inclusive prefix sum of `value` over the workgroup (Hillis-Steele).
fn inclusive_prefix_sum(thread: u32, value: u32) -> u32 {
    chunk_counts[thread] = value;
    for (var offset = 1u; offset < WORKGROUP_SIZE; offset *= 2u) {
        workgroupBarrier();
        var sum = chunk_counts[thread];
        if (thread >= offset) {
            sum += chunk_counts[thread - offset];
        }
        workgroupBarrier();
        chunk_counts[thread] = sum;
    }
    workgroupBarrier();
    return chunk_counts[thread];
}

// Binary search of the block's exceptions, stored `chunk << 8 | boundary`
// in chunk order. Every thread takes as many steps as the longest search
// needs, so the threads of a subgroup load together.
fn find_exception(block: Block, chunk: u32, searching: bool) -> u32 {
    var low = block.exceptions_start;
    var high = block.exceptions_start + block.exceptions_count;
    var found = NO_EXCEPTION;
    for (var span = block.exceptions_count; span != 0u; span /= 2u) {
        if (searching && found == NO_EXCEPTION && low < high) {
            let middle = (low + high) / 2u;
            let entry = exceptions[middle];
            let entry_chunk = entry >> 8u;
            if (entry_chunk == chunk) {
                found = entry & 0xFFu;
            } else if (entry_chunk < chunk) {
                low = middle + 1u;
            } else {
                high = middle;
            }
        }
    }
    return found;
}

// Where chunk `chunk` (if `has_chunk`) starts decoding: bit 0, its exception,
// or `warmup_bits` before it.
fn decode_start(block: Block, chunk: u32, has_chunk: bool) -> u32 {
    let begin = chunk * params.chunk_bits;
    let boundary = find_exception(block, chunk, has_chunk && chunk != 0u);
    if (chunk == 0u) {
        return 0u;
    }
    if (boundary != NO_EXCEPTION) {
        return begin + boundary;
    }
    return select(0u, begin - params.warmup_bits, begin > params.warmup_bits);
}

// Where a chunk's decoder stood when it reached the chunk (clamped to the
// stream's end), where it stopped, and how many codewords it owns.
struct ChunkWalk {
    start: u32,
    end: u32,
    count: u32,
}

// Count pass: every thread walks its chunk (if `has_chunk`) and counts the
// codewords that start in it. Every step advances at least one bit, so it
// always ends.
fn count_chunk(block: Block, chunk: u32, has_chunk: bool, thread: u32) -> ChunkWalk {
    let begin = chunk * params.chunk_bits;
    let stop = min(begin + params.chunk_bits, block.stream_bits);
    var walk = ChunkWalk(0u, 0u, 0u);
    let start = decode_start(block, chunk, has_chunk);
    var walker = open_walker(block, start, !has_chunk, thread);
    open_rings(thread);
    var parity = 0u;
    var started = false;
    loop {
        loop {
            if (walker.finished) {
                break;
            }
            if (walker.position >= begin && !started) {
                walk.start = min(walker.position, block.stream_bits);
                started = true;
            }
            if (walker.position >= stop) {
                walker.finished = true;
                break;
            }
            if (!ring_holds(block, walker)) {
                break;
            }
            let entry = table_entry(ring_peek(block, &walker, thread));
            walker.position += max(entry >> ENTRY_LENGTH_SHIFT, 1u);
            if (started) {
                walk.count += 1u;
            }
        }
        request_refill(block, &walker, thread);
        meet_walkers(walker, parity, thread);
        if (refill_rings(&parity, thread)) {
            break;
        }
    }
    // A chunk that owns no codeword (only the last can) ends where it
    // starts: the codewords before the next end there.
    walk.end = select(walk.start, walker.position, walk.count > 0u);
    return walk;
}

// Joins the runs the threads staged with their rest bits and stores them:
// consecutive threads build consecutive words of a run.
fn store_runs(block: Block, thread: u32) {
    let per_word = elements_per_word();
    let run_words = RUN_ELEMENTS / per_word;
    let width = params.stored_rest_bits;
    let element_bits = params.width_bytes * 8u;
    for (var step = 0u; step < run_words; step++) {
        let index = step * WORKGROUP_SIZE + thread;
        let run = index / run_words;
        let request = chunk_starts[run];
        let offset = index % run_words * per_word;
        let count = request & ((1u << RUN_COUNT_BITS) - 1u);
        if (offset >= count) {
            continue;
        }
        let first = (request >> RUN_COUNT_BITS) + offset;
        let elements = min(per_word, count - offset);
        let fields = rest_plane_bits(block.rest_byte >> 2u, (block.rest_byte & 3u) * 8u + first * width, elements * width);
        let staged = run * RUN_WORDS;
        var value = 0u;
        for (var k = 0u; k < elements; k++) {
            let slot = offset + k;
            var symbol = (runs[staged + slot / 4u] >> (slot % 4u * 8u)) & 0xFFu;
            symbol |= ((runs[staged + RUN_SYMBOL_WORDS] >> slot) & 1u) << 8u;
            let field = (fields >> (k * width)) & ((1u << width) - 1u);
            value |= join(symbol, field) << (k * element_bits);
        }
        output[output_word(block, first)] = value;
    }
}

// Write pass: thread `thread` decodes the block's elements `first..end`
// (multiples of RUN_ELEMENTS, but for the block's end) starting at its
// chunk, whose first codeword is element `chunk_first`: it passes over
// the codewords before `first` (the warm-up's and the previous thread's),
// and goes on past its chunk's end up to `end`.
fn write_elements(block: Block, chunk: u32, has_chunk: bool, chunk_first: u32, first: u32, end: u32, thread: u32) {
    let begin = chunk * params.chunk_bits;
    let start = decode_start(block, chunk, has_chunk);
    var walker = open_walker(block, start, !has_chunk || first >= end, thread);
    open_rings(thread);
    // Codewords still to pass over once in the chunk.
    var skip = first - chunk_first;
    var parity = 0u;
    let staged = thread * RUN_WORDS;
    var run_first = first;
    var run_count = 0u;
    var symbols = 0u;
    var ninth_bits = 0u;
    loop {
        loop {
            if (walker.finished || run_count == RUN_ELEMENTS) {
                break;
            }
            if (walker.position >= block.stream_bits) {
                // Only a stream the status check rejects ends early.
                walker.finished = true;
                break;
            }
            if (!ring_holds(block, walker)) {
                break;
            }
            let entry = table_entry(ring_peek(block, &walker, thread));
            let at = walker.position;
            walker.position += max(entry >> ENTRY_LENGTH_SHIFT, 1u);
            if (at < begin) {
                // Warm-up: the previous chunk's codewords.
                continue;
            }
            if (skip > 0u) {
                skip -= 1u;
                continue;
            }
            let symbol = entry & ENTRY_SYMBOL_MASK;
            symbols |= (symbol & 0xFFu) << (run_count % 4u * 8u);
            ninth_bits |= (symbol >> 8u) << run_count;
            run_count += 1u;
            if (run_count % 4u == 0u) {
                runs[staged + run_count / 4u - 1u] = symbols;
                symbols = 0u;
            }
            if (run_first + run_count == end) {
                walker.finished = true;
            }
        }
        let run_ready = run_count == RUN_ELEMENTS || (walker.finished && run_count > 0u);
        if (run_ready) {
            if (run_count % 4u != 0u) {
                runs[staged + run_count / 4u] = symbols;
            }
            runs[staged + RUN_SYMBOL_WORDS] = ninth_bits;
        }
        chunk_starts[thread] = select(0u, (run_first << RUN_COUNT_BITS) | run_count, run_ready);
        request_refill(block, &walker, thread);
        meet_walkers(walker, parity, thread);
        store_runs(block, thread);
        if (run_ready) {
            run_first += run_count;
            run_count = 0u;
            symbols = 0u;
            ninth_bits = 0u;
        }
        if (refill_rings(&parity, thread)) {
            break;
        }
    }
}

// The first element of the thread's write pass: `element` rounded up to a
// run boundary, within the block.
fn run_boundary(block: Block, element: u32) -> u32 {
    let rounded = (element + RUN_ELEMENTS - 1u) / RUN_ELEMENTS * RUN_ELEMENTS;
    return min(rounded, block.elements);
}
