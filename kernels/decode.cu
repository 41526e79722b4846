// decode.cu — rebuilds ecfloat-coded tensors on NVIDIA GPUs, bit for bit.
//
// This is the algorithm of shaders/decode.wgsl, with the same names for the
// same things (block, chunk, warm-up, exception, ring, run, table, status);
// read that file's header for the whole story. In short: one thread block
// decodes one coded block of 64K elements. Each thread decodes one chunk
// of the block's head stream, starting `warmup_bits` early (or at the
// chunk's stored exception) so that it resynchronises onto true codeword
// boundaries. Per round of 256 chunks: a count pass, a block-wide prefix
// sum, and a write pass. Global memory is only touched in whole sectors by
// consecutive threads: each thread reads its chunk from a ring of two
// sectors in shared memory that the block refills together, and the write
// pass stages each thread's decoded heads in runs of RUN_ELEMENTS, which
// the block then joins with their rest bits and stores, word after word.
// Each chunk must start where the one before it ends, and the last must
// end at the stream's end with as many codewords as the block has
// elements; thread 0 writes the block's status word (0, or the first
// problem found) for the host to check.
//
// Where CUDA differs from WGSL:
//   * WGSL cannot hand a storage buffer to a function, so its plane_bits
//     comes in a `head` and a `rest` version (head_plane_bits,
//     rest_plane_bits); here plane_bits and load_word take the plane.
//   * One launch decodes many tensors: each thread block reads which
//     dispatch (tensor segment) and which block of it to decode from a
//     work list, so a model layer's tensors go out in one launch.
//   * The block's record is copied into shared memory, not registers, which
//     keeps the kernel within 64 registers without spilling.
//   * WGSL also has a compact form, for devices with 16 KiB of workgroup
//     memory; every CUDA GPU has the 32 KiB this needs.
//
// The kernel is compiled at run time by NVRTC for the device's own
// architecture; it includes no headers. Every offset it reads was
// validated on the host (src/backend/gpu/layout.rs, which also holds the
// constants and layouts below). The tests also compile it as C++ and run
// it on the CPU (tests/cuda_on_cpu.rs): it may use only what that
// emulates — __syncthreads, static __shared__ arrays, threadIdx/blockIdx,
// __funnelshift_r, unsigned min/max and atomicMin — and every
// __syncthreads must be reached by all 256 threads.
//
// Global memory is read and written only through load_word, store_word
// and a model_read of each record copied; a thread that leaves out an
// access its neighbours make in the same step says so (model_skip). Every
// codeword lookup and round is marked too: the CPU execution defines the
// ECF_MODEL_* hooks to count memory sectors per warp, decodes and idle
// threads (its memory-access model); here they are empty.

typedef unsigned int u32;
typedef unsigned short u16;

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
// A decode table entry: symbol | length << ENTRY_LENGTH_SHIFT; length 0
// means the codeword is longer than FAST_BITS.
#define ENTRY_LENGTH_SHIFT 9u
#define ENTRY_SYMBOL_MASK 0x1FFu
#define FAST_BITS 10u
#define FAST_ENTRIES 1024u
#define NO_EXCEPTION 0xFFFFFFFFu
// A walker that holds no ring words yet.
#define NO_WINDOW 0xFFFFFFFFu
// A block's status word: problem | detail << STATUS_DETAIL_SHIFT.
#define STATUS_OK 0u
#define STATUS_CHUNK_START 1u
#define STATUS_OVERRUN 2u
#define STATUS_COUNT 3u
#define STATUS_NO_BLOCK 4u
#define STATUS_DETAIL_SHIFT 4u
#define STATUS_NONE 0xFFFFFFFFu
// A thread's ring: two sectors of its stream, the words `base..base + 16`
// with `base` a multiple of SECTOR_WORDS, word w in slot w % RING_WORDS.
#define SECTOR_WORDS 8u
#define RING_WORDS 16u
// A ring request: the ring's base word, and whether the block loads both
// sectors (RING_FILL) or the second (RING_REFILL) for it; RING_IDLE: none.
#define RING_FILL 0x40000000u
#define RING_REFILL 0x80000000u
#define RING_BASE_MASK 0x3FFFFFFFu
#define RING_IDLE 0u
// A run: up to RUN_ELEMENTS decoded heads of consecutive elements, staged
// as bytes in RUN_SYMBOL_WORDS words plus a word of their ninth bits. Runs
// start at multiples of RUN_ELEMENTS in the block, so a run's elements
// fill whole output sectors and its rest bits whole words.
#define RUN_ELEMENTS 32u
#define RUN_SYMBOL_WORDS 8u
#define RUN_WORDS 9u
// A run request: first element << RUN_COUNT_BITS | elements (0: none).
#define RUN_COUNT_BITS 6u

