// decode.wgsl — rebuilds ecfloat-coded tensors on the GPU, bit for bit.
//
// Each element was split on the host into a *head* (its exponent, maybe a
// few more top bits, and the sign when it is coded; at most 9 bits) and a
// *rest* (the sign when it is not, and the low mantissa bits). Rests are stored raw at a fixed width, so element k's rest is just
// bits k*S.. of the rest plane. Heads are Huffman-coded per *block* of 64K
// elements, one code table per block; one workgroup decodes one block.
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
//   3. write pass: every thread decodes its chunk again and writes its
//      elements, joining each head with its rest.
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
// WGSL has no 8- or 16-bit stores, so elements are assembled into whole
// u32 words. A word that holds elements of two chunks (a *seam* word) is
// first zeroed by the chunk that owns its first element, then, after a
// barrier, each chunk ORs in its part atomically. Words wholly inside one
// chunk are stored plainly. Blocks start on word boundaries, and a tensor's
// output is padded to a whole word, so no word is shared by two
// workgroups.
//
// Raw and constant blocks need no decoding: every thread builds whole
// words directly.
//
// The code table arrives in canonical form (symbols sorted by code length,
// plus the first code and first symbol index of each length) and is expanded
// here into a 4096-entry lookup table indexed by the next 12 stream bits.
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
@group(0) @binding(6) var<storage, read_write> output: array<atomic<u32>>;
@group(0) @binding(7) var<storage, read_write> status: array<u32>;

const WORKGROUP_SIZE: u32 = 256u;
const BLOCK_RAW: u32 = 0u;
const BLOCK_CONSTANT: u32 = 1u;
const BLOCK_CODED: u32 = 2u;
const MAX_CODE_BITS: u32 = 12u;
const TABLE_MASK: u32 = 0xFFFu;
// Per table: 256 words of 16-bit symbols in canonical order, then one word
// per code length 1..=12: first_code | first_index << TABLE_INDEX_SHIFT |
// count << TABLE_COUNT_SHIFT.
const TABLE_WORDS: u32 = 268u;
const TABLE_LENGTHS: u32 = 256u;
const TABLE_INDEX_SHIFT: u32 = 12u;
const TABLE_COUNT_SHIFT: u32 = 22u;
// A decode table entry: symbol | length << ENTRY_LENGTH_SHIFT.
const ENTRY_LENGTH_SHIFT: u32 = 9u;
const ENTRY_SYMBOL_MASK: u32 = 0x1FFu;
const NO_EXCEPTION: u32 = 0xFFFFFFFFu;
// A block's status word: problem | detail << STATUS_DETAIL_SHIFT.
const STATUS_OK: u32 = 0u;
const STATUS_CHUNK_START: u32 = 1u;
const STATUS_OVERRUN: u32 = 2u;
const STATUS_COUNT: u32 = 3u;
const STATUS_NO_BLOCK: u32 = 4u;
const STATUS_DETAIL_SHIFT: u32 = 4u;
const STATUS_NONE: u32 = 0xFFFFFFFFu;

// The expanded decode table: entry i (two per word) is `symbol | length <<
// ENTRY_LENGTH_SHIFT` of the codeword the 12 bits i begin with.
var<workgroup> decode_table: array<u32, 2048>;
// Per-thread codeword counts, then their inclusive prefix sums.
var<workgroup> chunk_counts: array<u32, 256>;
// Each chunk's start, for the thread of the chunk before it to check.
var<workgroup> chunk_starts: array<u32, 256>;
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
        var walk = ChunkWalk(0u, 0u, 0u);
        if (chunk < chunks) {
            walk = decode_chunk(block, chunk, 0u, 0u, false);
        }
        chunk_starts[thread] = walk.start;
        // The prefix sum's barriers also publish chunk_starts.
        let inclusive = inclusive_prefix_sum(thread, walk.count);
        let first = round_base + inclusive - walk.count;
        if (chunk < chunks) {
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
        // Zero the seam word this chunk owns before anyone ORs into it.
        zero_owned_seam(block, first, first + walk.count);
        storageBarrier();
        workgroupBarrier();
        if (chunk < chunks) {
            decode_chunk(block, chunk, first, first + walk.count, true);
        }
        round_base += chunk_counts[WORKGROUP_SIZE - 1u];
        // chunk_counts, chunk_starts and previous_end are rewritten next
        // round.
        workgroupBarrier();
        if (thread == WORKGROUP_SIZE - 1u) {
            previous_end = walk.end;
        }
    }
    workgroupBarrier();
    if (thread == 0u) {
        var problem = atomicLoad(&block_status);
        if (problem == STATUS_NONE) {
            problem = select(STATUS_COUNT | (round_base << STATUS_DETAIL_SHIFT), STATUS_OK, round_base == block.elements);
        }
        status[status_index] = problem;
    }
}

