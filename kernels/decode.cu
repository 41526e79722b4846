// decode.cu — rebuilds ecfloat-coded tensors on NVIDIA GPUs, bit for bit.
//
// This is the algorithm of shaders/decode.wgsl, with the same names for the
// same things (block, chunk, warm-up, exception, seam word, table, status);
// read that file's header for the whole story. In short: one thread block
// decodes one coded block of 64K elements. The canonical code table is
// expanded into a 4096-entry lookup table in shared memory. The block's
// bit stream is cut into chunks; each thread decodes one chunk, starting
// `warmup_bits` early (or at the chunk's stored exception) so that it
// resynchronises onto true codeword boundaries. Per round of 256 chunks:
// a count pass, a block-wide prefix sum, and a write pass that joins each
// head with its raw rest bits. Each chunk must start where the one before
// it ends, and the last must end at the stream's end with as many
// codewords as the block has elements; thread 0 writes the block's status
// word (0, or the first problem found) for the host to check.
//
// Where CUDA differs from WGSL:
//   * CUDA has 8- and 16-bit stores, which never race, so a seam word (one
//     shared by two chunks) is written element by element instead of being
//     zeroed and ORed atomically; whole words are still stored as words.
//   * WGSL cannot hand a storage buffer to a function, so its bit readers
//     come in a `head` and a `rest` version (open_head_reader,
//     skip_head_bits, …); here open_reader and skip_bits take the plane.
//   * One launch decodes many tensors: each thread block reads which
//     dispatch (tensor segment) and which block of it to decode from a
//     work list, so a model layer's tensors go out in one launch.
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
// Global memory is read and written only through load_word, store_word,
// store_narrow and a model_read of each record copied, and every codeword
// lookup and round is marked: the CPU execution defines the ECF_MODEL_*
// hooks to count memory sectors per warp, decodes and idle threads (its
// memory-access model); here they are empty.

typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned char u8;

#define WORKGROUP_SIZE 256u
#define BLOCK_RAW 0u
#define BLOCK_CONSTANT 1u
#define BLOCK_CODED 2u
#define MAX_CODE_BITS 12u
#define TABLE_MASK 0xFFFu
// Per table: 256 words of 16-bit symbols in canonical order, then one word
// per code length 1..=12: first_code | first_index << TABLE_INDEX_SHIFT |
// count << TABLE_COUNT_SHIFT.
#define TABLE_WORDS 268u
#define TABLE_LENGTHS 256u
#define TABLE_INDEX_SHIFT 12u
#define TABLE_COUNT_SHIFT 22u
// A decode table entry: symbol | length << ENTRY_LENGTH_SHIFT.
#define ENTRY_LENGTH_SHIFT 9u
#define ENTRY_SYMBOL_MASK 0x1FFu
#define NO_EXCEPTION 0xFFFFFFFFu
// A block's status word: problem | detail << STATUS_DETAIL_SHIFT.
#define STATUS_OK 0u
#define STATUS_CHUNK_START 1u
#define STATUS_OVERRUN 2u
#define STATUS_COUNT 3u
#define STATUS_NO_BLOCK 4u
#define STATUS_DETAIL_SHIFT 4u
#define STATUS_NONE 0xFFFFFFFFu

#ifndef ECF_MODEL_ACCESS
#define ECF_MODEL_ACCESS(address, bytes, store)
#define ECF_MODEL_DECODE()
#define ECF_MODEL_ROUND(active)
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
    Block block;
};

__device__ __forceinline__ u32 load_word(const u32* words, u32 index) {
    ECF_MODEL_ACCESS(words + index, 4u, false);
    return words[index];
}

__device__ __forceinline__ void store_word(u32* words, u32 index, u32 value) {
    ECF_MODEL_ACCESS(words + index, 4u, true);
    words[index] = value;
}

// A one- or two-byte store.
__device__ __forceinline__ void store_narrow(u8* byte, u32 width, u32 value) {
    ECF_MODEL_ACCESS(byte, width, true);
    if (width == 1u) {
        *byte = (u8)value;
    } else {
        *(u16*)byte = (u16)value;
    }
}

// Marks a record about to be copied from global memory.
template <typename Record>
__device__ __forceinline__ const Record& model_read(const Record& record) {
    ECF_MODEL_ACCESS(&record, (u32)sizeof(Record), false);
    return record;
}