#ifndef ECF_MODEL_ACCESS
#define ECF_MODEL_ACCESS(address, bytes, store)
#define ECF_MODEL_SKIP(store)
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
    // The segment's first output word.
    u32* output;
};

struct Segment {
    const Params* params;
    const Dispatch* dispatch;
    // The block, copied into shared memory.
    const Block* block;
    // The head plane's word, and the bit in it, where the stream starts.
    u32 stream_word;
    u32 stream_shift;
};

// What the block's threads share.
struct Shared {
    Block block;
    // The block's code table, as stored, and the lookup table of its
    // codewords up to FAST_BITS long.
    u32 canonical[TABLE_WORDS];
    u16 decode_table[FAST_ENTRIES];
    u32 rings[WORKGROUP_SIZE * RING_WORDS];
    u32 runs[WORKGROUP_SIZE * RUN_WORDS];
    // Per thread: its ring request; its codeword count, then the prefix
    // sums; its chunk's start, for the thread of the chunk before it to
    // check, then its run request.
    u32 ring_requests[WORKGROUP_SIZE];
    u32 chunk_counts[WORKGROUP_SIZE];
    u32 chunk_starts[WORKGROUP_SIZE];
    // The lowest problem found (atomically), and the end of the round's
    // last chunk, which the next round's first chunk must start at.
    u32 block_status;
    u32 previous_end;
    // Whether every thread has finished its walk: `pending` alternates
    // between two words (1: nobody is walking), which thread 0 copies to
    // `walks_finished`.
    u32 pending[2];
    u32 walks_finished;
};

__device__ __forceinline__ u32 load_word(const u32* words, u32 index) {
    ECF_MODEL_ACCESS(words + index, 4u, false);
    return words[index];
}

__device__ __forceinline__ void store_word(u32* words, u32 index, u32 value) {
    ECF_MODEL_ACCESS(words + index, 4u, true);
    words[index] = value;
}

// Marks a load (store) this thread leaves out while the threads beside it
// make theirs.
__device__ __forceinline__ void model_skip(bool store) {
    ECF_MODEL_SKIP(store);
}

// Marks a record about to be copied from global memory.
template <typename Record>
__device__ __forceinline__ const Record& model_read(const Record& record) {
    ECF_MODEL_ACCESS(&record, (u32)sizeof(Record), false);
    return record;
}

// `symbol | length << ENTRY_LENGTH_SHIFT` of the codeword of at most
// `max_length` bits that the stream bits `bits` (first bit in bit 0) begin
// with, or 0 if there is none. Codewords are read most significant bit
// first.
__device__ __forceinline__ u32 canonical_lookup(const u32* canonical, u32 bits, u32 max_length) {
    u32 code = 0u;
#pragma unroll
    for (u32 len = 1u; len <= max_length; len++) {
        code = (code << 1u) | ((bits >> (len - 1u)) & 1u);
        u32 info = canonical[TABLE_LENGTHS + len - 1u];
        u32 offset = code - (info & 0xFFFu);
        if (offset < (info >> TABLE_COUNT_SHIFT)) {
            u32 slot = ((info >> TABLE_INDEX_SHIFT) & 0x3FFu) + offset;
            u32 symbol = (canonical[slot / 2u] >> (16u * (slot % 2u))) & 0xFFFFu;
            return symbol | (len << ENTRY_LENGTH_SHIFT);
        }
    }
    return 0u;
}