// Expands the canonical table at `base` into `decode_table`: each thread
// fills 16 entries.
fn build_decode_table(base: u32, thread: u32) {
    for (var k = 0u; k < 2048u / WORKGROUP_SIZE; k++) {
        let word = thread + k * WORKGROUP_SIZE;
        let low = canonical_lookup(base, word * 2u);
        let high = canonical_lookup(base, word * 2u + 1u);
        decode_table[word] = low | (high << 16u);
    }
    workgroupBarrier();
}

// `symbol | length << ENTRY_LENGTH_SHIFT` of the codeword that the stream
// bits `bits` (first bit in bit 0) begin with. Codewords are read most
// significant bit first.
fn canonical_lookup(base: u32, bits: u32) -> u32 {
    var code = 0u;
    for (var len = 1u; len <= MAX_CODE_BITS; len++) {
        code = (code << 1u) | ((bits >> (len - 1u)) & 1u);
        let info = tables[base + TABLE_LENGTHS + len - 1u];
        let offset = code - (info & 0xFFFu);
        if (offset < (info >> TABLE_COUNT_SHIFT)) {
            let slot = ((info >> TABLE_INDEX_SHIFT) & 0x3FFu) + offset;
            let symbol = (tables[base + slot / 2u] >> (16u * (slot % 2u))) & 0xFFFFu;
            return symbol | (len << ENTRY_LENGTH_SHIFT);
        }
    }
    // Unreachable for the complete codes the host validated; length 1
    // keeps every decoder advancing regardless.
    return 1u << ENTRY_LENGTH_SHIFT;
}

fn table_entry(bits: u32) -> u32 {
    let index = bits & TABLE_MASK;
    return (decode_table[index >> 1u] >> ((index & 1u) * 16u)) & 0xFFFFu;
}

// A thread's sequential reader of a bit plane (`head` or `rest`): the 64
// bits from the word holding its position on, so that walking a chunk
// loads each word once instead of two words per codeword or rest field.
struct BitReader {
    next_word: u32,
    low: u32,
    high: u32,
    shift: u32,
}

// A reader of `head` from bit `bit` of word `word` on.
fn open_head_reader(word: u32, bit: u32) -> BitReader {
    let first = word + (bit >> 5u);
    return BitReader(first + 2u, head[first], head[first + 1u], bit & 31u);
}

// A reader of `rest` from bit `bit` of word `word` on.
fn open_rest_reader(word: u32, bit: u32) -> BitReader {
    let first = word + (bit >> 5u);
    return BitReader(first + 2u, rest[first], rest[first + 1u], bit & 31u);
}

// The 32 bits from the reader's position.
fn peek_bits(reader: BitReader) -> u32 {
    let high = select(0u, reader.high << ((32u - reader.shift) & 31u), reader.shift != 0u);
    return (reader.low >> reader.shift) | high;
}

// Moves a reader of `head` on by `bits` (at most 32). It then holds the
// words a peek at its new position reads, and no word past them.
fn skip_head_bits(reader: ptr<function, BitReader>, bits: u32) {
    (*reader).shift += bits;
    if ((*reader).shift >= 32u) {
        (*reader).shift -= 32u;
        (*reader).low = (*reader).high;
        (*reader).high = head[(*reader).next_word];
        (*reader).next_word += 1u;
    }
}

// skip_head_bits for a reader of `rest`.
fn skip_rest_bits(reader: ptr<function, BitReader>, bits: u32) {
    (*reader).shift += bits;
    if ((*reader).shift >= 32u) {
        (*reader).shift -= 32u;
        (*reader).low = (*reader).high;
        (*reader).high = rest[(*reader).next_word];
        (*reader).next_word += 1u;
    }
}