__device__ __forceinline__ u32 canonical_lookup(const u32* table, u32 bits) {
    u32 code = 0u;
    for (u32 len = 1u; len <= MAX_CODE_BITS; len++) {
        code = (code << 1u) | ((bits >> (len - 1u)) & 1u);
        u32 info = load_word(table, TABLE_LENGTHS + len - 1u);
        u32 offset = code - (info & 0xFFFu);
        if (offset < (info >> TABLE_COUNT_SHIFT)) {
            u32 slot = ((info >> TABLE_INDEX_SHIFT) & 0x3FFu) + offset;
            u32 symbol = (load_word(table, slot / 2u) >> (16u * (slot % 2u))) & 0xFFFFu;
            return symbol | (len << ENTRY_LENGTH_SHIFT);
        }
    }
    // Unreachable for the complete codes the host validated; length 1
    // keeps every decoder advancing regardless.
    return 1u << ENTRY_LENGTH_SHIFT;
}

__device__ __forceinline__ void build_decode_table(u16* decode_table, const u32* table, u32 thread) {
    for (u32 index = thread; index < 4096u; index += WORKGROUP_SIZE) {
        decode_table[index] = (u16)canonical_lookup(table, index);
    }
    __syncthreads();
}

// A thread's sequential reader of a bit plane: the 64 bits from the word
// holding its position on, so that walking a chunk loads each word once
// instead of two words per codeword or rest field.
struct BitReader {
    u32 next_word;
    u32 low;
    u32 high;
    u32 shift;
};

// A reader of `words` from bit `bit` on.
__device__ __forceinline__ BitReader open_reader(const u32* words, u32 bit) {
    BitReader reader;
    reader.low = load_word(words, bit >> 5u);
    reader.high = load_word(words, (bit >> 5u) + 1u);
    reader.next_word = (bit >> 5u) + 2u;
    reader.shift = bit & 31u;
    return reader;
}

// The 32 bits from the reader's position.
__device__ __forceinline__ u32 peek_bits(const BitReader& reader) {
    return __funnelshift_r(reader.low, reader.high, reader.shift);
}

// Moves the reader of `words` on by `bits` (at most 32). It then holds the
// words a peek at its new position reads, and no word past them.
__device__ __forceinline__ void skip_bits(BitReader& reader, const u32* words, u32 bits) {
    reader.shift += bits;
    if (reader.shift >= 32u) {
        reader.shift -= 32u;
        reader.low = reader.high;
        reader.high = load_word(words, reader.next_word);
        reader.next_word += 1u;
    }
}

