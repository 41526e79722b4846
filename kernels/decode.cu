// decode.cu — rebuilds ecfloat-coded tensors on NVIDIA GPUs, bit for bit.
//
// This is the algorithm of shaders/decode.wgsl, with the same names for the
// same things (block, chunk, warm-up, exception, window, reader, run,
// group, status); read that file's header for the whole story. In short:
// one thread block decodes one coded block (64K elements by default),
// and each thread one chunk of its head stream, holding its place in the
// stream in registers. A 4096-entry decode table, built in shared memory from the
// block's code table, gives for every 12-bit window of the stream its
// first codeword, and a byte beside it how many whole codewords the window
// holds. Per round of 256 chunks:
//   1. count pass: every thread walks its chunk from its start, a window
//      at a time, and counts the codewords that start in it;
//   2. a block-wide prefix sum turns counts into each chunk's first
//      element;
//   3. write pass: every thread decodes again from its chunk's first
//      codeword its *run*: from its first element rounded up to a multiple
//      of RUN_ELEMENTS to the next chunk's, rounded the same way, a group
//      of RUN_ELEMENTS at a time. It joins heads with their rest bits and
//      stores them in 16-byte vectors (the fast layouts; the others, and a
//      block's last partial group, a word at a time), so no output word is
//      written by two threads and nothing is staged.
// Each chunk must start where the one before it ends, and the last must
// end at the stream's end with as many codewords as the block has
// elements; thread 0 writes the block's status word (0, or the lowest
// problem found: the one the CPU decoder reports first) for the host to
// check.
//
// Where CUDA differs from WGSL:
//   * One launch decodes many tensors: each thread block reads which
//     dispatch (tensor segment) and which block of it to decode from a
//     work list, so a model layer's tensors go out in one launch.
//   * A layout's write path is a function template instantiated per
//     layout, with its shifts fixed at compile time; WGSL picks the
//     layout's shifts at run time.
//   * Groups' 8- and 24-bit rests are loaded, and groups' vectors stored,
//     16 bytes at a time; WGSL moves words.
//   * A thread asks L1 for its chunk's stream words before it walks them,
//     and for a group's rest bits a few groups ahead (prefetch.global.L1),
//     so that its walk does not wait on DRAM at every new sector.
//   * There is no compact form: every CUDA GPU has the shared memory the
//     window counts need.
//
// The kernel is compiled at run time by NVRTC for the device's own
// architecture; it includes no headers. Every offset it reads was
// validated on the host (src/backend/gpu/layout.rs, which also holds the
// constants and layouts below), and a thread never reads past its block's
// stream by more than the planes' padding, whatever the stream holds. The
// tests also compile it as C++ and run it on the CPU (tests/cuda_on_cpu.rs):
// it may use only what that emulates — __syncthreads, static __shared__
// arrays, threadIdx/blockIdx, __funnelshift_r, __brev, __byte_perm,
// unsigned min/max, atomicMin, uint2/uint4 — and every __syncthreads must
// be reached by all 256 threads.
//
// The cost model (tests/common/kernel_cost.rs) weighs NVRTC's SASS of this
// file by what its CPU execution runs: every ECF_MODEL_REGION() marks the
// braces it stands in as a region, whose instructions a warp issues once
// per distinct execution among its threads. So every loop is either
// unrolled whole (`#pragma unroll`; a region in it, inside a branch, has a
// copy per iteration, so the loop's head must give their number) or kept
// rolled (`#pragma unroll 1`) with a region as its body's first statement.
// In a function template, `model_variant` (the template's layout) tells
// the instantiations' counts apart. The planes, the output and the tables
// are touched only through the load_/store_/prefetch_/shared_ functions
// below, which report each access to the model (the block's records and
// its status, a few words a block, directly); here the hooks are empty
// (but the prefetch).

typedef unsigned int u32;

#define WORKGROUP_SIZE 256u
#define BLOCK_RAW 0u
#define BLOCK_CONSTANT 1u
#define BLOCK_CODED 2u
#define MAX_CODE_BITS 12u
// Per table: 256 words of 16-bit symbols in canonical order, then one word
// per code length 1..=12: first_code | first_index << TABLE_INDEX_SHIFT |
// count << TABLE_COUNT_SHIFT.
#define TABLE_WORDS 268u
#define TABLE_LENGTHS 256u
#define TABLE_INDEX_SHIFT 12u
#define TABLE_COUNT_SHIFT 22u
// The decode table: one entry per window of MAX_CODE_BITS stream bits
// (first bit in bit 0): the symbol of the window's first codeword and its
// length; when the second codeword is whole in the window too, ENTRY_PAIR
// and its symbol; and on top the length of what the entry decodes (one
// codeword or two). Per window also a byte of how many whole codewords it
// holds (up to four) and their total length: count | length <<
// WINDOW_BITS_SHIFT.
#define DECODE_ENTRIES 4096u
#define WINDOW_MASK 0xFFFu
#define ENTRY_SYMBOL_MASK 0x1FFu
#define ENTRY_LENGTH_SHIFT 9u
#define ENTRY_LENGTH_MASK 0xFu
#define ENTRY_PAIR 0x2000u
#define ENTRY_SECOND_SHIFT 16u
#define ENTRY_STEP_SHIFT 28u
#define WINDOW_BITS_SHIFT 4u
#define WINDOW_COUNT_MASK 0xFu
#define NO_EXCEPTION 0xFFFFFFFFu
// A block's status word: problem | detail << STATUS_DETAIL_SHIFT.
#define STATUS_OK 0u
#define STATUS_CHUNK_START 1u
#define STATUS_OVERRUN 2u
#define STATUS_COUNT 3u
#define STATUS_NO_BLOCK 4u
#define STATUS_DETAIL_SHIFT 4u
#define STATUS_NONE 0xFFFFFFFFu
// A thread's run of elements starts and ends on a multiple of
// RUN_ELEMENTS (but at the block's end), which the fast write paths decode
// a group at a time and store in vectors of VECTOR_BYTES.
#define RUN_ELEMENTS 16u
#define VECTOR_BYTES 16u
// Zero words after each plane: a thread reads past its block's stream by
// at most a group's codewords and two words, or by PADDING_WORDS when it
// asks L1 for what it reads next.
#define PADDING_WORDS 16u
// Words in a 32-byte sector, what L1 and DRAM move at once; the write
// pass asks L1 for a group's rest bits REST_AHEAD_GROUPS groups ahead.
#define SECTOR_WORDS 8u
#define REST_AHEAD_GROUPS 4u
// The layouts with a write path of their own (Params::fast_layout): the
// element's width in bits, the stored rest bits, the head's form.
#define LAYOUT_GENERIC 0u
#define LAYOUT_16_REST_8 1u
#define LAYOUT_16_SIGNED_REST_7 2u
#define LAYOUT_32_REST_24 3u
#define LAYOUT_32_SIGNED_REST_23 4u
#define LAYOUT_8_REST_1 5u
#define LAYOUT_8_WHOLE 6u