// The stored rest bits of the block's element `element`.
fn rest_field(block: Block, element: u32) -> u32 {
    let width = params.stored_rest_bits;
    if (width == 0u) {
        return 0u;
    }
    let bit = (block.rest_byte & 3u) * 8u + element * width;
    let word = (block.rest_byte >> 2u) + (bit >> 5u);
    let shift = bit & 31u;
    let high = select(0u, rest[word + 1u] << ((32u - shift) & 31u), shift != 0u);
    return ((rest[word] >> shift) | high) & ((1u << width) - 1u);
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

// The element of `block` at `element`, for heads that are not coded.
fn uncoded_element(block: Block, element: u32) -> u32 {
    var head_symbol = block.table_or_value;
    if (block.mode == BLOCK_RAW) {
        let bits = params.head_bits;
        let bit = (block.stream_byte & 3u) * 8u + element * bits;
        let word = (block.stream_byte >> 2u) + (bit >> 5u);
        let shift = bit & 31u;
        let high = select(0u, head[word + 1u] << ((32u - shift) & 31u), shift != 0u);
        head_symbol = ((head[word] >> shift) | high) & ((1u << bits) - 1u);
    }
    return join(head_symbol, rest_field(block, element));
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
    for (var word = thread; word < words; word += WORKGROUP_SIZE) {
        var value = 0u;
        for (var k = 0u; k < per_word; k++) {
            let element = word * per_word + k;
            if (element < block.elements) {
                value |= uncoded_element(block, element) << (k * params.width_bytes * 8u);
            }
        }
        atomicStore(&output[output_word(block, word * per_word)], value);
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

// A chunk writing elements `first..end` owns the word holding element
// end - 1 if that word starts inside the range; if the word also holds
// elements past the range (a seam), it is zeroed here, before the write
// pass ORs into it. Past the block's last element there is only padding.
fn zero_owned_seam(block: Block, first: u32, end: u32) {
    let per_word = elements_per_word();
    if (end == first || per_word == 1u || end > block.elements) {
        return;
    }
    let word_start = ((end - 1u) / per_word) * per_word;
    let word_end = min(word_start + per_word, block.elements);
    if (word_start >= first && word_end > end) {
        atomicStore(&output[output_word(block, word_start)], 0u);
    }
}

// Chunk `chunk`'s first decoding position (see the header comment).
fn decode_start(block: Block, chunk: u32) -> u32 {
    let begin = chunk * params.chunk_bits;
    if (chunk == 0u) {
        return 0u;
    }
    let boundary = find_exception(block, chunk);
    if (boundary != NO_EXCEPTION) {
        return begin + boundary;
    }
    return select(0u, begin - params.warmup_bits, begin > params.warmup_bits);
}

// Binary search of the block's exceptions, stored `chunk << 8 | boundary`
// in chunk order.
fn find_exception(block: Block, chunk: u32) -> u32 {
    var low = block.exceptions_start;
    var high = block.exceptions_start + block.exceptions_count;
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

// Where a chunk's decoder stood when it reached the chunk (clamped to the
// stream's end), where it stopped, and how many codewords it owns.
struct ChunkWalk {
    start: u32,
    end: u32,
    count: u32,
}

// Decodes the codewords chunk `chunk` owns. Without `write`, only walks
// them; with it, writes them as the block's elements `first..end`. Every
// step advances at least one bit, so it always ends.
fn decode_chunk(block: Block, chunk: u32, first: u32, end: u32, write: bool) -> ChunkWalk {
    let begin = chunk * params.chunk_bits;
    let stop = min(begin + params.chunk_bits, block.stream_bits);
    let per_word = elements_per_word();
    let element_bits = params.width_bytes * 8u;
    var position = decode_start(block, chunk);
    var heads = open_head_reader(block.stream_byte >> 2u, (block.stream_byte & 3u) * 8u + position);
    // Warm-up: codewords before the chunk are the previous chunk's.
    loop {
        if (position >= begin) {
            break;
        }
        let length = max(table_entry(peek_bits(heads)) >> ENTRY_LENGTH_SHIFT, 1u);
        position += length;
        skip_head_bits(&heads, length);
    }
    var walk = ChunkWalk(min(position, block.stream_bits), 0u, 0u);
    var word_value = 0u;
    var word_start = (first / per_word) * per_word;
    let rest_width = params.stored_rest_bits;
    let read_rests = write && rest_width != 0u && first < block.elements;
    var rests = BitReader(0u, 0u, 0u, 0u);
    if (read_rests) {
        rests = open_rest_reader(block.rest_byte >> 2u, (block.rest_byte & 3u) * 8u + first * rest_width);
    }
    loop {
        if (position >= stop) {
            break;
        }
        let entry = table_entry(peek_bits(heads));
        let element = first + walk.count;
        walk.count += 1u;
        if (write && element < block.elements) {
            if (element >= word_start + per_word) {
                flush_word(block, word_start, word_value, first, end);
                word_start = (element / per_word) * per_word;
                word_value = 0u;
            }
            var field = 0u;
            if (read_rests) {
                field = peek_bits(rests) & ((1u << rest_width) - 1u);
                skip_rest_bits(&rests, rest_width);
            }
            let value = join(entry & ENTRY_SYMBOL_MASK, field);
            word_value |= value << ((element - word_start) * element_bits);
        }
        let length = max(entry >> ENTRY_LENGTH_SHIFT, 1u);
        position += length;
        skip_head_bits(&heads, length);
    }
    if (write && walk.count > 0u && first < block.elements) {
        flush_word(block, word_start, word_value, first, end);
    }
    // A chunk that owns no codeword (only the last can) ends where it
    // starts: the codewords before the next end there.
    walk.end = select(walk.start, position, walk.count > 0u);
    return walk;
}

// Stores a word of elements `word_start..` that this chunk assembled: plainly
// if the chunk owns all of it, else by OR into the zeroed seam word.
fn flush_word(block: Block, word_start: u32, value: u32, first: u32, end: u32) {
    let word_end = min(word_start + elements_per_word(), block.elements);
    let index = output_word(block, word_start);
    if (word_start >= first && word_end <= end) {
        atomicStore(&output[index], value);
    } else {
        atomicOr(&output[index], value);
    }
}
