// harness.cpp — runs kernels/decode.cu on the CPU, for the tests.
//
// The kernel is #included as it is, after cuda_host.h; kernel_layout.h,
// which tests/cuda_on_cpu.rs writes from src/backend/gpu/layout.rs, then
// holds its constants and structs to the host's with static assertions.
//
// A persistent pool of 256 host threads runs a launch: each thread is one
// CUDA thread, and runs every block of the grid in turn, with a barrier
// between blocks (they share the kernel's static "shared memory"). Every
// barrier checks that all threads arrive at the same one (file and line:
// threads one loop iteration apart at the same barrier are caught by the
// timeout instead), and gives up after a timeout instead of hanging, so a
// barrier in divergent code fails the launch with a message; a launch in
// which the threads stop meeting at all (an endless loop) ends the process
// with a message. Under ThreadSanitizer the barriers' mutex and their
// generation counter (released by the last thread to arrive, acquired by
// the others) are what order the threads, so a missing __syncthreads shows
// as a race.
//
// A modelled launch also records what every thread did, and after each
// block counts it per warp of 32 consecutive threads, as a GPU would run
// them. Each region execution (ECF_MODEL_REGION, cuda_host.h) that any
// thread of a warp runs is one warp issue of the region's instructions;
// the threads that run it are the busy lanes. The k-th global load (store,
// prefetch) of the threads in one region execution is one warp request:
// the distinct 32-byte sectors and 128-byte lines it touches are what L1
// and L2 move, against the ideal of its distinct bytes in whole sectors,
// and L1 takes a wavefront (a cycle) for every four lines or four sectors
// of it. A region execution with loads is a round trip to memory: to DRAM
// if one of its loads is the first touch of a sector by its thread in the
// block (an L1 miss), else to L1; whether the warp waits for it, the
// kernel's SASS tells. The k-th shared-memory access is one request too,
// which takes as many wavefronts as its bank conflicts make it. And the
// distinct bytes and sectors of the block, each once, are what DRAM moves,
// against the bytes its requests needed, which shows re-reads.
// tests/common/kernel_cost.rs weighs the kernel's SASS by these counts.

#include "cuda_host.h"

#include "../../kernels/decode.cu"

#include "kernel_layout.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <tuple>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

// Source lines of kernels/decode.cu, and variants of a region (the
// instantiations of a function template), the model keeps counts for: a
// region's counts are at variant * MODEL_LINES + line.
constexpr unsigned MODEL_LINES = 4096;
constexpr unsigned MODEL_VARIANTS = 8;
constexpr unsigned MODEL_REGIONS = MODEL_LINES * MODEL_VARIANTS;

// What a modelled launch did, summed over its blocks; tests/common/
// kernel_on_cpu.rs declares the same struct.
struct ModelCounts {
    // Distinct sectors per warp request, summed.
    unsigned long long load_sectors;
    unsigned long long store_sectors;
    // Distinct bytes loaded and stored by each block, summed.
    unsigned long long load_bytes;
    unsigned long long store_bytes;
    // Per warp request, its distinct bytes, and the sectors they would
    // fill, summed.
    unsigned long long load_access_bytes;
    unsigned long long store_access_bytes;
    unsigned long long load_ideal_sectors;
    unsigned long long store_ideal_sectors;
    unsigned long long decodes;
    // Rounds times threads, and those of them with a chunk to decode.
    unsigned long long thread_rounds;
    unsigned long long active_thread_rounds;
    // Warp requests, the distinct 128-byte lines they touch, and the
    // wavefronts L1 takes for them: its tag stage resolves four lines of
    // four sectors a cycle.
    unsigned long long load_requests;
    unsigned long long store_requests;
    unsigned long long load_lines;
    unsigned long long store_lines;
    unsigned long long load_wavefronts;
    unsigned long long store_wavefronts;
    // Prefetches into L1 (their lines and wavefronts are the loads').
    unsigned long long prefetch_requests;
    // Distinct sectors each block loaded and stored, summed: what DRAM
    // moves when nothing stays in L2 from one block to the next.
    unsigned long long load_block_sectors;
    unsigned long long store_block_sectors;
    // Shared-memory warp requests, and the wavefronts their bank
    // conflicts make them take.
    unsigned long long shared_requests;
    unsigned long long shared_wavefronts;
    // Region executions in which a warp waited on a global load: its
    // dependent round trips to memory, summed over warps.
    unsigned long long round_trips;
    // Barriers the threads of each block met, summed, and blocks run.
    unsigned long long barriers;
    unsigned long long blocks;
};