#ifndef ECF_MODEL_ACCESS
#define ECF_MODEL_ACCESS(address, bytes, store)
#define ECF_MODEL_PREFETCH(address) asm volatile("prefetch.global.L1 [%0];" ::"l"(address))
#define ECF_MODEL_SHARED(address, bytes)
#define ECF_MODEL_DECODE()
#define ECF_MODEL_ROUND(active)
#define ECF_MODEL_REGION()
#endif

struct Params {
    u32 block_count;
    u32 width_bytes;
    u32 head_bits;
    u32 rest_bits;
    u32 stored_rest_bits;
    u32 rest_const_bits;
    u32 rest_const_value;
    u32 chunk_bits;
    u32 warmup_bits;
    // Unused here: `output` below already points at the segment's start,
    // and status words are indexed by thread block.
    u32 out_word;
    u32 status_base;
    // 1: heads are sign first (FieldSplit::join).
    u32 sign_in_head;
    // The layout of the write path: LAYOUT_*.
    u32 fast_layout;
    u32 reserved0;
    u32 reserved1;
    u32 reserved2;
};

struct Block {
    u32 stream_byte;
    u32 stream_bits;
    u32 mode;
    u32 table_or_value;
    u32 exceptions_start;
    u32 exceptions_count;
    u32 elements;
    u32 first_element;
    u32 rest_byte;
    u32 reserved0;
    u32 reserved1;
    u32 reserved2;
};

// One tensor segment of a launch: its parameters and device addresses.
struct Dispatch {
    Params params;
    const Block* blocks;
    const u32* tables;
    const u32* exceptions;
    const u32* head;
    const u32* rest;
    // The segment's first output element.
    u32* output;
};

// What the block's threads share.
struct Shared {
    // The block's code table, as stored.
    u32 canonical[TABLE_WORDS];
    u32 decode_table[DECODE_ENTRIES];
    // Per window, its whole codewords among its first four, four bytes a
    // word…
    u32 window_counts[DECODE_ENTRIES / 4u];
    // …made from each window's among its first two, the same way.
    u32 pair_counts[DECODE_ENTRIES / 4u];
    // The prefix sum's two buffers.
    u32 scan[2][WORKGROUP_SIZE];
    // Per thread: where its chunk's first codeword starts, for the thread
    // of the chunk before it to check.
    u32 chunk_starts[WORKGROUP_SIZE];
    // The lowest problem found (atomically), and the end of the round's
    // last chunk, which the next round's first chunk must start at.
    u32 block_status;
    u32 previous_end;
};

__device__ __forceinline__ u32 load_word(const u32* __restrict__ words, u32 index) {
    ECF_MODEL_ACCESS(words + index, 4u, false);
    return words[index];
}

__device__ __forceinline__ uint2 load_pair(const u32* __restrict__ words, u32 index) {
    ECF_MODEL_ACCESS(words + index, 8u, false);
    return *reinterpret_cast<const uint2*>(words + index);
}

__device__ __forceinline__ uint4 load_quad(const u32* __restrict__ words, u32 index) {
    ECF_MODEL_ACCESS(words + index, 16u, false);
    return *reinterpret_cast<const uint4*>(words + index);
}

// Asks L1 for the sector holding `words[index]`, without waiting for it
// (on the CPU, the model counts it as a load no thread waits on).
__device__ __forceinline__ void prefetch_word(const u32* __restrict__ words, u32 index) {
    ECF_MODEL_PREFETCH(words + index);
}

__device__ __forceinline__ void store_word(u32* __restrict__ words, u32 index, u32 value) {
    ECF_MODEL_ACCESS(words + index, 4u, true);
    words[index] = value;
}

__device__ __forceinline__ void store_quad(u32* __restrict__ words, u32 index, uint4 value) {
    ECF_MODEL_ACCESS(words + index, 16u, true);
    *reinterpret_cast<uint4*>(words + index) = value;
}

__device__ __forceinline__ u32 shared_load(const u32* words, u32 index) {
    ECF_MODEL_SHARED(words + index, 4u);
    return words[index];
}

__device__ __forceinline__ void shared_store(u32* words, u32 index, u32 value) {
    ECF_MODEL_SHARED(words + index, 4u);
    words[index] = value;
}

// The block's parameters, read once into registers. Its stream is
// addressed from the word of the head plane where it starts, its rest bits
// and output from their own first words, so that bit offsets fit 32 bits
// whatever the segment's size.
struct Segment {
    // The head plane, and the word of it where the block's stream starts.
    const u32* plane;
    u32 head_word;
    const u32* rest;
    const u32* exceptions;
    u32* output;
    u32 width_bytes;
    u32 chunk_bits;
    u32 warmup_bits;
    // The bit of `plane` where the block's stream starts (from
    // `head_word`), and its length.
    u32 stream_bit;
    u32 stream_bits;
    u32 elements;
    // The bit of `rest` where the block's rest bits start.
    u32 rest_bit;
    u32 exceptions_start;
    u32 exceptions_count;
};

// An element's head and stored rest bits, joined (FieldSplit::join), with
// the tensor's split read once.
struct Join {
    u32 width_bits;
    u32 rest_bits;
    u32 rest_scale;
    u32 rest_const_value;
    bool sign_first;
};

__device__ __forceinline__ Join join_of(const Params& p) {
    Join join;
    join.width_bits = p.width_bytes * 8u;
    join.rest_bits = p.rest_bits;
    join.rest_scale = 1u << p.rest_const_bits;
    join.rest_const_value = p.rest_const_value;
    join.sign_first = p.sign_in_head != 0u;
    return join;
}