// Copies the block's code table into shared memory and expands it.
__device__ __forceinline__ void build_decode_table(Shared& sh, const u32* table, u32 thread) {
#pragma unroll 1
    for (u32 word = thread; word < TABLE_WORDS; word += WORKGROUP_SIZE) {
        ECF_MODEL_REGION();
        sh.canonical[word] = load_word(table, word);
    }
    __syncthreads();
#pragma unroll 1
    for (u32 index = thread; index < FAST_ENTRIES; index += WORKGROUP_SIZE) {
        ECF_MODEL_REGION();
        sh.decode_table[index] = (u16)canonical_lookup(sh.canonical, index, FAST_BITS);
    }
    __syncthreads();
}

// The table entry of the codeword the stream bits `bits` begin with.
__device__ __forceinline__ u32 table_entry(const Shared& sh, u32 bits) {
    ECF_MODEL_DECODE();
    ECF_MODEL_SHARED(&sh.decode_table[bits & (FAST_ENTRIES - 1u)], 2u);
    u32 entry = sh.decode_table[bits & (FAST_ENTRIES - 1u)];
    if ((entry >> ENTRY_LENGTH_SHIFT) == 0u) {
        ECF_MODEL_REGION();
        entry = canonical_lookup(sh.canonical, bits, MAX_CODE_BITS);
        // Unreachable for the complete codes the host validated; length 1
        // keeps every decoder advancing regardless.
        entry = entry != 0u ? entry : 1u << ENTRY_LENGTH_SHIFT;
    }
    return entry;
}

// The head plane's word holding stream bit `position`.
__device__ __forceinline__ u32 stream_word(const Segment& s, u32 position) {
    return s.stream_word + ((s.stream_shift + position) >> 5u);
}

// A thread's walk along the stream, through its ring.
struct Walker {
    // The stream bit of the next codeword.
    u32 position;
    // The plane word in the ring's first slot.
    u32 ring_base;
    // The ring's words `window_word` and the one after, which a peek at
    // `position` reads while it is in `window_word` (NO_WINDOW: none yet).
    u32 window_word;
    u32 low;
    u32 high;
    bool finished;
};

// Whether the ring holds the two words a peek at the walker's position
// reads.
__device__ __forceinline__ bool ring_holds(const Segment& s, const Walker& walker) {
    return stream_word(s, walker.position) + 1u < walker.ring_base + RING_WORDS;
}

// The 32 stream bits from the walker's position, which the ring holds.
// The walker keeps the two words it reads, so walking a word loads one
// word of the ring instead of two per codeword.
__device__ __forceinline__ u32 ring_peek(const Shared& sh, const Segment& s, Walker& walker, u32 thread) {
    u32 bit = s.stream_shift + walker.position;
    u32 word = s.stream_word + (bit >> 5u);
    const u32* ring = sh.rings + thread * RING_WORDS;
    if (word != walker.window_word) {
        ECF_MODEL_REGION();
        ECF_MODEL_SHARED(&ring[(word + 1u) % RING_WORDS], 4u);
        walker.low = walker.window_word != NO_WINDOW && word == walker.window_word + 1u ? walker.high
                                                                                       : ring[word % RING_WORDS];
        walker.high = ring[(word + 1u) % RING_WORDS];
        walker.window_word = word;
    }
    return __funnelshift_r(walker.low, walker.high, bit & 31u);
}

// A walker at `position`, whose ring the next open_rings loads.
__device__ __forceinline__ Walker open_walker(Shared& sh, const Segment& s, u32 position, bool finished, u32 thread) {
    Walker walker;
    walker.position = position;
    walker.ring_base = stream_word(s, position) / SECTOR_WORDS * SECTOR_WORDS;
    walker.window_word = NO_WINDOW;
    walker.low = 0u;
    walker.high = 0u;
    walker.finished = finished;
    sh.ring_requests[thread] = finished ? RING_IDLE : walker.ring_base | RING_FILL;
    return walker;
}

// After a walk step: the ring's first sector is spent once the walker has
// moved past it; ask for the sector after the ring in its place.
__device__ __forceinline__ void request_refill(Shared& sh, const Segment& s, Walker& walker, u32 thread) {
    u32 request = RING_IDLE;
    if (!walker.finished && stream_word(s, walker.position) >= walker.ring_base + SECTOR_WORDS) {
        walker.ring_base += SECTOR_WORDS;
        request = walker.ring_base | RING_REFILL;
    }
    sh.ring_requests[thread] = request;
}