__device__ __forceinline__ u32 rest_field(const Segment& s, u32 element) {
    u32 width = s.params->stored_rest_bits;
    if (width == 0u) {
        return 0u;
    }
    u32 bit = (s.block.rest_byte & 3u) * 8u + element * width;
    u32 word = (s.block.rest_byte >> 2u) + (bit >> 5u);
    u32 shift = bit & 31u;
    u32 bits = __funnelshift_r(load_word(s.dispatch->rest, word), load_word(s.dispatch->rest, word + 1u), shift);
    return bits & ((1u << width) - 1u);
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

__device__ __forceinline__ u32 uncoded_element(const Segment& s, u32 element) {
    u32 head_symbol = s.block.table_or_value;
    if (s.block.mode == BLOCK_RAW) {
        u32 bits = s.params->head_bits;
        u32 bit = (s.block.stream_byte & 3u) * 8u + element * bits;
        u32 word = (s.block.stream_byte >> 2u) + (bit >> 5u);
        u32 value = __funnelshift_r(load_word(s.dispatch->head, word), load_word(s.dispatch->head, word + 1u), bit & 31u);
        head_symbol = value & ((1u << bits) - 1u);
    }
    return join(s.params, head_symbol, rest_field(s, element));
}

__device__ __forceinline__ u32 elements_per_word(const Params* p) {
    return 4u / p->width_bytes;
}

// Index, from the segment's first output word, of the word holding the
// block's element `element`.
__device__ __forceinline__ u32 output_word(const Segment& s, u32 element) {
    return (s.block.first_element + element) / elements_per_word(s.params);
}

// Raw and constant blocks: each thread builds whole words.
__device__ void write_uncoded(const Segment& s, u32 thread) {
    u32 per_word = elements_per_word(s.params);
    u32 words = (s.block.elements + per_word - 1u) / per_word;
    for (u32 word = thread; word < words; word += WORKGROUP_SIZE) {
        u32 value = 0u;
        for (u32 k = 0u; k < per_word; k++) {
            u32 element = word * per_word + k;
            if (element < s.block.elements) {
                value |= uncoded_element(s, element) << (k * s.params->width_bytes * 8u);
            }
        }
        store_word(s.dispatch->output, output_word(s, word * per_word), value);
    }
}

// Inclusive prefix sum of `value` over the thread block (Hillis-Steele).
__device__ __forceinline__ u32 inclusive_prefix_sum(u32* chunk_counts, u32 thread, u32 value) {
    chunk_counts[thread] = value;
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
__device__ __forceinline__ u32 find_exception(const Segment& s, u32 chunk) {
    u32 low = s.block.exceptions_start;
    u32 high = s.block.exceptions_start + s.block.exceptions_count;
    while (low < high) {
        u32 middle = (low + high) / 2u;
        u32 entry = load_word(s.dispatch->exceptions, middle);
        u32 entry_chunk = entry >> 8u;
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

__device__ __forceinline__ u32 decode_start(const Segment& s, u32 chunk) {
    u32 begin = chunk * s.params->chunk_bits;
    if (chunk == 0u) {
        return 0u;
    }
    u32 boundary = find_exception(s, chunk);
    if (boundary != NO_EXCEPTION) {
        return begin + boundary;
    }
    u32 warmup = s.params->warmup_bits;
    return begin > warmup ? begin - warmup : 0u;
}

// Stores a word of elements `word_start..` that this chunk assembled:
// whole if the chunk owns all of it; else, a seam word, element by element
// with narrow stores for the elements in `first..end`.
__device__ __forceinline__ void flush_word(const Segment& s, u32 word_start, u32 value, u32 first, u32 end) {
    u32 per_word = elements_per_word(s.params);
    u32 word_end = min(word_start + per_word, s.block.elements);
    u32 index = output_word(s, word_start);
    if (word_start >= first && word_end <= end) {
        store_word(s.dispatch->output, index, value);
        return;
    }
    u32 width = s.params->width_bytes;
    for (u32 element = max(word_start, first); element < min(word_end, end); element++) {
        u32 k = element - word_start;
        u32 part = value >> (k * width * 8u);
        store_narrow((u8*)(s.dispatch->output + index) + k * width, width, part);
    }
}

// Where a chunk's decoder stood when it reached the chunk (clamped to the
// stream's end), where it stopped, and how many codewords it owns.
struct ChunkWalk {
    u32 start;
    u32 end;
    u32 count;
};

// Decodes the codewords chunk `chunk` owns. Without `write`, only walks
// them; with it, writes them as the block's elements `first..end`. Every
// step advances at least one bit, so it always ends.
__device__ ChunkWalk decode_chunk(const Segment& s, const u16* decode_table, u32 chunk, u32 first, u32 end, bool write) {
    const Params* p = s.params;
    u32 begin = chunk * p->chunk_bits;
    u32 stop = min(begin + p->chunk_bits, s.block.stream_bits);
    u32 per_word = elements_per_word(p);
    u32 element_bits = p->width_bytes * 8u;
    u32 position = decode_start(s, chunk);
    const u32* stream = s.dispatch->head + (s.block.stream_byte >> 2u);
    BitReader heads = open_reader(stream, (s.block.stream_byte & 3u) * 8u + position);
    // Warm-up: codewords before the chunk are the previous chunk's.
    while (position < begin) {
        ECF_MODEL_DECODE();
        u32 length = max((u32)decode_table[peek_bits(heads) & TABLE_MASK] >> ENTRY_LENGTH_SHIFT, 1u);
        position += length;
        skip_bits(heads, stream, length);
    }
    ChunkWalk walk;
    walk.start = min(position, s.block.stream_bits);
    walk.count = 0u;
    u32 word_value = 0u;
    u32 word_start = (first / per_word) * per_word;
    u32 rest_width = p->stored_rest_bits;
    bool read_rests = write && rest_width != 0u && first < s.block.elements;
    const u32* rest_plane = s.dispatch->rest + (s.block.rest_byte >> 2u);
    BitReader rests;
    if (read_rests) {
        rests = open_reader(rest_plane, (s.block.rest_byte & 3u) * 8u + first * rest_width);
    }
    while (position < stop) {
        ECF_MODEL_DECODE();
        u32 entry = decode_table[peek_bits(heads) & TABLE_MASK];
        u32 element = first + walk.count;
        walk.count += 1u;
        if (write && element < s.block.elements) {
            if (element >= word_start + per_word) {
                flush_word(s, word_start, word_value, first, end);
                word_start = (element / per_word) * per_word;
                word_value = 0u;
            }
            u32 field = 0u;
            if (read_rests) {
                field = peek_bits(rests) & ((1u << rest_width) - 1u);
                skip_bits(rests, rest_plane, rest_width);
            }
            u32 value = join(p, entry & ENTRY_SYMBOL_MASK, field);
            word_value |= value << ((element - word_start) * element_bits);
        }
        u32 length = max(entry >> ENTRY_LENGTH_SHIFT, 1u);
        position += length;
        skip_bits(heads, stream, length);
    }
    if (write && walk.count > 0u && first < s.block.elements) {
        flush_word(s, word_start, word_value, first, end);
    }
    // A chunk that owns no codeword (only the last can) ends where it
    // starts: the codewords before the next end there.
    walk.end = walk.count > 0u ? position : walk.start;
    return walk;
}

// `work[2 * i]` is the dispatch and `work[2 * i + 1]` the block that thread
// block `i` decodes; `status[i]` receives the block's status word.
extern "C" __global__ void __launch_bounds__(256) decode(const Dispatch* dispatches, const u32* work, u32* status) {
    __shared__ u16 decode_table[4096];
    __shared__ u32 chunk_counts[WORKGROUP_SIZE];
    // Each chunk's start, for the thread of the chunk before it to check.
    __shared__ u32 chunk_starts[WORKGROUP_SIZE];
    // The lowest problem found (atomically), and the end of the round's
    // last chunk, which the next round's first chunk must start at.
    __shared__ u32 block_status;
    __shared__ u32 previous_end;
    u32 thread = threadIdx.x;
    const Dispatch* dispatch = &model_read(dispatches[load_word(work, 2u * blockIdx.x)]);
    u32 block_index = load_word(work, 2u * blockIdx.x + 1u);
    if (block_index >= dispatch->params.block_count) {
        if (thread == 0u) {
            store_word(status, blockIdx.x, STATUS_NO_BLOCK);
        }
        return;
    }
    Segment s;
    s.params = &dispatch->params;
    s.dispatch = dispatch;
    s.block = model_read(dispatch->blocks[block_index]);
    if (s.block.mode != BLOCK_CODED) {
        write_uncoded(s, thread);
        if (thread == 0u) {
            store_word(status, blockIdx.x, STATUS_OK);
        }
        return;
    }
    if (thread == 0u) {
        block_status = STATUS_NONE;
    }
    build_decode_table(decode_table, dispatch->tables + s.block.table_or_value * TABLE_WORDS, thread);
    u32 chunks = (s.block.stream_bits + s.params->chunk_bits - 1u) / s.params->chunk_bits;
    u32 rounds = (chunks + WORKGROUP_SIZE - 1u) / WORKGROUP_SIZE;
    u32 round_base = 0u;
    for (u32 round_index = 0u; round_index < rounds; round_index++) {
        u32 chunk = round_index * WORKGROUP_SIZE + thread;
        ECF_MODEL_ROUND(chunk < chunks);
        ChunkWalk walk;
        walk.start = 0u;
        walk.end = 0u;
        walk.count = 0u;
        if (chunk < chunks) {
            walk = decode_chunk(s, decode_table, chunk, 0u, 0u, false);
        }
        chunk_starts[thread] = walk.start;
        // The prefix sum's barriers also publish chunk_starts.
        u32 inclusive = inclusive_prefix_sum(chunk_counts, thread, walk.count);
        u32 first = round_base + inclusive - walk.count;
        if (chunk < chunks) {
            if (chunk + 1u == chunks) {
                if (walk.end != s.block.stream_bits) {
                    atomicMin(&block_status, STATUS_OVERRUN | chunk << STATUS_DETAIL_SHIFT);
                }
            } else if (thread + 1u < WORKGROUP_SIZE && walk.end != chunk_starts[thread + 1u]) {
                atomicMin(&block_status, STATUS_CHUNK_START | (chunk + 1u) << STATUS_DETAIL_SHIFT);
            }
            if (thread == 0u && round_index > 0u && walk.start != previous_end) {
                atomicMin(&block_status, STATUS_CHUNK_START | chunk << STATUS_DETAIL_SHIFT);
            }
            decode_chunk(s, decode_table, chunk, first, first + walk.count, true);
        }
        round_base += chunk_counts[WORKGROUP_SIZE - 1u];
        // chunk_counts, chunk_starts and previous_end are rewritten next
        // round.
        __syncthreads();
        if (thread == WORKGROUP_SIZE - 1u) {
            previous_end = walk.end;
        }
    }
    __syncthreads();
    if (thread == 0u) {
        u32 problem = block_status;
        if (problem == STATUS_NONE) {
            problem = round_base == s.block.elements ? STATUS_OK : STATUS_COUNT | round_base << STATUS_DETAIL_SHIFT;
        }
        store_word(status, blockIdx.x, problem);
    }
}