__device__ __forceinline__ u32 join(const Join& j, u32 head, u32 field) {
    // field << rest_const_bits | rest_const_value, as WGSL has it, in one
    // multiply-add: the constant fits its bits (validated on the host).
    u32 rest = field * j.rest_scale + j.rest_const_value;
    if (j.sign_first) {
        // Sign first: the head is the element's top bits as they are.
        return (head << j.rest_bits) | rest;
    }
    if (j.rest_bits == 0u) {
        // The head is the whole FP8 element, rotated left by one.
        return ((head >> 1u) | (head << 7u)) & 0xFFu;
    }
    u32 low_bits = j.rest_bits - 1u;
    return ((rest >> low_bits) << (j.width_bits - 1u)) | (head << low_bits) | (rest & ((1u << low_bits) - 1u));
}

// `count` bits (at most 32) of a plane from bit `bit`; the second word is
// read only when the bits reach into it.
__device__ __forceinline__ u32 plane_bits(const u32* __restrict__ plane, u32 bit, u32 count) {
    if (count == 0u) {
        return 0u;
    }
    u32 word = bit >> 5u;
    u32 shift = bit & 31u;
    u32 low = load_word(plane, word);
    u32 high = shift + count > 32u ? load_word(plane, word + 1u) : 0u;
    u32 bits = __funnelshift_r(low, high, shift);
    return count == 32u ? bits : bits & ((1u << count) - 1u);
}

// ---------------------------------------------------------------------
// The decode table.

// Where a window's entry is in the decode table: its first five bits,
// which the most frequent codewords make much alike across a warp's
// lookups, are mixed with the next five before they pick a bank.
__device__ __forceinline__ u32 table_slot(u32 window) {
    return (window & WINDOW_MASK) ^ ((window >> 5u) & 0x1Fu);
}

__device__ __forceinline__ u32 table_entry(const Shared& sh, u32 window) {
    ECF_MODEL_DECODE();
    return shared_load(sh.decode_table, table_slot(window));
}

// The window's count | total length << WINDOW_BITS_SHIFT of its whole
// codewords.
__device__ __forceinline__ u32 whole_codewords(const Shared& sh, u32 window) {
    ECF_MODEL_DECODE();
    const unsigned char* bytes = reinterpret_cast<const unsigned char*>(sh.window_counts);
    u32 index = window & WINDOW_MASK;
    ECF_MODEL_SHARED(bytes + index, 1u);
    return bytes[index];
}

// The length of the entry's first codeword.
__device__ __forceinline__ u32 entry_length(u32 entry) {
    return (entry >> ENTRY_LENGTH_SHIFT) & ENTRY_LENGTH_MASK;
}

__device__ __forceinline__ u32 entry_symbol(u32 entry) {
    return entry & ENTRY_SYMBOL_MASK;
}

// The 12-bit-justified end of the codes of the length that `info` (a
// table's per-length word) describes: (first code + count) << (12 - length).
__device__ __forceinline__ u32 length_limit(u32 info, u32 length) {
    return ((info & 0xFFFu) + (info >> TABLE_COUNT_SHIFT)) << (MAX_CODE_BITS - length);
}

// Copies the block's code table into shared memory and expands it into
// the decode table: first each window's first codeword, then how many
// whole codewords among its first four the window holds (four at most, so
// that it takes two steps; fewer would also be right, only slower).
__device__ void build_decode_table(Shared& sh, const u32* __restrict__ table, u32 thread) {
#pragma unroll 1
    for (u32 word = thread; word < TABLE_WORDS; word += WORKGROUP_SIZE) {
        ECF_MODEL_REGION();
        shared_store(sh.canonical, word, load_word(table, word));
    }
    __syncthreads();
    // Canonical codes, read most significant bit first and justified to 12
    // bits, tile 0..4096 in order of length: each thread fills the entries
    // of 16 consecutive justified codes, whose windows are those codes'
    // bits reversed.
    u32 code = thread * (DECODE_ENTRIES / WORKGROUP_SIZE);
    u32 length = 1u;
    u32 info = shared_load(sh.canonical, TABLE_LENGTHS);
#pragma unroll 1
    for (u32 k = 0u; k < DECODE_ENTRIES / WORKGROUP_SIZE; k++) {
        ECF_MODEL_REGION();
#pragma unroll 1
        while (length_limit(info, length) <= code && length < MAX_CODE_BITS) {
            ECF_MODEL_REGION();
            length += 1u;
            info = shared_load(sh.canonical, TABLE_LENGTHS + length - 1u);
        }
        u32 slot = ((info >> TABLE_INDEX_SHIFT) & 0x3FFu) + (code >> (MAX_CODE_BITS - length)) - (info & 0xFFFu);
        u32 symbol = (shared_load(sh.canonical, (slot >> 1u) & 0xFFu) >> ((slot & 1u) * 16u)) & ENTRY_SYMBOL_MASK;
        u32 window = __brev(code) >> (32u - MAX_CODE_BITS);
        shared_store(sh.decode_table, table_slot(window),
                     symbol | length << ENTRY_LENGTH_SHIFT | length << ENTRY_STEP_SHIFT);
        code += 1u;
    }
    __syncthreads();
    // Each window's first two codewords: its entry with the second when
    // that is whole too (which waits in registers until no thread reads
    // entries any more), and how many whole codewords there are, and their
    // total length, a byte each…
    u32 pair_entries[DECODE_ENTRIES / WORKGROUP_SIZE];
#pragma unroll
    for (u32 round = 0u; round < DECODE_ENTRIES / WORKGROUP_SIZE / 4u; round++) {
        u32 first = thread * 4u + round * WORKGROUP_SIZE * 4u;
        u32 packed = 0u;
#pragma unroll
        for (u32 k = 0u; k < 4u; k++) {
            u32 window = first + k;
            u32 entry = shared_load(sh.decode_table, table_slot(window));
            u32 length = entry_length(entry);
            // The window after the first codeword, its unknown top bits 0:
            // its codeword is whole if it ends within the window.
            u32 next = shared_load(sh.decode_table, table_slot(window >> length));
            u32 both = length + entry_length(next);
            bool whole = both <= MAX_CODE_BITS;
            pair_entries[round * 4u + k] =
                whole ? (entry & (ENTRY_SYMBOL_MASK | ENTRY_LENGTH_MASK << ENTRY_LENGTH_SHIFT)) | ENTRY_PAIR |
                            entry_symbol(next) << ENTRY_SECOND_SHIFT | both << ENTRY_STEP_SHIFT
                      : entry;
            u32 pair = whole ? 2u | both << WINDOW_BITS_SHIFT : 1u | length << WINDOW_BITS_SHIFT;
            packed |= pair << (k * 8u);
        }
        shared_store(sh.pair_counts, first / 4u, packed);
    }
    __syncthreads();
    // …then of its first four: the pair after its pair, if whole too.
#pragma unroll
    for (u32 round = 0u; round < DECODE_ENTRIES / WORKGROUP_SIZE / 4u; round++) {
        u32 first = thread * 4u + round * WORKGROUP_SIZE * 4u;
        u32 pairs = shared_load(sh.pair_counts, first / 4u);
        u32 packed = 0u;
#pragma unroll
        for (u32 k = 0u; k < 4u; k++) {
            u32 window = first + k;
            shared_store(sh.decode_table, table_slot(window), pair_entries[round * 4u + k]);
            u32 pair = (pairs >> (k * 8u)) & 0xFFu;
            u32 length = pair >> WINDOW_BITS_SHIFT;
            u32 after = window >> length;
            u32 next = (shared_load(sh.pair_counts, after / 4u) >> (after % 4u * 8u)) & 0xFFu;
            u32 counts = length + (next >> WINDOW_BITS_SHIFT) <= MAX_CODE_BITS ? pair + next : pair;
            packed |= counts << (k * 8u);
        }
        shared_store(sh.window_counts, first / 4u, packed);
    }
    __syncthreads();
}