// Loads what the rings asked for: consecutive threads load consecutive
// words of a sector, so a warp moves whole sectors. `sectors` is 2 after
// open_walker, 1 after request_refill. The threads meet before and after.
__device__ __forceinline__ void fill_rings(Shared& sh, const Segment& s, u32 sectors, u32 thread) {
    u32 words = sectors * SECTOR_WORDS;
    u32 flag = sectors == 2u ? RING_FILL : RING_REFILL;
#pragma unroll 1
    for (u32 step = 0u; step < words; step++) {
        ECF_MODEL_REGION();
        u32 index = step * WORKGROUP_SIZE + thread;
        u32 ring = index / words;
        u32 request = sh.ring_requests[ring];
        if ((request & flag) != 0u) {
            u32 word = (request & RING_BASE_MASK) + RING_WORDS - words + index % words;
            ECF_MODEL_SHARED(&sh.rings[ring * RING_WORDS + word % RING_WORDS], 4u);
            sh.rings[ring * RING_WORDS + word % RING_WORDS] = load_word(s.dispatch->head, word);
        } else {
            model_skip(false);
        }
    }
}

// Loads every walker's first two sectors, with the threads' meetings
// around it; `pending` then says nobody walks.
__device__ __forceinline__ void open_rings(Shared& sh, const Segment& s, u32 thread) {
    if (thread == 0u) {
        sh.pending[0] = 1u;
        sh.pending[1] = 1u;
    }
    __syncthreads();
    fill_rings(sh, s, 2u, thread);
    __syncthreads();
}

// The end of a walk step, in two halves around what the threads do
// together (store_runs): the threads meet once each has published its
// ring request (and run), and thread 0 notes whether any is still walking;
// then the rings are refilled and the threads meet again. `pending`
// alternates between two words with `parity`, so that each is reset a
// step before it is used.
__device__ __forceinline__ void meet_walkers(Shared& sh, const Walker& walker, u32 parity, u32 thread) {
    if (!walker.finished) {
        atomicMin(&sh.pending[parity], 0u);
    }
    __syncthreads();
    if (thread == 0u) {
        sh.walks_finished = sh.pending[parity];
        sh.pending[parity ^ 1u] = 1u;
    }
}

// The second half: whether every walk has finished.
__device__ __forceinline__ bool refill_rings(Shared& sh, const Segment& s, u32& parity, u32 thread) {
    fill_rings(sh, s, 1u, thread);
    __syncthreads();
    parity ^= 1u;
    return sh.walks_finished != 0u;
}

// The element a head and its stored rest bits make (FieldSplit::join).
__device__ __forceinline__ u32 join(const Params* p, u32 head_symbol, u32 field) {
    u32 rest_bits = p->rest_bits;
    if (p->sign_in_head != 0u) {
        // Sign first: the head is the element's top bits as they are.
        return (head_symbol << rest_bits) | (field << p->rest_const_bits) | p->rest_const_value;
    }
    if (rest_bits == 0u) {
        // The head is the whole FP8 element, rotated left by one.
        return ((head_symbol >> 1u) | (head_symbol << 7u)) & 0xFFu;
    }
    u32 rest_value = (field << p->rest_const_bits) | p->rest_const_value;
    u32 low_bits = rest_bits - 1u;
    u32 sign = rest_value >> low_bits;
    u32 low = rest_value & ((1u << low_bits) - 1u);
    return (sign << (p->width_bytes * 8u - 1u)) | (head_symbol << low_bits) | low;
}

// `count` bits (at most 32) of a plane from bit `bit` of word `word`;
// the second word is read only when the bits reach into it.
__device__ __forceinline__ u32 plane_bits(const u32* plane, u32 word, u32 bit, u32 count) {
    if (count == 0u) {
        model_skip(false);
        model_skip(false);
        return 0u;
    }
    word += bit >> 5u;
    u32 shift = bit & 31u;
    u32 low = load_word(plane, word);
    u32 high = 0u;
    if (shift + count > 32u) {
        high = load_word(plane, word + 1u);
    } else {
        model_skip(false);
    }
    u32 bits = __funnelshift_r(low, high, shift);
    return count == 32u ? bits : bits & ((1u << count) - 1u);
}

