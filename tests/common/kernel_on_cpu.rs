//! `kernels/decode.cu` on the CPU, as a backend: the kernel is compiled as
//! C++20 with g++ (`tests/cuda_on_cpu/`: a header that stands in for CUDA,
//! and a harness that runs each thread block on 256 host threads) into a
//! library loaded here. The GPU core drives it through [`GpuDevice`]
//! exactly as it drives wgpu and CUDA, so the host-side planning is under
//! test too. `kernel_layout.h`, written here from
//! `src/backend/gpu/layout.rs`, makes the kernel's compilation fail where
//! its constants or structs differ from the host's.

use std::ffi::{CStr, c_char};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};

use ecfloat::backend::gpu::layout::{self, DispatchLimits, DispatchParams, DispatchRecord};
use ecfloat::backend::gpu::plan::LaunchPlan;
use ecfloat::backend::gpu::{DeviceMemory, Finished, GpuBackend, GpuDevice};
use ecfloat::backend::{Backend, BackendInfo, Clock, Timings};
use ecfloat::{Error, Result};

use super::harness::Skip;

const NAME: &str = "cuda-on-cpu";
/// Set to `thread` in the child process of `under_thread_sanitizer`.
pub const SANITIZER: &str = "ECF_KERNEL_SANITIZER";

/// Host memory standing in for device memory: the kernel reads and writes
/// it through the addresses in its records.
struct HostMemory {
    words: *mut u32,
    len: usize,
}

// Safety: the memory is owned, and only the harness (while a launch runs,
// with the caller waiting) and its owner touch it.
unsafe impl Send for HostMemory {}
unsafe impl Sync for HostMemory {}

/// Device allocations start on 256 bytes (as `cuMemAlloc`'s do), so that
/// the memory-access model sees the same sector alignment every run.
const DEVICE_ALIGNMENT: usize = 256;

impl HostMemory {
    fn layout(len: usize) -> std::alloc::Layout {
        std::alloc::Layout::from_size_align(len.max(1) * 4, DEVICE_ALIGNMENT)
            .expect("a buffer's size fits the address space")
    }

    fn zeroed(bytes: usize) -> Self {
        let len = bytes.div_ceil(4);
        // Safety: the layout's size is not zero.
        let words = unsafe { std::alloc::alloc_zeroed(Self::layout(len)) };
        if words.is_null() {
            std::alloc::handle_alloc_error(Self::layout(len));
        }
        HostMemory {
            words: words.cast(),
            len,
        }
    }

    fn address(&self) -> u64 {
        self.words as u64
    }

    fn bytes(&mut self) -> &mut [u8] {
        // Safety: `len` words live at `words`; `&mut self` excludes others.
        unsafe { std::slice::from_raw_parts_mut(self.words.cast(), self.len * 4) }
    }

    /// # Safety
    /// No launch may be writing the memory.
    unsafe fn view(&self) -> &[u8] {
        // Safety: `len` words live at `words`.
        unsafe { std::slice::from_raw_parts(self.words.cast(), self.len * 4) }
    }

    /// # Safety
    /// No launch may be using the memory.
    #[allow(clippy::mut_from_ref)]
    unsafe fn view_mut(&self) -> &mut [u8] {
        // Safety: `len` words live at `words`.
        unsafe { std::slice::from_raw_parts_mut(self.words.cast(), self.len * 4) }
    }
}

impl Drop for HostMemory {
    fn drop(&mut self) {
        // Safety: allocated in `zeroed` with this layout.
        unsafe { std::alloc::dealloc(self.words.cast(), Self::layout(self.len)) };
    }
}

impl DeviceMemory for HostMemory {
    fn size(&self) -> u64 {
        self.len as u64 * 4
    }
}

type DecodeOnCpu = unsafe extern "C" fn(
    *const DispatchRecord,
    *const u32,
    *mut u32,
    u32,
    f64,
    *mut c_char,
    usize,
    *mut ModelCounts,
    *mut u64,
) -> i32;
type MisbehavingKernel = unsafe extern "C" fn(f64, *mut c_char, usize) -> i32;