// ---------------------------------------------------------------------
// Walking a stream.

// A thread's place in its block's head stream: the bit of the next
// codeword (from the block's first head word), the words `low` and `high`
// that hold at least the 32 bits from it, the bit where `low` is used up,
// and the head plane's word after `high` (its index in the plane, not the
// block, so that its address is one multiply-add from the plane's).
struct Reader {
    u32 bit;
    u32 limit;
    u32 low;
    u32 high;
    u32 next;
};

__device__ __forceinline__ Reader open_reader(const Segment& s, u32 bit) {
    Reader reader;
    u32 word = bit >> 5u;
    reader.bit = bit;
    reader.limit = (word + 1u) * 32u;
    reader.low = load_word(s.plane, s.head_word + word);
    reader.high = load_word(s.plane, s.head_word + word + 1u);
    reader.next = s.head_word + word + 2u;
    return reader;
}

// The 32 stream bits from the reader's place.
__device__ __forceinline__ u32 peek(const Reader& reader) {
    return __funnelshift_r(reader.low, reader.high, reader.bit);
}

// Moves the words along after the reader advanced by at most 32 bits.
__device__ __forceinline__ void refill(const u32* __restrict__ plane, Reader& reader) {
    if (reader.bit >= reader.limit) {
        reader.limit += 32u;
        reader.low = reader.high;
        reader.high = load_word(plane, reader.next);
        reader.next += 1u;
    }
}

// Asks L1 for the sectors of the block's head words `first..=last`
// (capped where a thread may read: PADDING_WORDS past the block's stream),
// so that a thread's walk then finds them there: the loads all go out
// before any is waited on.
__device__ __forceinline__ void prefetch_stream(const Segment& s, u32 first, u32 last) {
    last = min(last, (s.stream_bit + s.stream_bits + 31u) / 32u + PADDING_WORDS - 1u);
#pragma unroll 1
    for (u32 word = first; word <= last; word += SECTOR_WORDS) {
        ECF_MODEL_REGION();
        prefetch_word(s.plane, s.head_word + word);
    }
}

// Binary search of the block's exceptions, stored `chunk << 8 | boundary`.
__device__ __forceinline__ u32 find_exception(const Segment& s, u32 chunk) {
    u32 low = s.exceptions_start;
    u32 high = s.exceptions_start + s.exceptions_count;
    u32 found = NO_EXCEPTION;
#pragma unroll 1
    while (low < high) {
        ECF_MODEL_REGION();
        u32 middle = (low + high) / 2u;
        u32 entry = load_word(s.exceptions, middle);
        u32 entry_chunk = entry >> 8u;
        if (entry_chunk == chunk) {
            found = entry & 0xFFu;
            break;
        }
        if (entry_chunk < chunk) {
            low = middle + 1u;
        } else {
            high = middle;
        }
    }
    return found;
}

// The stream bit where chunk `chunk`'s decoder starts: 0, its exception,
// or `warmup_bits` before it.
__device__ __forceinline__ u32 decode_start(const Segment& s, u32 chunk) {
    u32 begin = chunk * s.chunk_bits;
    if (chunk == 0u) {
        return 0u;
    }
    u32 boundary = s.exceptions_count != 0u ? find_exception(s, chunk) : NO_EXCEPTION;
    if (boundary != NO_EXCEPTION) {
        return begin + boundary;
    }
    return begin > s.warmup_bits ? begin - s.warmup_bits : 0u;
}

// Where a chunk's first codeword starts (clamped to the stream's end),
// where its last ends, and how many it owns.
struct ChunkWalk {
    u32 start;
    u32 end;
    u32 count;
};