// Per region (variant * MODEL_LINES + line): its warp issues (the distinct
// executions among a warp's threads), then its executions by threads,
// summed over warps.
struct RegionCounts {
    unsigned long long warp_executions[MODEL_REGIONS];
    unsigned long long thread_executions[MODEL_REGIONS];
    // Of the warp issues, those in which some thread loaded from global
    // memory: with an L1 miss among the loads, and without.
    unsigned long long miss_executions[MODEL_REGIONS];
    unsigned long long hit_executions[MODEL_REGIONS];
};

namespace cuda_on_cpu {

bool modelling = false;

namespace {

using Clock = std::chrono::steady_clock;

// Thrown out of a barrier when the block cannot go on; the launch reports
// why.
struct Abandoned {};

// Where the threads of a block meet.
struct Site {
    const char* file;
    int line;

    bool operator==(const Site& other) const {
        return line == other.line && std::strcmp(file, other.file) == 0;
    }
};

// A barrier for all threads of a block, which fails — every waiting thread
// throws Abandoned — when they meet at different places or do not all
// arrive within the timeout. Threads arrive under a mutex but wait on the
// generation counter (a futex), so that the last one's wake-up does not
// send 255 threads queueing for the mutex.
class BlockBarrier {
public:
    explicit BlockBarrier(unsigned threads) : threads_(threads) {}

    void start(Clock::duration timeout) {
        std::lock_guard lock(mutex_);
        arrived_ = 0;
        failed_.store(false);
        failure_.clear();
        timeout_ = timeout;
    }

    void arrive_and_wait(Site site) {
        unsigned long long generation = 0;
        {
            std::unique_lock lock(mutex_);
            if (failed_.load()) {
                throw Abandoned{};
            }
            if (arrived_ == 0) {
                site_ = site;
            } else if (!(site_ == site)) {
                fail(lock, "threads of block " + std::to_string(block_index.x) + " met at different barriers, " +
                               where(site_) + " and " + where(site) + ": a barrier in divergent code");
            }
            if (++arrived_ == threads_) {
                arrived_ = 0;
                generation_.fetch_add(1, std::memory_order_release);
                generation_.notify_all();
                return;
            }
            generation = generation_.load(std::memory_order_relaxed);
        }
        while (generation_.load(std::memory_order_acquire) == generation) {
            generation_.wait(generation, std::memory_order_acquire);
        }
        if (failed_.load()) {
            throw Abandoned{};
        }
    }

    // Fails the threads waiting here, if some are, when no meeting has
    // happened for the launch's timeout (the launcher watches).
    void time_out() {
        std::unique_lock lock(mutex_);
        if (arrived_ == 0 || failed_.load()) {
            return;
        }
        failure_ = "only " + std::to_string(arrived_) + " of " + std::to_string(threads_) +
                   " threads of block " + std::to_string(block_index.x) + " reached the barrier at " +
                   where(site_) + " in " +
                   std::to_string(std::chrono::duration_cast<std::chrono::seconds>(timeout_).count()) +
                   " s: a barrier in divergent code, or a thread that never arrives";
        wake_failed();
    }

    // What failed, or "" if nothing did.
    std::string failure() {
        std::lock_guard lock(mutex_);
        return failure_;
    }

    // How many times all threads have met so far.
    unsigned long long meetings() {
        return generation_.load();
    }

private:
    static std::string where(Site site) {
        return std::string(site.file) + ":" + std::to_string(site.line);
    }

    [[noreturn]] void fail(std::unique_lock<std::mutex>&, std::string message) {
        if (!failed_.load()) {
            failure_ = std::move(message);
            wake_failed();
        }
        throw Abandoned{};
    }

    // With the mutex held: marks the barrier failed and wakes its waiters.
    void wake_failed() {
        failed_.store(true);
        generation_.fetch_add(1, std::memory_order_release);
        generation_.notify_all();
    }