__device__ __forceinline__ u32 elements_per_word(const Params* p) {
    return 4u / p->width_bytes;
}

// Index, from the segment's first output word, of the word holding the
// block's element `element`.
__device__ __forceinline__ u32 output_word(const Segment& s, u32 element) {
    return (s.block->first_element + element) / elements_per_word(s.params);
}

// Raw and constant blocks: each thread builds whole words.
__device__ void write_uncoded(const Segment& s, u32 thread) {
    const Params* p = s.params;
    u32 per_word = elements_per_word(p);
    u32 words = (s.block->elements + per_word - 1u) / per_word;
    u32 element_bits = p->width_bytes * 8u;
#pragma unroll 1
    for (u32 word = thread; word < words; word += WORKGROUP_SIZE) {
        ECF_MODEL_REGION();
        u32 first = word * per_word;
        u32 count = min(per_word, s.block->elements - first);
        u32 heads = 0u;
        if (s.block->mode == BLOCK_RAW) {
            heads = plane_bits(s.dispatch->head, s.block->stream_byte >> 2u,
                               (s.block->stream_byte & 3u) * 8u + first * p->head_bits, count * p->head_bits);
        }
        u32 fields = plane_bits(s.dispatch->rest, s.block->rest_byte >> 2u,
                                (s.block->rest_byte & 3u) * 8u + first * p->stored_rest_bits,
                                count * p->stored_rest_bits);
        u32 value = 0u;
#pragma unroll 1
        for (u32 k = 0u; k < count; k++) {
            ECF_MODEL_REGION();
            u32 head_symbol = s.block->table_or_value;
            if (s.block->mode == BLOCK_RAW) {
                head_symbol = (heads >> (k * p->head_bits)) & ((1u << p->head_bits) - 1u);
            }
            u32 field = (fields >> (k * p->stored_rest_bits)) & ((1u << p->stored_rest_bits) - 1u);
            value |= join(p, head_symbol, field) << (k * element_bits);
        }
        store_word(s.dispatch->output, output_word(s, first), value);
    }
}

// Inclusive prefix sum of `value` over the thread block (Hillis-Steele).
__device__ __forceinline__ u32 inclusive_prefix_sum(u32* chunk_counts, u32 thread, u32 value) {
    chunk_counts[thread] = value;
#pragma unroll
    for (u32 offset = 1u; offset < WORKGROUP_SIZE; offset *= 2u) {
        __syncthreads();
        u32 sum = chunk_counts[thread];
        if (thread >= offset) {
            sum += chunk_counts[thread - offset];
        }
        __syncthreads();
        chunk_counts[thread] = sum;
    }
    __syncthreads();
    return chunk_counts[thread];
}

// Binary search of the block's exceptions, stored `chunk << 8 | boundary`.
// Every thread takes as many steps as the longest search needs, so the
// threads of a warp load together.
__device__ __forceinline__ u32 find_exception(const Segment& s, u32 chunk, bool searching) {
    u32 low = s.block->exceptions_start;
    u32 high = s.block->exceptions_start + s.block->exceptions_count;
    u32 found = NO_EXCEPTION;
#pragma unroll 1
    for (u32 span = s.block->exceptions_count; span != 0u; span /= 2u) {
        ECF_MODEL_REGION();
        if (searching && found == NO_EXCEPTION && low < high) {
            u32 middle = (low + high) / 2u;
            u32 entry = load_word(s.dispatch->exceptions, middle);
            u32 entry_chunk = entry >> 8u;
            if (entry_chunk == chunk) {
                found = entry & 0xFFu;
            } else if (entry_chunk < chunk) {
                low = middle + 1u;
            } else {
                high = middle;
            }
        } else {
            model_skip(false);
        }
    }
    return found;
}