// Count pass: the thread walks its chunk from its decode start and counts
// the codewords that start in it, a window at a time where the window's
// whole codewords all start on the same side of the chunk's bounds.
// Every step advances, so it always ends.
__device__ ChunkWalk count_chunk(const Shared& sh, const Segment& s, u32 chunk) {
    u32 begin = s.stream_bit + chunk * s.chunk_bits;
    u32 stop = s.stream_bit + min(chunk * s.chunk_bits + s.chunk_bits, s.stream_bits);
    u32 start = s.stream_bit + decode_start(s, chunk);
    prefetch_stream(s, start / 32u, (stop + MAX_CODE_BITS) / 32u + 1u);
    Reader reader = open_reader(s, start);
    // Warm-up: the codewords before the chunk, whole windows while they
    // end by its start.
#pragma unroll 1
    while (reader.bit < begin) {
        ECF_MODEL_REGION();
        u32 window = peek(reader);
        u32 whole = whole_codewords(sh, window) >> WINDOW_BITS_SHIFT;
        reader.bit += reader.bit + whole <= begin ? whole : entry_length(table_entry(sh, window));
        refill(s.plane, reader);
    }
    ChunkWalk walk;
    walk.start = min(reader.bit, s.stream_bit + s.stream_bits) - s.stream_bit;
    // Whole windows while they end before the chunk's end; `counted`
    // gathers count + 16 * length (a window's count byte), and the lengths
    // are the bits walked.
    u32 counted = 0u;
    u32 walked_from = reader.bit;
    u32 windows_end = stop >= MAX_CODE_BITS ? stop - MAX_CODE_BITS + 1u : 0u;
#pragma unroll 1
    while (reader.bit < windows_end) {
        ECF_MODEL_REGION();
        u32 counts = whole_codewords(sh, peek(reader));
        counted += counts;
        reader.bit += counts >> WINDOW_BITS_SHIFT;
        refill(s.plane, reader);
    }
    u32 count = counted - 16u * (reader.bit - walked_from);
    // Then a codeword at a time up to the chunk's end.
#pragma unroll 1
    while (reader.bit < stop) {
        ECF_MODEL_REGION();
        reader.bit += entry_length(table_entry(sh, peek(reader)));
        count += 1u;
        refill(s.plane, reader);
    }
    walk.count = count;
    // A chunk that owns no codeword (only the last can) ends where it
    // starts: the codewords before the next end there.
    walk.end = count > 0u ? reader.bit - s.stream_bit : walk.start;
    return walk;
}

// Inclusive prefix sum of `value` over the thread block (Hillis-Steele,
// between two buffers, so one barrier a step).
__device__ __forceinline__ u32 inclusive_prefix_sum(Shared& sh, u32 thread, u32 value) {
    u32 sum = value;
    shared_store(sh.scan[0], thread, sum);
    __syncthreads();
#pragma unroll
    for (u32 step = 0u; step < 8u; step++) {
        u32 offset = 1u << step;
        if (thread >= offset) {
            sum += shared_load(sh.scan[step & 1u], thread - offset);
        }
        shared_store(sh.scan[(step + 1u) & 1u], thread, sum);
        __syncthreads();
    }
    return sum;
}

// ---------------------------------------------------------------------
// Writing runs.

// A layout's element width in bytes, and its stored rest bits (its rest
// bits: the fast layouts have no constant rest bits).
__device__ constexpr u32 layout_width(u32 layout) {
    return layout == LAYOUT_16_REST_8 || layout == LAYOUT_16_SIGNED_REST_7    ? 2u
           : layout == LAYOUT_32_REST_24 || layout == LAYOUT_32_SIGNED_REST_23 ? 4u
                                                                                : 1u;
}

__device__ constexpr u32 layout_rest_bits(u32 layout) {
    return layout == LAYOUT_16_REST_8            ? 8u
           : layout == LAYOUT_16_SIGNED_REST_7   ? 7u
           : layout == LAYOUT_32_REST_24         ? 24u
           : layout == LAYOUT_32_SIGNED_REST_23  ? 23u
           : layout == LAYOUT_8_REST_1           ? 1u
                                                 : 0u;
}

// The symbols of the next RUN_ELEMENTS codewords, two a peek at the
// stream (a peek holds 32 bits, two codewords at most 24) and two a word,
// the first in the low half: one lookup where the window holds both whole
// (a pair entry holds them just so), else two.
__device__ __forceinline__ void decode_group(const Shared& sh, const u32* __restrict__ plane, Reader& reader,
                                             u32 (&symbol_pairs)[RUN_ELEMENTS / 2u]) {
#pragma unroll
    for (u32 k = 0u; k < RUN_ELEMENTS / 2u; k++) {
        u32 window = peek(reader);
        u32 entry = table_entry(sh, window);
        u32 both = entry & (ENTRY_SYMBOL_MASK | ENTRY_SYMBOL_MASK << ENTRY_SECOND_SHIFT);
        u32 step = entry >> ENTRY_STEP_SHIFT;
        if ((entry & ENTRY_PAIR) == 0u) {
            ECF_MODEL_REGION();
            // The second codeword is not whole in the window: the window
            // after the first holds it.
            u32 next = table_entry(sh, window >> step);
            both = entry_symbol(entry) | entry_symbol(next) << ENTRY_SECOND_SHIFT;
            step += entry_length(next);
        }
        symbol_pairs[k] = both;
        reader.bit += step;
        refill(plane, reader);
    }
}

// The rest bits of RUN_ELEMENTS elements from element `element` (a
// multiple of RUN_ELEMENTS) in `words`, from bit 0. A block's rest bits
// start on a 16-byte boundary, so 8- and 24-bit rests fill whole 16-byte
// loads; 1-bit rests fill half a word; 7- and 23-bit rests start in the
// middle of a word every other group and are shifted into place.
template <u32 LAYOUT>
__device__ __forceinline__ void load_group_rests(const u32* __restrict__ rest, u32 element,
                                                 u32 (&words)[(RUN_ELEMENTS * layout_rest_bits(LAYOUT) + 31u) / 32u + 1u]) {
    constexpr u32 bits = RUN_ELEMENTS * layout_rest_bits(LAYOUT);
    constexpr u32 count = (bits + 31u) / 32u;
    u32 at = element * layout_rest_bits(LAYOUT);
    if constexpr (bits == 0u) {
        // A whole FP8 element in its head: no rest bits.
    } else if constexpr (bits % 128u == 0u) {
#pragma unroll
        for (u32 q = 0u; q < count / 4u; q++) {
            uint4 quad = load_quad(rest, at / 32u + 4u * q);
            words[4u * q] = quad.x;
            words[4u * q + 1u] = quad.y;
            words[4u * q + 2u] = quad.z;
            words[4u * q + 3u] = quad.w;
        }
    } else if constexpr (bits == 16u) {
        words[0] = load_word(rest, at / 32u) >> (at % 32u);
    } else {
        u32 loaded[count + 1u];
#pragma unroll
        for (u32 w = 0u; w <= count; w++) {
            loaded[w] = load_word(rest, at / 32u + w);
        }
#pragma unroll
        for (u32 w = 0u; w < count; w++) {
            words[w] = __funnelshift_r(loaded[w], loaded[w + 1u], at % 32u);
        }
    }
    words[count] = 0u;
}