    const unsigned threads_;
    std::mutex mutex_;
    unsigned arrived_ = 0;
    std::atomic<unsigned long long> generation_{0};
    std::atomic<bool> failed_{false};
    std::string failure_;
    Site site_{"", 0};
    Clock::duration timeout_ = std::chrono::seconds(60);
};

// A region execution of a thread: the region, and a key that the threads
// of a warp share when they run the same execution of it.
struct RegionExecution {
    unsigned region;
    std::uint64_t key;
};

// One access: the region execution it belongs to, its place among that
// execution's accesses of its kind, its address and size.
enum class Kind : unsigned { load, store, prefetch };

struct Access {
    std::uint64_t key;
    unsigned ordinal;
    Kind kind;
    std::uintptr_t address;
    unsigned bytes;
    // The region the access was made in, and for a load whether it is the
    // thread's first touch of a sector in this block (an L1 miss).
    unsigned region;
    bool miss;
};

// An open region of a thread: its execution's key, how often each region
// inside it has run so far (which tells their executions apart), and how
// many loads, stores and shared accesses it has made.
struct Frame {
    std::uint64_t key;
    unsigned region;
    std::vector<std::pair<unsigned, unsigned>> runs;
    unsigned loads = 0;
    unsigned stores = 0;
    unsigned prefetches = 0;
    unsigned shared = 0;
};

std::uint64_t mix(std::uint64_t value) {
    value ^= value >> 30;
    value *= 0xbf58476d1ce4e5b9ull;
    value ^= value >> 27;
    value *= 0x94d049bb133111ebull;
    return value ^ (value >> 31);
}

// What one thread did in the block being run.
struct ThreadLog {
    std::vector<RegionExecution> regions;
    std::vector<Access> accesses;
    std::vector<Access> shared;
    std::vector<Frame> frames;
    // The sectors the thread has loaded in this block.
    std::vector<std::uintptr_t> sectors;
    unsigned long long decodes = 0;
    unsigned long long rounds = 0;
    unsigned long long active_rounds = 0;

    // Empties the log for a new block, keeping its vectors' room: the
    // kernel's body is the outermost region.
    void clear() {
        regions.clear();
        accesses.clear();
        shared.clear();
        frames.clear();
        frames.push_back(Frame{1, 0});
        sectors.clear();
        decodes = rounds = active_rounds = 0;
    }