/// Source lines of `kernels/decode.cu`, and variants of a region (the
/// instantiations of a function template), the model keeps counts for; a
/// region's counts are at `variant * MODEL_LINES + line`.
pub const MODEL_LINES: usize = 4096;
pub const MODEL_VARIANTS: usize = 8;
pub const MODEL_REGIONS: usize = MODEL_LINES * MODEL_VARIANTS;

/// What the model of `harness.cpp` counted over a launch (its
/// `ModelCounts`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ModelCounts {
    /// Distinct 32-byte sectors touched by each warp request (the k-th
    /// global load, or store, of the threads of a warp in one region
    /// execution), summed over requests and blocks.
    pub load_sectors: u64,
    pub store_sectors: u64,
    /// Distinct bytes each block loaded (stored), summed over blocks.
    pub load_bytes: u64,
    pub store_bytes: u64,
    /// Per warp request, its distinct bytes, and the whole sectors they
    /// fill, summed.
    pub load_access_bytes: u64,
    pub store_access_bytes: u64,
    pub load_ideal_sectors: u64,
    pub store_ideal_sectors: u64,
    /// Codeword lookups, warm-up and both passes included.
    pub decodes: u64,
    /// Rounds times threads, and those with a chunk to decode.
    pub thread_rounds: u64,
    pub active_thread_rounds: u64,
    /// Warp requests, the distinct 128-byte lines they touch, and the L1
    /// wavefronts they take (four lines, or four sectors, a wavefront).
    pub load_requests: u64,
    pub store_requests: u64,
    pub load_lines: u64,
    pub store_lines: u64,
    pub load_wavefronts: u64,
    pub store_wavefronts: u64,
    /// Prefetches into L1 (their lines and wavefronts count as loads').
    pub prefetch_requests: u64,
    /// Distinct sectors each block loaded (stored), summed over blocks.
    pub load_block_sectors: u64,
    pub store_block_sectors: u64,
    /// Shared-memory warp requests, and the wavefronts they take.
    pub shared_requests: u64,
    pub shared_wavefronts: u64,
    /// Region executions in which a warp waited on a global load, summed
    /// over warps.
    pub round_trips: u64,
    /// Barriers met per block, summed; blocks run.
    pub barriers: u64,
    pub blocks: u64,
}

/// What the model counted over modelled launches: the totals, and per
/// region its warp issues, its executions by threads, and its warp issues
/// with global loads (with an L1 miss among them, and without), summed
/// over warps.
#[derive(Clone, Debug)]
pub struct KernelModel {
    pub counts: ModelCounts,
    /// The harness's `RegionCounts`: its four arrays of `MODEL_REGIONS`.
    regions: Vec<u64>,
}

impl Default for KernelModel {
    fn default() -> Self {
        KernelModel {
            counts: ModelCounts::default(),
            regions: vec![0; 4 * MODEL_REGIONS],
        }
    }
}

impl KernelModel {
    fn add(&mut self, other: &KernelModel) {
        let (a, b) = (&mut self.counts, &other.counts);
        for (a, b) in [
            (&mut a.load_sectors, b.load_sectors),
            (&mut a.store_sectors, b.store_sectors),
            (&mut a.load_bytes, b.load_bytes),
            (&mut a.store_bytes, b.store_bytes),
            (&mut a.load_access_bytes, b.load_access_bytes),
            (&mut a.store_access_bytes, b.store_access_bytes),
            (&mut a.load_ideal_sectors, b.load_ideal_sectors),
            (&mut a.store_ideal_sectors, b.store_ideal_sectors),
            (&mut a.decodes, b.decodes),
            (&mut a.thread_rounds, b.thread_rounds),
            (&mut a.active_thread_rounds, b.active_thread_rounds),
            (&mut a.load_requests, b.load_requests),
            (&mut a.store_requests, b.store_requests),
            (&mut a.load_lines, b.load_lines),
            (&mut a.store_lines, b.store_lines),
            (&mut a.load_wavefronts, b.load_wavefronts),
            (&mut a.store_wavefronts, b.store_wavefronts),
            (&mut a.prefetch_requests, b.prefetch_requests),
            (&mut a.load_block_sectors, b.load_block_sectors),
            (&mut a.store_block_sectors, b.store_block_sectors),
            (&mut a.shared_requests, b.shared_requests),
            (&mut a.shared_wavefronts, b.shared_wavefronts),
            (&mut a.round_trips, b.round_trips),
            (&mut a.barriers, b.barriers),
            (&mut a.blocks, b.blocks),
        ] {
            *a += b;
        }
        for (a, b) in self.regions.iter_mut().zip(&other.regions) {
            *a += b;
        }
    }