// Stored rest bits `at..at + COUNT` of a group's words.
template <u32 COUNT, u32 WORDS>
__device__ __forceinline__ u32 group_field(const u32 (&words)[WORDS], u32 at) {
    u32 field = __funnelshift_r(words[at / 32u], words[at / 32u + 1u], at % 32u);
    return COUNT == 32u ? field : field & ((1u << COUNT) - 1u);
}

// Joins a group's heads (their symbols) and rest bits into output
// words, four a vector, and stores its vectors from output word `word`.
// The layouts have no constant rest bits (write_layout), so each join is a
// few fixed shifts and masks: two elements a word for 16-bit layouts, one
// for 32-bit, four for FP8.
template <u32 LAYOUT>
__device__ __forceinline__ void store_group(u32* __restrict__ output, u32 word,
                                            const u32 (&symbol_pairs)[RUN_ELEMENTS / 2u],
                                            const u32 (&rests)[(RUN_ELEMENTS * layout_rest_bits(LAYOUT) + 31u) / 32u + 1u]) {
    constexpr u32 width = layout_width(LAYOUT);
    constexpr u32 rest_bits = layout_rest_bits(LAYOUT);
    constexpr u32 vectors = RUN_ELEMENTS * width / VECTOR_BYTES;
    constexpr u32 per_vector = RUN_ELEMENTS / vectors;
#pragma unroll
    for (u32 v = 0u; v < vectors; v++) {
        u32 out[4];
#pragma unroll
        for (u32 w = 0u; w < 4u; w++) {
            u32 first = v * per_vector + w * (4u / width);
            if constexpr (width == 2u) {
                // Both heads at once.
                u32 heads = symbol_pairs[first / 2u];
                u32 fields;
                if constexpr (rest_bits == 8u) {
                    // Two rest bytes, one in each half.
                    fields = __byte_perm(rests[first / 4u], 0u, first % 4u == 0u ? 0x4140u : 0x4342u);
                } else {
                    fields = group_field<rest_bits, sizeof(rests) / 4u>(rests, first * rest_bits) |
                             group_field<rest_bits, sizeof(rests) / 4u>(rests, (first + 1u) * rest_bits) << 16u;
                }
                if constexpr (LAYOUT == LAYOUT_16_REST_8) {
                    // sign | exponent | mantissa: the rest's top bit is the sign.
                    out[w] = ((fields << 8u) & 0x80008000u) | (heads << 7u) | (fields & 0x007F007Fu);
                } else {
                    out[w] = (heads << rest_bits) | fields;
                }
            } else if constexpr (width == 4u) {
                u32 field = group_field<rest_bits, sizeof(rests) / 4u>(rests, first * rest_bits);
                u32 head = first % 2u == 0u ? symbol_pairs[first / 2u] & ENTRY_SYMBOL_MASK
                                            : symbol_pairs[first / 2u] >> ENTRY_SECOND_SHIFT;
                if constexpr (LAYOUT == LAYOUT_32_REST_24) {
                    out[w] = ((field << 8u) & 0x80000000u) | (head << 23u) | (field & 0x007FFFFFu);
                } else {
                    out[w] = (head << rest_bits) | field;
                }
            } else {
                u32 heads = __byte_perm(symbol_pairs[first / 2u], symbol_pairs[first / 2u + 1u], 0x6420u);
                if constexpr (LAYOUT == LAYOUT_8_WHOLE) {
                    // The whole element, rotated left by one: rotate back.
                    out[w] = ((heads >> 1u) & 0x7F7F7F7Fu) | ((heads << 7u) & 0x80808080u);
                } else {
                    // Exponent first with a 1-bit rest, the sign: bit k of
                    // the four rest bits goes to the top of byte k.
                    u32 signs = (rests[0] >> (w * 4u + v * 16u)) & 0xFu;
                    out[w] = (heads & 0x7F7F7F7Fu) | (((signs * 0x00204081u) & 0x01010101u) << 7u);
                }
            }
        }
        store_quad(output, word + 4u * v, make_uint4(out[0], out[1], out[2], out[3]));
    }
}

// The thread's run's whole groups, `first` to `end` (elements of the block,
// multiples of RUN_ELEMENTS, the block's output vector-aligned), in the
// layout's write path.
template <u32 LAYOUT>
__device__ void write_groups(const Shared& sh, const Segment& s, Reader& reader, u32 first, u32 end) {
    // The variant its regions' counts go to (cuda_host.h: 0 elsewhere).
    [[maybe_unused]] constexpr u32 model_variant = LAYOUT;
    constexpr u32 rest_words = (RUN_ELEMENTS * layout_rest_bits(LAYOUT) + 31u) / 32u + 1u;
    u32 stream_end = s.stream_bit + s.stream_bits;
    u32 word = first / (4u / layout_width(LAYOUT));
#pragma unroll 1
    for (u32 element = first; element < end; element += RUN_ELEMENTS) {
        ECF_MODEL_REGION();
        if (reader.bit >= stream_end) {
            // Only a stream the status check rejects ends early: stop
            // reading before the plane's padding runs out.
            break;
        }
        // The rest bits of the group REST_AHEAD_GROUPS on, into L1: a
        // group's are at most 48 bytes.
        u32 ahead = min(element + REST_AHEAD_GROUPS * RUN_ELEMENTS, s.elements - 1u) * layout_rest_bits(LAYOUT);
        prefetch_word(s.rest, ahead / 32u);
        if constexpr (RUN_ELEMENTS * layout_rest_bits(LAYOUT) > 256u) {
            prefetch_word(s.rest, ahead / 32u + 8u);
        }
        u32 symbol_pairs[RUN_ELEMENTS / 2u];
        decode_group(sh, s.plane, reader, symbol_pairs);
        u32 rests[rest_words];
        load_group_rests<LAYOUT>(s.rest, element, rests);
        store_group<LAYOUT>(s.output, word, symbol_pairs, rests);
        word += RUN_ELEMENTS * layout_width(LAYOUT) / 4u;
    }
}