    Frame& frame() {
        return frames.back();
    }
};

ThreadLog thread_logs[WORKGROUP_SIZE];
ModelCounts model_counts;
RegionCounts region_counts;

constexpr std::uintptr_t SECTOR_BYTES = 32;
constexpr std::uintptr_t LINE_BYTES = 128;
constexpr unsigned WARP_SIZE = 32;
constexpr unsigned BANKS = 32;

// Bytes in the union of `ranges`, which it sorts.
unsigned long long union_bytes(std::vector<std::pair<std::uintptr_t, std::uintptr_t>>& ranges) {
    std::sort(ranges.begin(), ranges.end());
    unsigned long long bytes = 0;
    std::uintptr_t covered = 0;
    for (const auto& [begin, end] : ranges) {
        const std::uintptr_t from = std::max(begin, covered);
        if (end > from) {
            bytes += end - from;
            covered = end;
        }
    }
    return bytes;
}

// Distinct units of `unit` bytes that `accesses` touch.
unsigned long long distinct_units(const Access* first, const Access* last, std::uintptr_t unit,
                                  std::vector<std::uintptr_t>& scratch) {
    scratch.clear();
    for (const Access* access = first; access != last; ++access) {
        if (access->bytes != 0) {
            for (std::uintptr_t u = access->address / unit; u <= (access->address + access->bytes - 1) / unit; ++u) {
                scratch.push_back(u);
            }
        }
    }
    std::sort(scratch.begin(), scratch.end());
    return std::unique(scratch.begin(), scratch.end()) - scratch.begin();
}

bool same_request(const Access& a, const Access& b) {
    return a.kind == b.kind && a.key == b.key && a.ordinal == b.ordinal;
}

bool request_order(const Access& a, const Access& b) {
    return std::tie(a.kind, a.key, a.ordinal, a.address) < std::tie(b.kind, b.key, b.ordinal, b.address);
}

// Adds one warp's global requests to the counts: the k-th load (store) of
// the threads in one region execution is one request.
void account_global(std::vector<Access>& accesses) {
    std::sort(accesses.begin(), accesses.end(), request_order);
    std::vector<std::uintptr_t> scratch;
    std::vector<std::pair<std::uintptr_t, std::uintptr_t>> ranges;
    // Per region execution with loads: its region and whether one missed.
    std::vector<std::tuple<std::uint64_t, unsigned, bool>> waits;
    for (std::size_t begin = 0; begin < accesses.size();) {
        std::size_t end = begin;
        while (end < accesses.size() && same_request(accesses[begin], accesses[end])) {
            ++end;
        }
        const bool store = accesses[begin].kind == Kind::store;
        const bool prefetch = accesses[begin].kind == Kind::prefetch;
        ranges.clear();
        for (std::size_t i = begin; i < end; ++i) {
            if (accesses[i].bytes != 0) {
                ranges.emplace_back(accesses[i].address, accesses[i].address + accesses[i].bytes);
            }
        }
        const unsigned long long bytes = union_bytes(ranges);
        if (bytes != 0) {
            const unsigned long long sectors = distinct_units(&accesses[begin], &accesses[end], SECTOR_BYTES, scratch);
            const unsigned long long lines = distinct_units(&accesses[begin], &accesses[end], LINE_BYTES, scratch);
            const unsigned long long ideal = (bytes + SECTOR_BYTES - 1) / SECTOR_BYTES;
            (store ? model_counts.store_lines : model_counts.load_lines) += lines;
            (store ? model_counts.store_wavefronts : model_counts.load_wavefronts) +=
                std::max((lines + 3) / 4, (sectors + 3) / 4);
            // A prefetch is L1's work, not a request anyone reads.
            if (prefetch) {
                model_counts.prefetch_requests += 1;
            } else {
                (store ? model_counts.store_sectors : model_counts.load_sectors) += sectors;
                (store ? model_counts.store_requests : model_counts.load_requests) += 1;
                (store ? model_counts.store_access_bytes : model_counts.load_access_bytes) += bytes;
                (store ? model_counts.store_ideal_sectors : model_counts.load_ideal_sectors) += ideal;
            }
            if (accesses[begin].kind == Kind::load) {
                bool miss = false;
                for (std::size_t i = begin; i < end; ++i) {
                    miss |= accesses[i].miss;
                }
                waits.emplace_back(accesses[begin].key, accesses[begin].region, miss);
            }
        }
        begin = end;
    }
    std::sort(waits.begin(), waits.end());
    for (std::size_t i = 0; i < waits.size();) {
        std::size_t j = i;
        bool miss = false;
        while (j < waits.size() && std::get<0>(waits[j]) == std::get<0>(waits[i])) {
            miss |= std::get<2>(waits[j]);
            ++j;
        }
        model_counts.round_trips += 1;
        (miss ? region_counts.miss_executions : region_counts.hit_executions)[std::get<1>(waits[i])] += 1;
        i = j;
    }
}

// Adds one warp's shared-memory requests: a request takes as many
// wavefronts as the most distinct words any bank must deliver, and at
// least one per 128 bytes.
void account_shared(std::vector<Access>& accesses) {
    std::sort(accesses.begin(), accesses.end(), request_order);
    std::vector<std::uintptr_t> words;
    for (std::size_t begin = 0; begin < accesses.size();) {
        std::size_t end = begin;
        while (end < accesses.size() && same_request(accesses[begin], accesses[end])) {
            ++end;
        }
        words.clear();
        for (std::size_t i = begin; i < end; ++i) {
            for (std::uintptr_t word = accesses[i].address / 4;
                 word <= (accesses[i].address + accesses[i].bytes - 1) / 4; ++word) {
                words.push_back(word);
            }
        }
        std::sort(words.begin(), words.end());
        words.erase(std::unique(words.begin(), words.end()), words.end());
        unsigned per_bank[BANKS] = {};
        unsigned most = 0;
        for (std::uintptr_t word : words) {
            most = std::max(most, ++per_bank[word % BANKS]);
        }
        const unsigned long long floor = (words.size() * 4 + LINE_BYTES - 1) / LINE_BYTES;
        model_counts.shared_requests += 1;
        model_counts.shared_wavefronts += std::max<unsigned long long>(most, floor);
        begin = end;
    }
}

// Adds one warp's region executions: a warp issues a region's
// instructions once per distinct execution among its threads.
void account_regions(std::vector<RegionExecution>& regions) {
    std::sort(regions.begin(), regions.end(), [](const RegionExecution& a, const RegionExecution& b) {
        return std::tie(a.region, a.key) < std::tie(b.region, b.key);
    });
    for (std::size_t i = 0; i < regions.size(); ++i) {
        const unsigned region = regions[i].region;
        region_counts.thread_executions[region] += 1;
        if (i == 0 || regions[i - 1].region != region || regions[i - 1].key != regions[i].key) {
            region_counts.warp_executions[region] += 1;
        }
    }
}

// Adds the block just run to the model's counts and clears the logs.
void account_block() {
    std::vector<Access> accesses;
    std::vector<Access> shared;
    std::vector<RegionExecution> regions;
    for (unsigned warp = 0; warp < WORKGROUP_SIZE; warp += WARP_SIZE) {
        accesses.clear();
        shared.clear();
        regions.clear();
        for (unsigned lane = 0; lane < WARP_SIZE; ++lane) {
            const ThreadLog& log = thread_logs[warp + lane];
            accesses.insert(accesses.end(), log.accesses.begin(), log.accesses.end());
            shared.insert(shared.end(), log.shared.begin(), log.shared.end());
            regions.insert(regions.end(), log.regions.begin(), log.regions.end());
        }
        account_global(accesses);
        account_shared(shared);
        account_regions(regions);
    }
    // Each byte and sector the block touched, once.
    std::vector<std::pair<std::uintptr_t, std::uintptr_t>> ranges[2];
    std::vector<Access> touched[2];
    for (const ThreadLog& log : thread_logs) {
        for (const Access& access : log.accesses) {
            if (access.bytes != 0) {
                const bool store = access.kind == Kind::store;
                ranges[store].emplace_back(access.address, access.address + access.bytes);
                touched[store].push_back(access);
            }
        }
    }
    std::vector<std::uintptr_t> scratch;
    model_counts.load_bytes += union_bytes(ranges[0]);
    model_counts.store_bytes += union_bytes(ranges[1]);
    model_counts.load_block_sectors +=
        distinct_units(touched[0].data(), touched[0].data() + touched[0].size(), SECTOR_BYTES, scratch);
    model_counts.store_block_sectors +=
        distinct_units(touched[1].data(), touched[1].data() + touched[1].size(), SECTOR_BYTES, scratch);
    model_counts.blocks += 1;
    for (ThreadLog& log : thread_logs) {
        model_counts.decodes += log.decodes;
        model_counts.thread_rounds += log.rounds;
        model_counts.active_thread_rounds += log.active_rounds;
        log.clear();
    }
}

// The host threads that run launches, created once.
class Pool {
public:
    explicit Pool(unsigned threads) : barrier_(threads) {
        workers_.reserve(threads);
        for (unsigned thread = 0; thread < threads; ++thread) {
            workers_.emplace_back([this, thread] { work(thread); });
        }
    }