    /// Warp issues of the region at `line` in `variant`.
    pub fn warp_executions(&self, line: u32, variant: u32) -> u64 {
        self.regions[Self::region(line, variant)]
    }

    /// Executions by threads of the region at `line` in `variant`.
    pub fn thread_executions(&self, line: u32, variant: u32) -> u64 {
        self.regions[MODEL_REGIONS + Self::region(line, variant)]
    }

    /// Warp issues of the region that loaded from global memory with an L1
    /// miss among the loads, and without one.
    pub fn load_executions(&self, line: u32, variant: u32) -> (u64, u64) {
        let region = Self::region(line, variant);
        (
            self.regions[2 * MODEL_REGIONS + region],
            self.regions[3 * MODEL_REGIONS + region],
        )
    }

    fn region(line: u32, variant: u32) -> usize {
        assert!(
            (line as usize) < MODEL_LINES && (variant as usize) < MODEL_VARIANTS,
            "region at line {line}, variant {variant}: past the model's counts"
        );
        variant as usize * MODEL_LINES + line as usize
    }

    /// Sectors the warps' requests touched per sector their bytes fill:
    /// what a profiler reports as sectors per request against the ideal.
    pub fn load_sectors_per_ideal(&self) -> f64 {
        self.counts.load_sectors as f64 / self.counts.load_ideal_sectors.max(1) as f64
    }

    pub fn store_sectors_per_ideal(&self) -> f64 {
        self.counts.store_sectors as f64 / self.counts.store_ideal_sectors.max(1) as f64
    }

    /// Bytes the warps' loads needed per distinct byte the block read:
    /// 1 when every byte is loaded once, 2 when each is read twice.
    pub fn load_reads_per_byte(&self) -> f64 {
        self.counts.load_access_bytes as f64 / self.counts.load_bytes.max(1) as f64
    }

    /// The share of thread rounds with a chunk to decode.
    pub fn active_threads(&self) -> f64 {
        self.counts.active_thread_rounds as f64 / self.counts.thread_rounds.max(1) as f64
    }
}

/// The kernel compiled for the CPU, loaded.
pub struct Harness {
    library: libloading::Library,
}

impl Harness {
    /// Runs the launch; modelled when `model` is given, which then
    /// receives its counts.
    fn decode(
        &self,
        records: *const DispatchRecord,
        work: &[u32],
        status: &mut [u32],
        blocks: u32,
        model: Option<&mut KernelModel>,
    ) -> Result<()> {
        // Safety: the symbol has this signature (harness.cpp).
        let decode: libloading::Symbol<DecodeOnCpu> =
            unsafe { self.library.get(b"ecf_decode_on_cpu") }.expect("the harness exports it");
        let mut message = [0 as c_char; 1024];
        let (counts, regions) =
            model.map_or((std::ptr::null_mut(), std::ptr::null_mut()), |model| {
                (
                    &mut model.counts as *mut ModelCounts,
                    model.regions.as_mut_ptr(),
                )
            });
        // Safety: the records point at live buffers that the GPU core
        // sized and validated, as for a GPU; the others are valid slices,
        // and `counts` and `regions` are null or a valid ModelCounts and
        // RegionCounts (4 * MODEL_REGIONS words).
        let failed = unsafe {
            decode(
                records,
                work.as_ptr(),
                status.as_mut_ptr(),
                blocks,
                kernel_timeout(),
                message.as_mut_ptr(),
                message.len(),
                counts,
                regions,
            )
        };
        launch_result(failed, &message)
    }