// The thread's run from `first` to `end` (elements of the block) a word at
// a time, any layout: a word's elements are decoded one by one and their
// rest bits read together.
__device__ void write_words(const Shared& sh, const Segment& s, const Params& p, Reader& reader, u32 first,
                            u32 end) {
    Join j = join_of(p);
    u32 stream_end = s.stream_bit + s.stream_bits;
    u32 per_word = 4u / s.width_bytes;
    u32 element_bits = s.width_bytes * 8u;
    u32 stored = p.stored_rest_bits;
#pragma unroll 1
    for (u32 element = first; element < end; element += per_word) {
        ECF_MODEL_REGION();
        if (reader.bit >= stream_end) {
            break;
        }
        u32 count = min(per_word, end - element);
        u32 fields = plane_bits(s.rest, s.rest_bit + element * stored, count * stored);
        u32 value = 0u;
#pragma unroll 1
        for (u32 k = 0u; k < count; k++) {
            ECF_MODEL_REGION();
            u32 entry = table_entry(sh, peek(reader));
            reader.bit += entry_length(entry);
            refill(s.plane, reader);
            u32 field = stored == 0u ? 0u : (fields >> (k * stored)) & ((1u << stored) - 1u);
            value |= join(j, entry_symbol(entry), field) << (k * element_bits);
        }
        store_word(s.output, element / per_word, value);
    }
}

// Write pass: the thread decodes the block's elements `first..end` (its
// run: multiples of RUN_ELEMENTS, but for the block's end) from its
// chunk's first codeword at `start`, which is element `chunk_first`: it
// passes over the codewords before `first` (the previous thread's), and
// goes on past its chunk's end up to `end`.
__device__ void write_run(const Shared& sh, const Segment& s, const Params& p, u32 start, u32 chunk_first,
                          u32 first, u32 end) {
    // The chunk's words are in L1 since its count pass, and those past it
    // since the next thread's.
    Reader reader = open_reader(s, s.stream_bit + start);
    // The codewords of the chunk before `first`, whole windows while they
    // all are.
    u32 skip = first - chunk_first;
#pragma unroll 1
    while (skip > 0u) {
        ECF_MODEL_REGION();
        u32 window = peek(reader);
        u32 counts = whole_codewords(sh, window);
        u32 whole = counts & WINDOW_COUNT_MASK;
        bool all = whole <= skip;
        reader.bit += all ? counts >> WINDOW_BITS_SHIFT : entry_length(table_entry(sh, window));
        skip -= all ? whole : 1u;
        refill(s.plane, reader);
    }
    // Whole groups in the layout's own path where the output is
    // vector-aligned; the block's last partial group, and every other
    // layout, a word at a time.
    bool aligned = (reinterpret_cast<unsigned long long>(s.output) & (VECTOR_BYTES - 1u)) == 0u;
    u32 groups_end = p.fast_layout != LAYOUT_GENERIC && aligned ? first + (end - first) / RUN_ELEMENTS * RUN_ELEMENTS
                                                           : first;
    switch (p.fast_layout) {
    case LAYOUT_16_REST_8:
        write_groups<LAYOUT_16_REST_8>(sh, s, reader, first, groups_end);
        break;
    case LAYOUT_16_SIGNED_REST_7:
        write_groups<LAYOUT_16_SIGNED_REST_7>(sh, s, reader, first, groups_end);
        break;
    case LAYOUT_32_REST_24:
        write_groups<LAYOUT_32_REST_24>(sh, s, reader, first, groups_end);
        break;
    case LAYOUT_32_SIGNED_REST_23:
        write_groups<LAYOUT_32_SIGNED_REST_23>(sh, s, reader, first, groups_end);
        break;
    case LAYOUT_8_REST_1:
        write_groups<LAYOUT_8_REST_1>(sh, s, reader, first, groups_end);
        break;
    case LAYOUT_8_WHOLE:
        write_groups<LAYOUT_8_WHOLE>(sh, s, reader, first, groups_end);
        break;
    default:
        break;
    }
    write_words(sh, s, p, reader, groups_end, end);
}

// The first element of a thread's run: `element` rounded up to a multiple
// of RUN_ELEMENTS, within the block.
__device__ __forceinline__ u32 run_boundary(const Segment& s, u32 element) {
    u32 rounded = (element + RUN_ELEMENTS - 1u) / RUN_ELEMENTS * RUN_ELEMENTS;
    return min(rounded, s.elements);
}

// Raw and constant blocks: each thread builds whole words.
__device__ void write_uncoded(const Segment& s, const Params& p, u32 mode, u32 table_or_value, u32 thread) {
    const u32* __restrict__ head = s.plane + s.head_word;
    const u32* __restrict__ rest = s.rest;
    u32* __restrict__ output = s.output;
    Join j = join_of(p);
    u32 per_word = 4u / s.width_bytes;
    u32 words = (s.elements + per_word - 1u) / per_word;
    u32 element_bits = s.width_bytes * 8u;
#pragma unroll 1
    for (u32 word = thread; word < words; word += WORKGROUP_SIZE) {
        ECF_MODEL_REGION();
        u32 first = word * per_word;
        u32 count = min(per_word, s.elements - first);
        u32 heads = mode == BLOCK_RAW ? plane_bits(head, s.stream_bit + first * p.head_bits, count * p.head_bits) : 0u;
        u32 fields = plane_bits(rest, s.rest_bit + first * p.stored_rest_bits, count * p.stored_rest_bits);
        u32 value = 0u;
#pragma unroll 1
        for (u32 k = 0u; k < count; k++) {
            ECF_MODEL_REGION();
            u32 head_symbol = mode == BLOCK_RAW ? (heads >> (k * p.head_bits)) & ((1u << p.head_bits) - 1u)
                                                : table_or_value;
            u32 field = p.stored_rest_bits == 0u ? 0u
                                                 : (fields >> (k * p.stored_rest_bits)) &
                                                       ((1u << p.stored_rest_bits) - 1u);
            value |= join(j, head_symbol, field) << (k * element_bits);
        }
        store_word(output, first / per_word, value);
    }
}

