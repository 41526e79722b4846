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
// A modelled launch also records every thread's global loads and stores,
// in order, and after each block counts, per warp of 32 consecutive
// threads and per k-th access of each thread (the threads of a warp issue
// their k-th access together in uniform code; a thread that leaves one out
// records a skip), the distinct 32-byte sectors touched: what a GPU's
// memory system moves. Against it stands the ideal of each such warp
// access, its distinct bytes in whole sectors, as a profiler counts
// sectors per request; and the distinct bytes of the block, each once,
// against the bytes its warps' accesses needed, which shows re-reads.

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
#include <mutex>
#include <string>
#include <thread>
#include <vector>

// What a modelled launch did, summed over its blocks; tests/common/
// kernel_on_cpu.rs declares the same struct.
struct ModelCounts {
    // Distinct sectors per warp and k-th access, summed.
    unsigned long long load_sectors;
    unsigned long long store_sectors;
    // Distinct bytes loaded and stored by each block, summed.
    unsigned long long load_bytes;
    unsigned long long store_bytes;
    // Per warp and k-th access, its distinct bytes, and those in whole
    // sectors, summed.
    unsigned long long load_access_bytes;
    unsigned long long store_access_bytes;
    unsigned long long load_ideal_sectors;
    unsigned long long store_ideal_sectors;
    unsigned long long decodes;
    // Rounds times threads, and those of them with a chunk to decode.
    unsigned long long thread_rounds;
    unsigned long long active_thread_rounds;
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

// One global access: its address and size.
struct Access {
    std::uintptr_t address;
    unsigned bytes;
};

// What one thread did in the block being run.
struct ThreadLog {
    std::vector<Access> loads;
    std::vector<Access> stores;
    unsigned long long decodes = 0;
    unsigned long long rounds = 0;
    unsigned long long active_rounds = 0;

    // Empties the log, keeping its vectors' room for the next block.
    void clear() {
        loads.clear();
        stores.clear();
        decodes = rounds = active_rounds = 0;
    }
};

ThreadLog thread_logs[WORKGROUP_SIZE];
ModelCounts model_counts;

constexpr std::uintptr_t SECTOR_BYTES = 32;
constexpr unsigned WARP_SIZE = 32;

// What the warps' accesses touched, summed over warps and k.
struct WarpAccesses {
    // Distinct sectors of the k-th access of each thread of a warp.
    unsigned long long sectors = 0;
    // Distinct bytes of that access, and the sectors they would fill.
    unsigned long long bytes = 0;
    unsigned long long ideal_sectors = 0;
};

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

WarpAccesses warp_accesses(std::vector<Access> ThreadLog::* accesses) {
    WarpAccesses total;
    std::vector<std::uintptr_t> sectors;
    std::vector<std::pair<std::uintptr_t, std::uintptr_t>> ranges;
    for (unsigned warp = 0; warp < WORKGROUP_SIZE; warp += WARP_SIZE) {
        std::size_t longest = 0;
        for (unsigned lane = 0; lane < WARP_SIZE; ++lane) {
            longest = std::max(longest, (thread_logs[warp + lane].*accesses).size());
        }
        for (std::size_t k = 0; k < longest; ++k) {
            sectors.clear();
            ranges.clear();
            for (unsigned lane = 0; lane < WARP_SIZE; ++lane) {
                const std::vector<Access>& log = thread_logs[warp + lane].*accesses;
                if (k < log.size() && log[k].bytes != 0) {
                    const Access access = log[k];
                    ranges.emplace_back(access.address, access.address + access.bytes);
                    for (std::uintptr_t sector = access.address / SECTOR_BYTES;
                         sector <= (access.address + access.bytes - 1) / SECTOR_BYTES; ++sector) {
                        sectors.push_back(sector);
                    }
                }
            }
            std::sort(sectors.begin(), sectors.end());
            total.sectors += std::unique(sectors.begin(), sectors.end()) - sectors.begin();
            const unsigned long long bytes = union_bytes(ranges);
            total.bytes += bytes;
            total.ideal_sectors += (bytes + SECTOR_BYTES - 1) / SECTOR_BYTES;
        }
    }
    return total;
}

// Bytes in the union of all threads' accesses.
unsigned long long distinct_bytes(std::vector<Access> ThreadLog::* accesses) {
    std::vector<std::pair<std::uintptr_t, std::uintptr_t>> ranges;
    for (const ThreadLog& log : thread_logs) {
        for (const Access& access : log.*accesses) {
            if (access.bytes != 0) {
                ranges.emplace_back(access.address, access.address + access.bytes);
            }
        }
    }
    return union_bytes(ranges);
}

// Adds the block just run to the model's counts and clears the logs.
void account_block() {
    const WarpAccesses loads = warp_accesses(&ThreadLog::loads);
    const WarpAccesses stores = warp_accesses(&ThreadLog::stores);
    model_counts.load_sectors += loads.sectors;
    model_counts.store_sectors += stores.sectors;
    model_counts.load_access_bytes += loads.bytes;
    model_counts.store_access_bytes += stores.bytes;
    model_counts.load_ideal_sectors += loads.ideal_sectors;
    model_counts.store_ideal_sectors += stores.ideal_sectors;
    model_counts.load_bytes += distinct_bytes(&ThreadLog::loads);
    model_counts.store_bytes += distinct_bytes(&ThreadLog::stores);
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
           std::size_t message_len, ModelCounts* model = nullptr) {
    std::lock_guard lock(launches);
    modelling = model != nullptr;
    model_counts = ModelCounts{};
    for (ThreadLog& log : thread_logs) {
        log.clear();
    }
    const std::string failure = pool().run(
        blocks, std::move(kernel),
        std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout_seconds)));
    modelling = false;
    if (model != nullptr) {
        *model = model_counts;
    }
    if (failure.empty()) {
        return 0;
    }
    std::snprintf(message, message_len, "%s", failure.c_str());
    return 1;
}

}  // namespace

void syncthreads(const char* file, int line) {
    pool().barrier().arrive_and_wait(Site{file, line});
}

void model_access(const void* address, unsigned bytes, bool store) {
    ThreadLog& log = thread_logs[thread_index.x];
    (store ? log.stores : log.loads).push_back(Access{reinterpret_cast<std::uintptr_t>(address), bytes});
}

void model_skip(bool store) {
    ThreadLog& log = thread_logs[thread_index.x];
    (store ? log.stores : log.loads).push_back(Access{0, 0});
}

void model_decode() {
    ++thread_logs[thread_index.x].decodes;
}

void model_round(bool active) {
    ThreadLog& log = thread_logs[thread_index.x];
    ++log.rounds;
    log.active_rounds += active ? 1u : 0u;
}

}  // namespace cuda_on_cpu

// Decodes the work list's `blocks` blocks as a launch of the CUDA decoder
// with those arguments would, modelled when `counts` is not null (it then
// receives what the memory-access model counted). Returns 0, or 1 with what
// failed in `message`.
extern "C" int ecf_decode_on_cpu(const Dispatch* dispatches, const u32* work, u32* status, u32 blocks,
                                 double timeout_seconds, char* message, std::size_t message_len,
                                 ModelCounts* counts) {
    return cuda_on_cpu::launch(
        blocks, [=] { decode(dispatches, work, status); }, timeout_seconds, message, message_len, counts);
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