    /// Launches a kernel whose threads loop forever: the harness ends the
    /// process.
    pub fn endless_loop(&self, timeout: f64) -> Result<()> {
        self.misbehaving_kernel(b"ecf_endless_loop_on_cpu", timeout)
    }

    /// Launches a kernel with a barrier in divergent code: the launch fails.
    pub fn divergent_barrier(&self, timeout: f64) -> Result<()> {
        self.misbehaving_kernel(b"ecf_divergent_barrier_on_cpu", timeout)
    }

    fn misbehaving_kernel(&self, symbol: &[u8], timeout: f64) -> Result<()> {
        // Safety: the harness's test kernels have this signature.
        let launch: libloading::Symbol<MisbehavingKernel> =
            unsafe { self.library.get(symbol) }.expect("the harness exports it");
        let mut message = [0 as c_char; 1024];
        // Safety: the message buffer is valid for its length.
        let failed = unsafe { launch(timeout, message.as_mut_ptr(), message.len()) };
        launch_result(failed, &message)
    }
}

/// A launch that failed is a kernel that would hang or misbehave on a GPU:
/// as good as a lost device.
fn launch_result(failed: i32, message: &[c_char]) -> Result<()> {
    if failed == 0 {
        return Ok(());
    }
    // Safety: the harness wrote a NUL-terminated message.
    let message = unsafe { CStr::from_ptr(message.as_ptr()) };
    Err(Error::DeviceLost {
        backend: NAME.to_string(),
        message: message.to_string_lossy().into_owned(),
    })
}

/// Seconds a barrier may wait for the other threads of a block.
fn kernel_timeout() -> f64 {
    std::env::var("ECF_KERNEL_TIMEOUT_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(120.0)
}

/// The kernel's constants and structs, as `src/backend/gpu/layout.rs` has
/// them, as static assertions on the kernel's declarations.
fn layout_header() -> String {
    let mut header = String::from(
        "// Written by tests/cuda_on_cpu.rs from src/backend/gpu/layout.rs.\n#pragma once\n#include <cstddef>\n",
    );
    let mut check = |condition: String, what: &str| {
        header.push_str(&format!(
            "static_assert({condition}, \"kernels/decode.cu: {what} differs from src/backend/gpu/layout.rs\");\n"
        ));
    };
    for (name, value) in layout::KERNEL_CONSTANTS {
        check(format!("{name} == {value}u"), name);
    }
    for (kernel, fields, size) in layout::KERNEL_STRUCTS {
        check(format!("sizeof({kernel}) == {size}"), kernel);
        for (index, field) in fields.iter().enumerate() {
            check(
                format!("offsetof({kernel}, {field}) == {}", 4 * index),
                &format!("{kernel}::{field}"),
            );
        }
    }
    check(
        format!("sizeof(Dispatch) == {}", size_of::<DispatchRecord>()),
        "Dispatch",
    );
    check(
        "offsetof(Dispatch, params) == 0".to_string(),
        "Dispatch::params",
    );
    for (index, field) in DispatchRecord::POINTERS.iter().enumerate() {
        let offset = size_of::<DispatchParams>() + 8 * index;
        check(
            format!("offsetof(Dispatch, {field}) == {offset}"),
            &format!("Dispatch::{field}"),
        );
    }
    header
}

/// Compiles the harness (cached by the hash of everything that goes into
/// it) and loads it; the reason it cannot, where g++ is missing.
pub fn harness() -> std::result::Result<&'static Harness, String> {
    static HARNESS: OnceLock<std::result::Result<Harness, String>> = OnceLock::new();
    HARNESS
        .get_or_init(|| {
            let sanitizer = std::env::var(SANITIZER).ok();
            build_harness(sanitizer.as_deref()).map(|library| Harness { library })
        })
        .as_ref()
        .map_err(Clone::clone)
}