    // Never destroyed: its threads wait for launches until the process
    // ends.
    Pool(const Pool&) = delete;

    BlockBarrier& barrier() {
        return barrier_;
    }

    // Runs `blocks` blocks of `kernel`; "" or what went wrong.
    std::string run(unsigned blocks, std::function<void()> kernel, Clock::duration timeout) {
        std::unique_lock lock(mutex_);
        kernel_ = std::move(kernel);
        blocks_ = blocks;
        finished_ = 0;
        barrier_.start(timeout);
        ++launch_;
        start_.notify_all();
        // Threads that never reach a barrier (an endless loop, say) make no
        // progress: after a timeout without the threads meeting, the launch
        // has hung.
        unsigned long long meetings = barrier_.meetings();
        Clock::time_point progress = Clock::now();
        while (finished_ < workers_.size()) {
            done_.wait_for(lock, std::chrono::milliseconds(100));
            if (finished_ == workers_.size()) {
                break;
            }
            if (barrier_.meetings() != meetings) {
                meetings = barrier_.meetings();
                progress = Clock::now();
            } else if (Clock::now() - progress > timeout) {
                barrier_.time_out();
            }
            if (Clock::now() - progress > 2 * timeout) {
                hung(std::to_string(workers_.size() - finished_) + " of " + std::to_string(workers_.size()) +
                     " threads did not finish and met at no barrier in " +
                     std::to_string(std::chrono::duration_cast<std::chrono::seconds>(2 * timeout).count()) +
                     " s: an endless loop" + (barrier_.failure().empty() ? "" : "; " + barrier_.failure()));
            }
        }
        kernel_ = nullptr;
        return barrier_.failure();
    }

private:
    // Threads still running a launch may use the caller's buffers, which
    // the caller frees once the launch returns: a hung launch ends the
    // process, saying why, rather than let them.
    [[noreturn]] static void hung(const std::string& why) {
        std::fprintf(stderr, "kernels/decode.cu on the CPU: the launch hung: %s\n", why.c_str());
        std::fflush(stderr);
        std::abort();
    }