// Where chunk `chunk` (if `has_chunk`) starts decoding: bit 0, its exception,
// or `warmup_bits` before it.
__device__ __forceinline__ u32 decode_start(const Segment& s, u32 chunk, bool has_chunk) {
    u32 begin = chunk * s.params->chunk_bits;
    u32 boundary = find_exception(s, chunk, has_chunk && chunk != 0u);
    if (chunk == 0u) {
        return 0u;
    }
    if (boundary != NO_EXCEPTION) {
        return begin + boundary;
    }
    u32 warmup = s.params->warmup_bits;
    return begin > warmup ? begin - warmup : 0u;
}

// Where a chunk's decoder stood when it reached the chunk (clamped to the
// stream's end), where it stopped, and how many codewords it owns.
struct ChunkWalk {
    u32 start;
    u32 end;
    u32 count;
};

// Count pass: every thread walks its chunk (if `has_chunk`) and counts the
// codewords that start in it. Every step advances at least one bit, so it
// always ends.
__device__ ChunkWalk count_chunk(Shared& sh, const Segment& s, u32 chunk, bool has_chunk, u32 thread) {
    u32 begin = chunk * s.params->chunk_bits;
    u32 stop = min(begin + s.params->chunk_bits, s.block->stream_bits);
    ChunkWalk walk;
    walk.start = 0u;
    walk.end = 0u;
    walk.count = 0u;
    u32 start = decode_start(s, chunk, has_chunk);
    Walker walker = open_walker(sh, s, start, !has_chunk, thread);
    open_rings(sh, s, thread);
    u32 parity = 0u;
    bool started = false;
#pragma unroll 1
    while (true) {
        ECF_MODEL_REGION();
#pragma unroll 1
        while (!walker.finished) {
            ECF_MODEL_REGION();
            if (walker.position >= begin && !started) {
                walk.start = min(walker.position, s.block->stream_bits);
                started = true;
            }
            if (walker.position >= stop) {
                walker.finished = true;
                break;
            }
            if (!ring_holds(s, walker)) {
                break;
            }
            u32 entry = table_entry(sh, ring_peek(sh, s, walker, thread));
            walker.position += max(entry >> ENTRY_LENGTH_SHIFT, 1u);
            if (started) {
                walk.count += 1u;
            }
        }
        request_refill(sh, s, walker, thread);
        meet_walkers(sh, walker, parity, thread);
        if (refill_rings(sh, s, parity, thread)) {
            break;
        }
    }
    // A chunk that owns no codeword (only the last can) ends where it
    // starts: the codewords before the next end there.
    walk.end = walk.count > 0u ? walker.position : walk.start;
    return walk;
}

// Joins the runs the threads staged with their rest bits and stores them:
// consecutive threads build consecutive words of a run.
__device__ void store_runs(Shared& sh, const Segment& s, u32 thread) {
    const Params* p = s.params;
    u32 per_word = elements_per_word(p);
    u32 run_words = RUN_ELEMENTS / per_word;
    u32 width = p->stored_rest_bits;
    u32 element_bits = p->width_bytes * 8u;
#pragma unroll 1
    for (u32 step = 0u; step < run_words; step++) {
        ECF_MODEL_REGION();
        u32 index = step * WORKGROUP_SIZE + thread;
        u32 run = index / run_words;
        u32 request = sh.chunk_starts[run];
        u32 offset = index % run_words * per_word;
        u32 count = request & ((1u << RUN_COUNT_BITS) - 1u);
        if (offset >= count) {
            model_skip(false);
            model_skip(false);
            model_skip(true);
            continue;
        }
        u32 first = (request >> RUN_COUNT_BITS) + offset;
        u32 elements = min(per_word, count - offset);
        u32 fields = plane_bits(s.dispatch->rest, s.block->rest_byte >> 2u,
                                (s.block->rest_byte & 3u) * 8u + first * width, elements * width);
        const u32* staged = sh.runs + run * RUN_WORDS;
        u32 value = 0u;
#pragma unroll 1
        for (u32 k = 0u; k < elements; k++) {
            ECF_MODEL_REGION();
            u32 slot = offset + k;
            ECF_MODEL_SHARED(&staged[slot / 4u], 4u);
            u32 symbol = (staged[slot / 4u] >> (slot % 4u * 8u)) & 0xFFu;
            symbol |= ((staged[RUN_SYMBOL_WORDS] >> slot) & 1u) << 8u;
            u32 field = (fields >> (k * width)) & ((1u << width) - 1u);
            value |= join(p, symbol, field) << (k * element_bits);
        }
        store_word(s.dispatch->output, output_word(s, first), value);
    }
}