fn build_harness(sanitizer: Option<&str>) -> std::result::Result<libloading::Library, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let sources = root.join("tests/cuda_on_cpu");
    let compiler = std::env::var("CXX").unwrap_or_else(|_| "g++".to_string());
    let mut flags = vec![
        "-std=c++20",
        "-shared",
        "-fPIC",
        "-pthread",
        "-g",
        // decode.cu reads bytes through a u16 pointer, as CUDA allows.
        "-fno-strict-aliasing",
        "-Wall",
        "-Wno-unused-function",
        // `#pragma unroll` is NVRTC's.
        "-Wno-unknown-pragmas",
    ];
    match sanitizer {
        Some("thread") => flags.extend(["-O1", "-fsanitize=thread"]),
        Some(other) => return Err(format!("{SANITIZER}={other}: only `thread` is supported")),
        None => flags.push("-O2"),
    }
    let header = layout_header();
    let mut inputs = header.clone() + &flags.join(" ") + &compiler;
    for file in [
        "tests/cuda_on_cpu/cuda_host.h",
        "tests/cuda_on_cpu/harness.cpp",
        "kernels/decode.cu",
    ] {
        inputs += &std::fs::read_to_string(root.join(file)).map_err(|e| format!("{file}: {e}"))?;
    }
    let directory = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("cuda_on_cpu")
        .join(format!("{:016x}", fnv1a(inputs.as_bytes())));
    let library = directory.join("libdecode_on_cpu.so");
    if !library.exists() {
        std::fs::create_dir_all(&directory).map_err(|e| e.to_string())?;
        std::fs::write(directory.join("kernel_layout.h"), &header).map_err(|e| e.to_string())?;
        let building = directory.join(format!("building-{}.so", std::process::id()));
        let output = Command::new(&compiler)
            .args(&flags)
            .arg("-I")
            .arg(&directory)
            .arg(sources.join("harness.cpp"))
            .arg("-o")
            .arg(&building)
            .output()
            .map_err(|e| {
                format!("cannot run {compiler} ({e}); the kernel's CPU tests need a C++20 compiler")
            })?;
        if !output.status.success() {
            panic!(
                "kernels/decode.cu does not compile for the CPU:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::fs::rename(&building, &library).map_err(|e| e.to_string())?;
    }
    // Safety: the library is ours; loading it runs no initialisers that
    // touch the process beyond the C++ runtime's.
    unsafe { libloading::Library::new(&library) }.map_err(|e| format!("{}: {e}", library.display()))
}

/// A stable 64-bit hash of the harness's inputs, naming its build.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ byte as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The CUDA kernel on the CPU, behind the GPU core.
struct KernelOnCpu {
    harness: &'static Harness,
    limits: DispatchLimits,
    /// Where modelled launches add their counts; `None` runs unmodelled.
    model: Option<ModelTotals>,
}

struct KernelLaunch {
    /// In device-aligned memory, as on a GPU: the model counts the sectors
    /// a record spans.
    records: HostMemory,
    work: Vec<u32>,
    status: Mutex<Vec<u32>>,
    blocks: u32,
}

impl GpuDevice for KernelOnCpu {
    type Buffer = HostMemory;
    type Launch = KernelLaunch;
    type Submission = ();

    fn name(&self) -> &'static str {
        NAME
    }

    fn info(&self) -> BackendInfo {
        BackendInfo {
            backend: NAME,
            device: "kernels/decode.cu on 256 host threads".to_string(),
            driver: "g++".to_string(),
            hardware_gpu: false,
            limits: Default::default(),
        }
    }

    fn limits(&self) -> DispatchLimits {
        self.limits
    }

    fn upload(&self, _what: &str, bytes: &[u8]) -> Result<HostMemory> {
        let mut memory = HostMemory::zeroed(bytes.len());
        memory.bytes()[..bytes.len()].copy_from_slice(bytes);
        Ok(memory)
    }

    fn alloc(&self, bytes: u64) -> Result<HostMemory> {
        Ok(HostMemory::zeroed(bytes as usize))
    }

    fn prepare(
        &self,
        plan: &LaunchPlan<'_, HostMemory>,
        out: &HostMemory,
        _timed: bool,
    ) -> Result<KernelLaunch> {
        let records = plan.records(HostMemory::address, out.address());
        Ok(KernelLaunch {
            records: self.upload("dispatch records", bytemuck::cast_slice(&records))?,
            work: plan.work_list(),
            status: Mutex::new(vec![0; plan.blocks as usize]),
            blocks: plan.blocks,
        })
    }

    fn submit(
        &self,
        plan: &LaunchPlan<'_, HostMemory>,
        launch: &KernelLaunch,
        out: &HostMemory,
        _timed: bool,
    ) -> Result<()> {
        // Safety: nothing else touches the buffers during a launch.
        let output = unsafe { out.view_mut() };
        for copy in &plan.copies {
            // Safety: as above.
            let source = unsafe { copy.source.view() };
            let (offset, bytes) = (copy.offset as usize, copy.bytes as usize);
            output[offset..offset + bytes].copy_from_slice(&source[..bytes]);
        }
        if launch.blocks == 0 {
            return Ok(());
        }
        let mut status = launch.status.lock().unwrap();
        let mut counts = KernelModel::default();
        self.harness.decode(
            launch.records.words.cast(),
            &launch.work,
            &mut status,
            launch.blocks,
            self.model.is_some().then_some(&mut counts),
        )?;
        if let Some(model) = &self.model {
            model.lock().unwrap().add(&counts);
        }
        Ok(())
    }

    fn finish(&self, launch: &KernelLaunch, _submission: &()) -> Result<Finished> {
        Ok(Finished {
            status: launch.status.lock().unwrap().clone(),
            seconds: None,
        })
    }

    fn download(&self, buffer: &HostMemory, offset: u64, out: &mut [u8]) -> Result<()> {
        // Safety: no launch is running.
        let bytes = unsafe { buffer.view() };
        out.copy_from_slice(&bytes[offset as usize..offset as usize + out.len()]);
        Ok(())
    }

    fn time_copy(&self, bytes: u64, repeats: usize) -> Result<Timings> {
        let source = vec![1u8; bytes as usize];
        let mut target = vec![0u8; bytes as usize];
        let seconds = (0..repeats)
            .map(|_| {
                let started = std::time::Instant::now();
                target.copy_from_slice(&source);
                started.elapsed().as_secs_f64()
            })
            .collect();
        Ok(Timings {
            seconds,
            clock: Clock::Wall,
        })
    }

    fn clock(&self) -> Clock {
        Clock::Wall
    }
}

/// The kernel on the CPU with `limits`, or why it cannot be built here.
pub fn kernel_on_cpu(limits: DispatchLimits) -> Result<Box<dyn Backend>, Skip> {
    Ok(Box::new(GpuBackend::from_device(KernelOnCpu {
        harness: require_harness()?,
        limits,
        model: None,
    })))
}

/// Where a modelled backend adds up the counts of its launches.
pub type ModelTotals = Arc<Mutex<KernelModel>>;

/// The kernel on the CPU with the CUDA backend's limits, every launch
/// modelled: the counts of all its launches add up in the totals returned.
pub fn modelled_kernel_on_cpu() -> Result<(Box<dyn Backend>, ModelTotals), Skip> {
    let model = Arc::new(Mutex::new(KernelModel::default()));
    let backend = GpuBackend::from_device(KernelOnCpu {
        harness: require_harness()?,
        limits: DispatchLimits::UNBOUNDED,
        model: Some(model.clone()),
    });
    Ok((Box::new(backend), model))
}

/// The harness, or why it cannot be built here (a failure where
/// `ECF_REQUIRE_CXX=1`).
pub fn require_harness() -> Result<&'static Harness, Skip> {
    harness().map_err(|reason| super::harness::absent("cxx", reason))
}