    void work(unsigned thread) {
        thread_index = dim3{thread, 0u, 0u};
        unsigned long long seen = 0;
        for (;;) {
            std::function<void()> kernel;
            unsigned blocks = 0;
            {
                std::unique_lock lock(mutex_);
                start_.wait(lock, [&] { return launch_ != seen; });
                seen = launch_;
                kernel = kernel_;
                blocks = blocks_;
            }
            try {
                for (unsigned block = 0; block < blocks; ++block) {
                    block_index = dim3{block, 0u, 0u};
                    kernel();
                    // The next block reuses the same shared memory.
                    barrier_.arrive_and_wait(Site{"the end of a block", 0});
                    if (modelling) {
                        if (thread == 0) {
                            account_block();
                        }
                        barrier_.arrive_and_wait(Site{"the model's count of a block", 0});
                    }
                }
            } catch (const Abandoned&) {
            }
            std::lock_guard lock(mutex_);
            if (++finished_ == workers_.size()) {
                done_.notify_all();
            }
        }
    }

    std::vector<std::thread> workers_;
    std::mutex mutex_;
    std::condition_variable start_;
    std::condition_variable done_;
    unsigned long long launch_ = 0;
    unsigned finished_ = 0;
    unsigned blocks_ = 0;
    std::function<void()> kernel_;
    BlockBarrier barrier_;
};

Pool& pool() {
    static Pool* pool = new Pool(WORKGROUP_SIZE);
    return *pool;
}

std::mutex launches;

// Runs one launch at a time, whatever the callers' threads; modelled when
// `model` is given, which then receives the counts.
int launch(unsigned blocks, std::function<void()> kernel, double timeout_seconds, char* message,
           std::size_t message_len, ModelCounts* model = nullptr, RegionCounts* regions = nullptr) {
    std::lock_guard lock(launches);
    modelling = model != nullptr;
    model_counts = ModelCounts{};
    if (modelling) {
        std::memset(&region_counts, 0, sizeof region_counts);
    }
    for (ThreadLog& log : thread_logs) {
        log.clear();
    }
    const std::string failure = pool().run(
        blocks, std::move(kernel),
        std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout_seconds)));
    modelling = false;
    if (model != nullptr) {
        *model = model_counts;
        if (regions != nullptr) {
            *regions = region_counts;
        }
    }
    if (failure.empty()) {
        return 0;
    }
    std::snprintf(message, message_len, "%s", failure.c_str());
    return 1;
}

}  // namespace

void syncthreads(const char* file, int line) {
    if (modelling && thread_index.x == 0) {
        ++model_counts.barriers;
    }
    pool().barrier().arrive_and_wait(Site{file, line});
}

namespace {

// Marks the sectors of a load as in the thread's L1 and says whether one
// was not yet.
bool touch(ThreadLog& log, std::uintptr_t at, unsigned bytes) {
    bool miss = false;
    for (std::uintptr_t sector = at / SECTOR_BYTES; sector <= (at + bytes - 1) / SECTOR_BYTES; ++sector) {
        if (std::find(log.sectors.begin(), log.sectors.end(), sector) == log.sectors.end()) {
            log.sectors.push_back(sector);
            miss = true;
        }
    }
    return miss;
}

}  // namespace