// Write pass: thread `thread` decodes the block's elements `first..end`
// (multiples of RUN_ELEMENTS, but for the block's end) starting at its
// chunk, whose first codeword is element `chunk_first`: it passes over
// the codewords before `first` (the warm-up's and the previous thread's),
// and goes on past its chunk's end up to `end`.
__device__ void write_elements(Shared& sh, const Segment& s, u32 chunk, bool has_chunk, u32 chunk_first, u32 first,
                               u32 end, u32 thread) {
    u32 begin = chunk * s.params->chunk_bits;
    u32 start = decode_start(s, chunk, has_chunk);
    bool finished = !has_chunk || first >= end;
    Walker walker = open_walker(sh, s, start, finished, thread);
    open_rings(sh, s, thread);
    // Codewords still to pass over once in the chunk.
    u32 skip = first - chunk_first;
    u32 parity = 0u;
    u32* staged = sh.runs + thread * RUN_WORDS;
    u32 run_first = first;
    u32 run_count = 0u;
    u32 symbols = 0u;
    u32 ninth_bits = 0u;
#pragma unroll 1
    while (true) {
        ECF_MODEL_REGION();
#pragma unroll 1
        while (!walker.finished && run_count < RUN_ELEMENTS) {
            ECF_MODEL_REGION();
            if (walker.position >= s.block->stream_bits) {
                // Only a stream the status check rejects ends early.
                walker.finished = true;
                break;
            }
            if (!ring_holds(s, walker)) {
                break;
            }
            u32 entry = table_entry(sh, ring_peek(sh, s, walker, thread));
            u32 at = walker.position;
            walker.position += max(entry >> ENTRY_LENGTH_SHIFT, 1u);
            if (at < begin) {
                // Warm-up: the previous chunk's codewords.
                continue;
            }
            if (skip > 0u) {
                skip -= 1u;
                continue;
            }
            u32 symbol = entry & ENTRY_SYMBOL_MASK;
            symbols |= (symbol & 0xFFu) << (run_count % 4u * 8u);
            ninth_bits |= (symbol >> 8u) << run_count;
            run_count += 1u;
            if (run_count % 4u == 0u) {
                staged[run_count / 4u - 1u] = symbols;
                symbols = 0u;
            }
            if (run_first + run_count == end) {
                walker.finished = true;
            }
        }
        bool run_ready = run_count == RUN_ELEMENTS || (walker.finished && run_count > 0u);
        if (run_ready) {
            if (run_count % 4u != 0u) {
                staged[run_count / 4u] = symbols;
            }
            staged[RUN_SYMBOL_WORDS] = ninth_bits;
        }
        sh.chunk_starts[thread] = run_ready ? run_first << RUN_COUNT_BITS | run_count : 0u;
        request_refill(sh, s, walker, thread);
        meet_walkers(sh, walker, parity, thread);
        store_runs(sh, s, thread);
        if (run_ready) {
            run_first += run_count;
            run_count = 0u;
            symbols = 0u;
            ninth_bits = 0u;
        }
        if (refill_rings(sh, s, parity, thread)) {
            break;
        }
    }
}

// The first element of the thread's write pass: `element` rounded up to a
// run boundary, within the block.
__device__ __forceinline__ u32 run_boundary(const Segment& s, u32 element) {
    u32 rounded = (element + RUN_ELEMENTS - 1u) / RUN_ELEMENTS * RUN_ELEMENTS;
    return min(rounded, s.block->elements);
}