// `work[2 * i]` is the dispatch and `work[2 * i + 1]` the block that thread
// block `i` decodes; `status[i]` receives the block's status word.
extern "C" __global__ void __launch_bounds__(256, 4) decode(const Dispatch* __restrict__ dispatches,
                                                          const u32* __restrict__ work, u32* __restrict__ status) {
    ECF_MODEL_REGION();
    __shared__ Shared sh;
    u32 thread = threadIdx.x;
    uint2 item = load_pair(work, 2u * blockIdx.x);
    const Dispatch* dispatch = dispatches + item.x;
    const u32* record = reinterpret_cast<const u32*>(&dispatch->params);
    uint4 params_words[4];
#pragma unroll
    for (u32 q = 0u; q < 4u; q++) {
        params_words[q] = load_quad(record, 4u * q);
    }
    Params p;
    p.block_count = params_words[0].x;
    p.width_bytes = params_words[0].y;
    p.head_bits = params_words[0].z;
    p.rest_bits = params_words[0].w;
    p.stored_rest_bits = params_words[1].x;
    p.rest_const_bits = params_words[1].y;
    p.rest_const_value = params_words[1].z;
    p.chunk_bits = params_words[1].w;
    p.warmup_bits = params_words[2].x;
    p.out_word = params_words[2].y;
    p.status_base = params_words[2].z;
    p.sign_in_head = params_words[2].w;
    p.fast_layout = params_words[3].x;
    if (item.y >= p.block_count) {
        if (thread == 0u) {
            store_word(status, blockIdx.x, STATUS_NO_BLOCK);
        }
        return;
    }
    const u32* block = reinterpret_cast<const u32*>(dispatch->blocks + item.y);
    uint4 block_words[3];
#pragma unroll
    for (u32 q = 0u; q < 3u; q++) {
        block_words[q] = load_quad(block, 4u * q);
    }
    Segment s;
    u32 stream_byte = block_words[0].x;
    u32 rest_byte = block_words[2].x;
    s.plane = dispatch->head;
    s.head_word = stream_byte / 4u;
    s.rest = dispatch->rest + rest_byte / 4u;
    s.exceptions = dispatch->exceptions;
    s.output = dispatch->output + block_words[1].w / (4u / p.width_bytes);
    s.width_bytes = p.width_bytes;
    s.chunk_bits = p.chunk_bits;
    s.warmup_bits = p.warmup_bits;
    s.stream_bit = stream_byte % 4u * 8u;
    s.stream_bits = block_words[0].y;
    u32 mode = block_words[0].z;
    u32 table_or_value = block_words[0].w;
    s.exceptions_start = block_words[1].x;
    s.exceptions_count = block_words[1].y;
    s.elements = block_words[1].z;
    s.rest_bit = rest_byte % 4u * 8u;
    if (mode != BLOCK_CODED) {
        write_uncoded(s, p, mode, table_or_value, thread);
        if (thread == 0u) {
            store_word(status, blockIdx.x, STATUS_OK);
        }
        return;
    }
    if (thread == 0u) {
        sh.block_status = STATUS_NONE;
    }
    build_decode_table(sh, dispatch->tables + table_or_value * TABLE_WORDS, thread);
    u32 chunks = (s.stream_bits + s.chunk_bits - 1u) / s.chunk_bits;
    u32 rounds = (chunks + WORKGROUP_SIZE - 1u) / WORKGROUP_SIZE;
    u32 round_base = 0u;
#pragma unroll 1
    for (u32 round_index = 0u; round_index < rounds; round_index++) {
        ECF_MODEL_REGION();
        u32 chunk = round_index * WORKGROUP_SIZE + thread;
        bool has_chunk = chunk < chunks;
        ECF_MODEL_ROUND(has_chunk);
        ChunkWalk walk;
        walk.start = 0u;
        walk.end = 0u;
        walk.count = 0u;
        if (has_chunk) {
            ECF_MODEL_REGION();
            walk = count_chunk(sh, s, chunk);
        }
        shared_store(sh.chunk_starts, thread, walk.start);
        // The prefix sum's barriers also publish chunk_starts.
        u32 inclusive = inclusive_prefix_sum(sh, thread, walk.count);
        u32 totals = shared_load(sh.scan[0], WORKGROUP_SIZE - 1u);
        u32 chunk_first = round_base + inclusive - walk.count;
        u32 round_end = round_base + totals;
        if (has_chunk) {
            ECF_MODEL_REGION();
            if (chunk + 1u == chunks) {
                if (walk.end != s.stream_bits) {
                    atomicMin(&sh.block_status, STATUS_OVERRUN | chunk << STATUS_DETAIL_SHIFT);
                }
            } else if (thread + 1u < WORKGROUP_SIZE && walk.end != shared_load(sh.chunk_starts, thread + 1u)) {
                atomicMin(&sh.block_status, STATUS_CHUNK_START | (chunk + 1u) << STATUS_DETAIL_SHIFT);
            }
            if (thread == 0u && round_index > 0u && walk.start != sh.previous_end) {
                atomicMin(&sh.block_status, STATUS_CHUNK_START | chunk << STATUS_DETAIL_SHIFT);
            }
        }
        // Each thread writes from its chunk's first element, rounded up to
        // a multiple of RUN_ELEMENTS, to the next chunk's, so the last
        // thread of the round goes on to the round's end, rounded up the
        // same way.
        bool last_in_round = chunk + 1u >= chunks || thread + 1u == WORKGROUP_SIZE;
        u32 next_first = last_in_round ? round_end : round_base + inclusive;
        u32 first = run_boundary(s, chunk_first);
        u32 end = run_boundary(s, next_first);
        // chunk_starts, scan and previous_end are rewritten below and in
        // the next round.
        __syncthreads();
        if (thread == WORKGROUP_SIZE - 1u) {
            sh.previous_end = walk.end;
        }
        if (has_chunk && first < end) {
            ECF_MODEL_REGION();
            write_run(sh, s, p, walk.start, chunk_first, first, end);
        }
        round_base = round_end;
    }
    if (thread == 0u) {
        u32 problem = sh.block_status;
        if (problem == STATUS_NONE) {
            problem = round_base == s.elements ? STATUS_OK : STATUS_COUNT | round_base << STATUS_DETAIL_SHIFT;
        }
        store_word(status, blockIdx.x, problem);
    }
}