void model_access(const void* address, unsigned bytes, bool store) {
    ThreadLog& log = thread_logs[thread_index.x];
    Frame& frame = log.frame();
    const std::uintptr_t at = reinterpret_cast<std::uintptr_t>(address);
    const bool miss = !store && touch(log, at, bytes);
    log.accesses.push_back(Access{frame.key, store ? frame.stores++ : frame.loads++,
                                  store ? Kind::store : Kind::load, at, bytes, frame.region, miss});
}

// A prefetch into L1: it brings the sector in for the thread's later loads.
void model_prefetch(const void* address) {
    ThreadLog& log = thread_logs[thread_index.x];
    Frame& frame = log.frame();
    const std::uintptr_t at = reinterpret_cast<std::uintptr_t>(address) / SECTOR_BYTES * SECTOR_BYTES;
    touch(log, at, SECTOR_BYTES);
    log.accesses.push_back(Access{frame.key, frame.prefetches++, Kind::prefetch, at, SECTOR_BYTES, frame.region, false});
}

void model_shared(const void* address, unsigned bytes) {
    ThreadLog& log = thread_logs[thread_index.x];
    Frame& frame = log.frame();
    log.shared.push_back(
        Access{frame.key, frame.shared++, Kind::load, reinterpret_cast<std::uintptr_t>(address), bytes, frame.region, false});
}

void model_decode() {
    ++thread_logs[thread_index.x].decodes;
}

void model_round(bool active) {
    ThreadLog& log = thread_logs[thread_index.x];
    ++log.rounds;
    log.active_rounds += active ? 1u : 0u;
}

// A region execution's key: its region, and how often the region has run
// in the open region around it, whose key it extends.
void model_enter(int line, unsigned variant) {
    if (line < 0 || line >= static_cast<int>(MODEL_LINES) || variant >= MODEL_VARIANTS) {
        std::fprintf(stderr,
                     "kernels/decode.cu on the CPU: a region at line %d, variant %u, past the model's %u lines and %u "
                     "variants\n",
                     line, variant, MODEL_LINES, MODEL_VARIANTS);
        std::abort();
    }
    const unsigned region = variant * MODEL_LINES + static_cast<unsigned>(line);
    ThreadLog& log = thread_logs[thread_index.x];
    Frame& outer = log.frame();
    unsigned run = 0;
    auto found = std::find_if(outer.runs.begin(), outer.runs.end(),
                              [&](const auto& entry) { return entry.first == region; });
    if (found == outer.runs.end()) {
        outer.runs.emplace_back(region, 1u);
    } else {
        run = found->second++;
    }
    const std::uint64_t key = mix(outer.key ^ mix((static_cast<std::uint64_t>(region) << 32) | run));
    log.regions.push_back(RegionExecution{region, key});
    log.frames.push_back(Frame{key, region});
}

void model_leave() {
    thread_logs[thread_index.x].frames.pop_back();
}

}  // namespace cuda_on_cpu

// Decodes the work list's `blocks` blocks as a launch of the CUDA decoder
// with those arguments would, modelled when `counts` is not null (it and
// `regions` then receive what the model counted). Returns 0, or 1 with
// what failed in `message`.
extern "C" int ecf_decode_on_cpu(const Dispatch* dispatches, const u32* work, u32* status, u32 blocks,
                                 double timeout_seconds, char* message, std::size_t message_len,
                                 ModelCounts* counts, RegionCounts* regions) {
    return cuda_on_cpu::launch(
        blocks, [=] { decode(dispatches, work, status); }, timeout_seconds, message, message_len, counts, regions);
}

// A kernel with a barrier in divergent code, to show that the harness
// fails such a launch instead of hanging.
extern "C" int ecf_divergent_barrier_on_cpu(double timeout_seconds, char* message, std::size_t message_len) {
    return cuda_on_cpu::launch(
        1,
        [] {
            if (threadIdx.x < 128u) {
                __syncthreads();
            }
        },
        timeout_seconds, message, message_len);
}

// A kernel whose threads never meet again, to show that the harness ends
// such a launch instead of hanging.
extern "C" int ecf_endless_loop_on_cpu(double timeout_seconds, char* message, std::size_t message_len) {
    return cuda_on_cpu::launch(
        1,
        [] {
            volatile bool forever = true;
            while (forever) {
            }
        },
        timeout_seconds, message, message_len);
}