// `work[2 * i]` is the dispatch and `work[2 * i + 1]` the block that thread
// block `i` decodes; `status[i]` receives the block's status word.
extern "C" __global__ void __launch_bounds__(256, 4) decode(const Dispatch* dispatches, const u32* work, u32* status) {
    ECF_MODEL_REGION();
    __shared__ Shared sh;
    u32 thread = threadIdx.x;
    const Dispatch* dispatch = &model_read(dispatches[load_word(work, 2u * blockIdx.x)]);
    u32 block_index = load_word(work, 2u * blockIdx.x + 1u);
    if (block_index >= dispatch->params.block_count) {
        if (thread == 0u) {
            store_word(status, blockIdx.x, STATUS_NO_BLOCK);
        }
        return;
    }
    if (thread == 0u) {
        sh.block = model_read(dispatch->blocks[block_index]);
    }
    __syncthreads();
    Segment s;
    s.params = &dispatch->params;
    s.dispatch = dispatch;
    s.block = &sh.block;
    s.stream_word = s.block->stream_byte >> 2u;
    s.stream_shift = (s.block->stream_byte & 3u) * 8u;
    if (s.block->mode != BLOCK_CODED) {
        write_uncoded(s, thread);
        if (thread == 0u) {
            store_word(status, blockIdx.x, STATUS_OK);
        }
        return;
    }
    if (thread == 0u) {
        sh.block_status = STATUS_NONE;
    }
    build_decode_table(sh, dispatch->tables + s.block->table_or_value * TABLE_WORDS, thread);
    u32 chunks = (s.block->stream_bits + s.params->chunk_bits - 1u) / s.params->chunk_bits;
    u32 rounds = (chunks + WORKGROUP_SIZE - 1u) / WORKGROUP_SIZE;
    u32 round_base = 0u;
#pragma unroll 1
    for (u32 round_index = 0u; round_index < rounds; round_index++) {
        ECF_MODEL_REGION();
        u32 chunk = round_index * WORKGROUP_SIZE + thread;
        bool has_chunk = chunk < chunks;
        ECF_MODEL_ROUND(has_chunk);
        ChunkWalk walk = count_chunk(sh, s, chunk, has_chunk, thread);
        sh.chunk_starts[thread] = walk.start;
        // The prefix sum's barriers also publish chunk_starts.
        u32 inclusive = inclusive_prefix_sum(sh.chunk_counts, thread, walk.count);
        u32 chunk_first = round_base + inclusive - walk.count;
        u32 round_end = round_base + sh.chunk_counts[WORKGROUP_SIZE - 1u];
        if (has_chunk) {
            if (chunk + 1u == chunks) {
                if (walk.end != s.block->stream_bits) {
                    atomicMin(&sh.block_status, STATUS_OVERRUN | chunk << STATUS_DETAIL_SHIFT);
                }
            } else if (thread + 1u < WORKGROUP_SIZE && walk.end != sh.chunk_starts[thread + 1u]) {
                atomicMin(&sh.block_status, STATUS_CHUNK_START | (chunk + 1u) << STATUS_DETAIL_SHIFT);
            }
            if (thread == 0u && round_index > 0u && walk.start != sh.previous_end) {
                atomicMin(&sh.block_status, STATUS_CHUNK_START | chunk << STATUS_DETAIL_SHIFT);
            }
        }
        // Each thread writes from its chunk's first element, rounded up to
        // a run, to the next chunk's, so the last thread of the round goes
        // on to the round's end, rounded up the same way.
        bool last_in_round = chunk + 1u == chunks || thread + 1u == WORKGROUP_SIZE;
        u32 next_first = last_in_round ? round_end : round_base + sh.chunk_counts[thread];
        u32 first = run_boundary(s, chunk_first);
        u32 end = run_boundary(s, next_first);
        // chunk_starts and previous_end are rewritten below.
        __syncthreads();
        if (thread == WORKGROUP_SIZE - 1u) {
            sh.previous_end = walk.end;
        }
        write_elements(sh, s, chunk, has_chunk, chunk_first, first, end, thread);
        round_base = round_end;
        // chunk_counts is rewritten next round.
        __syncthreads();
    }
    if (thread == 0u) {
        u32 problem = sh.block_status;
        if (problem == STATUS_NONE) {
            problem = round_base == s.block->elements ? STATUS_OK : STATUS_COUNT | round_base << STATUS_DETAIL_SHIFT;
        }
        store_word(status, blockIdx.x, problem);
    }
}
