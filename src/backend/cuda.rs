//! The CUDA backend: decodes on NVIDIA GPUs with `kernels/decode.cu`,
//! compiled at run time by NVRTC for the device's own architecture (or, on
//! a GPU newer than the NVRTC, to PTX for the newest architecture it knows,
//! which the driver compiles on loading).
//!
//! cudarc loads libcuda and libnvrtc at run time, so this builds without a
//! CUDA toolkit; both libraries are looked for before anything calls them
//! (cudarc panics on a missing library), so a machine without them gets a
//! clear error instead.
//!
//! Decodes run on the backend's own stream — a new one, or one a framework
//! hands over ([`CudaBackend::on_stream`]) — so that a decode and work on
//! another stream can overlap. One launch decodes every segment of every
//! job: each thread block reads its (record, block) pair from the work
//! list the GPU core planned. Every tensor and output buffer a launch
//! reads or writes is taken through cudarc's device-pointer guards, held
//! until the launch is queued: where cudarc tracks events (a context with
//! streams of its own, as the backend's is), that orders later work on
//! other streams after the decode. A client on a stream cudarc does not
//! track waits on the decode's event ([`CudaBackend::decode_event`]).
//!
//! What a launch needs besides those — its records and work list, staged
//! in page-locked memory and copied on the stream, and its status words —
//! comes from a pool of buffer sets on the backend, one set per launch in
//! flight, reused once the event recorded after its last use has passed.
//! The host waits on events made with `CU_EVENT_BLOCKING_SYNC`, sleeping
//! rather than spinning while the GPU decodes.

use std::collections::HashMap;
use std::ffi::CStr;
use std::mem::ManuallyDrop;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DevicePtrMut,
    DriverError, LaunchConfig, PinnedHostSlice, PushKernelArg, result, sys,
};
use cudarc::nvrtc;

use crate::error::{Error, Result};

use super::gpu::layout::{self, DispatchLimits};
use super::gpu::plan::LaunchPlan;
use super::gpu::{DeviceMemory, Finished, GpuBackend, GpuDevice, GpuPending};
use super::{BackendInfo, Clock, DeviceBuffer, PendingDecode, Timings, unavailable};

const NAME: &str = "cuda";
/// The decoder kernel, compiled at run time.
pub const KERNEL_SOURCE: &str = include_str!("../../kernels/decode.cu");

/// Whether libcuda can be loaded. Calling into cudarc without it panics.
pub fn driver_present() -> bool {
    #[cfg(not(feature = "candle-cuda"))]
    // Safety: only tries to open the library and drops it.
    return unsafe { cudarc::driver::sys::is_culib_present() };
    // candle's CUDA build links libcuda: a process that runs has it.
    #[cfg(feature = "candle-cuda")]
    true
}

/// Whether libnvrtc can be loaded.
pub fn nvrtc_present() -> bool {
    #[cfg(not(feature = "candle-cuda"))]
    // Safety: only tries to open the library and drops it.
    return unsafe { cudarc::nvrtc::sys::is_culib_present() };
    // candle's CUDA build links libnvrtc.
    #[cfg(feature = "candle-cuda")]
    true
}

fn no_nvrtc() -> Error {
    unavailable(
        NAME,
        "NVRTC not found (libnvrtc.so.12): install the CUDA toolkit, or `pip install nvidia-cuda-nvrtc-cu12` and add its lib directory to LD_LIBRARY_PATH",
    )
}

fn compile_error(message: String) -> Error {
    Error::KernelCompile {
        backend: NAME.to_string(),
        message,
    }
}

/// The NVRTC version, as (major, minor).
pub fn nvrtc_version() -> Result<(i32, i32)> {
    if !nvrtc_present() {
        return Err(no_nvrtc());
    }
    let (mut major, mut minor) = (0, 0);
    // Safety: NVRTC is loaded; the pointers are valid for the call.
    unsafe { nvrtc::sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|e| compile_error(format!("nvrtcVersion: {e}")))?;
    Ok((major, minor))
}

/// The architectures this NVRTC compiles for, as `major * 10 + minor`.
pub fn supported_architectures() -> Result<Vec<i32>> {
    if !nvrtc_present() {
        return Err(no_nvrtc());
    }
    let mut count = 0;
    // Safety: NVRTC is loaded; the pointer is valid for the call.
    unsafe { nvrtc::sys::nvrtcGetNumSupportedArchs(&mut count) }
        .result()
        .map_err(|e| compile_error(format!("nvrtcGetNumSupportedArchs: {e}")))?;
    let mut architectures = vec![0; count.max(0) as usize];
    // Safety: the buffer holds the `count` entries NVRTC writes.
    unsafe { nvrtc::sys::nvrtcGetSupportedArchs(architectures.as_mut_ptr()) }
        .result()
        .map_err(|e| compile_error(format!("nvrtcGetSupportedArchs: {e}")))?;
    Ok(architectures)
}

/// What NVRTC should produce for a device of compute capability
/// `architecture` (`major * 10 + minor`): a binary for it when NVRTC knows
/// it, else PTX for the newest architecture below it that NVRTC knows,
/// which the driver compiles for the device when it loads it.
pub fn kernel_target(architecture: i32, supported: &[i32]) -> Result<KernelTarget> {
    if supported.contains(&architecture) {
        return Ok(KernelTarget::Binary(format!("sm_{architecture}")));
    }
    supported
        .iter()
        .copied()
        .filter(|&a| a < architecture)
        .max()
        .map(|a| KernelTarget::Ptx(format!("compute_{a}")))
        .ok_or_else(|| {
            compile_error(format!(
                "this NVRTC compiles for sm_{} and newer only, the device is sm_{architecture}",
                supported.iter().min().copied().unwrap_or_default()
            ))
        })
}

/// The kind and architecture of code NVRTC produces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelTarget {
    /// A binary for `sm_NN`.
    Binary(String),
    /// PTX for `compute_NN`, compiled by the driver on loading.
    Ptx(String),
}

impl KernelTarget {
    pub fn architecture(&self) -> &str {
        match self {
            KernelTarget::Binary(arch) | KernelTarget::Ptx(arch) => arch,
        }
    }
}

/// Compiled kernel code, and what the compiler said.
pub struct CompiledKernel {
    /// A CUBIN, or PTX text.
    pub image: Vec<u8>,
    pub target: KernelTarget,
    pub log: String,
}

impl CompiledKernel {
    fn module_image(&self) -> nvrtc::Ptx {
        match self.target {
            KernelTarget::Binary(_) => nvrtc::Ptx::from_binary(self.image.clone()),
            KernelTarget::Ptx(_) => {
                nvrtc::Ptx::from_src(String::from_utf8_lossy(&self.image).into_owned())
            }
        }
    }
}

/// Compiles `kernels/decode.cu` to a CUBIN for `arch` (e.g. `sm_90`), with
/// ptxas's register and spill report in the log. Needs NVRTC, not a GPU.
pub fn compile_kernel(arch: &str) -> Result<CompiledKernel> {
    compile(
        KERNEL_SOURCE,
        "decode.cu",
        &KernelTarget::Binary(arch.to_string()),
    )
}

/// Compiles CUDA `source` (named `name` in messages) for `target`.
pub fn compile(source: &str, name: &str, target: &KernelTarget) -> Result<CompiledKernel> {
    if !nvrtc_present() {
        return Err(no_nvrtc());
    }
    let arch = target.architecture();
    let failed = |what: &str, e: nvrtc::result::NvrtcError, log: &str| {
        compile_error(format!("compiling {name} for {arch}: {what}: {e}\n{log}"))
    };
    let source = std::ffi::CString::new(source)
        .map_err(|_| compile_error(format!("{name} holds a NUL byte")))?;
    let program_name = std::ffi::CString::new(name).unwrap_or_default();
    let program = nvrtc::result::create_program(&source, Some(&program_name))
        .map_err(|e| failed("creating the program", e, ""))?;
    let mut options = vec![
        format!("--gpu-architecture={arch}"),
        "--std=c++17".to_string(),
        "-lineinfo".to_string(),
    ];
    if matches!(target, KernelTarget::Binary(_)) {
        options.push("--ptxas-options=-v".to_string());
    }
    // Safety: `program` is live until destroyed below; options are strings.
    let compiled = unsafe { nvrtc::result::compile_program(program, &options) };
    // Safety: as above.
    let raw_log = unsafe { nvrtc::result::get_program_log(program) }.unwrap_or_default();
    let log = if raw_log.is_empty() {
        String::new()
    } else {
        // Safety: NVRTC returns a NUL-terminated log.
        unsafe { CStr::from_ptr(raw_log.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    };
    let image = compiled.and_then(|()| match target {
        KernelTarget::Binary(_) => {
            let mut size = 0usize;
            // Safety: the program compiled; `size` is valid for the call.
            unsafe { nvrtc::sys::nvrtcGetCUBINSize(program, &mut size) }.result()?;
            let mut cubin = vec![0u8; size];
            // Safety: `cubin` holds `size` bytes.
            unsafe { nvrtc::sys::nvrtcGetCUBIN(program, cubin.as_mut_ptr().cast()) }.result()?;
            Ok(cubin)
        }
        KernelTarget::Ptx(_) => {
            // Safety: the program compiled.
            let ptx = unsafe { nvrtc::result::get_ptx(program) }?;
            Ok(ptx
                .iter()
                .take_while(|&&c| c != 0)
                .map(|&c| c as u8)
                .collect())
        }
    });
    // Safety: destroyed once, after its last use.
    let _ = unsafe { nvrtc::result::destroy_program(program) };
    let image = image.map_err(|e| failed("compile error", e, &log))?;
    if image.is_empty() {
        return Err(compile_error(format!("NVRTC produced no code for {arch}")));
    }
    Ok(CompiledKernel {
        image,
        target: target.clone(),
        log,
    })
}

/// Compiles `source` for the GPU of `context` (see [`kernel_target`]) and
/// loads it. `examples/run_blocks.rs` loads its kernel with this too.
pub fn load_module(
    context: &Arc<CudaContext>,
    source: &str,
    name: &str,
) -> Result<Arc<CudaModule>> {
    let kernel = compile(source, name, &target_of(context)?)?;
    context
        .load_module(kernel.module_image())
        .map_err(driver_error(&format!("loading {name}")))
}

fn target_of(context: &Arc<CudaContext>) -> Result<KernelTarget> {
    let (major, minor) = context
        .compute_capability()
        .map_err(driver_error("reading the compute capability"))?;
    kernel_target(major * 10 + minor, &supported_architectures()?)
}

/// The decode kernel compiled per target, shared by every backend.
fn cached_kernel(target: &KernelTarget) -> Result<Arc<CompiledKernel>> {
    static KERNELS: OnceLock<Mutex<HashMap<String, Arc<CompiledKernel>>>> = OnceLock::new();
    let key = format!("{target:?}");
    let kernels = KERNELS.get_or_init(Default::default);
    let mut kernels = kernels.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(kernel) = kernels.get(&key) {
        return Ok(kernel.clone());
    }
    let kernel = Arc::new(compile(KERNEL_SOURCE, "decode.cu", target)?);
    kernels.insert(key, kernel.clone());
    Ok(kernel)
}

/// The ptxas report lines of `log` that show register spills.
pub fn spill_reports(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|line| {
            line.contains("spill") && {
                let numbers: Vec<u64> = line
                    .split(|c: char| !c.is_ascii_digit())
                    .filter_map(|n| n.parse().ok())
                    .collect();
                line.contains("spill stores") && numbers.iter().any(|&n| n > 0)
            }
        })
        .collect()
}

/// Registers per thread and static shared memory per thread block of the
/// kernel, from ptxas's report (`--ptxas-options=-v`).
pub fn resource_usage(log: &str) -> Option<(u32, u32)> {
    let line = log
        .lines()
        .find(|line| line.contains("Used") && line.contains("registers"))?;
    let number_before = |unit: &str| -> Option<u32> {
        let before = &line[..line.find(unit)?];
        before.split_whitespace().last()?.parse().ok()
    };
    Some((
        number_before(" registers")?,
        number_before(" bytes smem").unwrap_or(0),
    ))
}

/// What limits how many thread blocks an SM of a compute capability holds.
struct SmLimits {
    threads: u32,
    blocks: u32,
    registers: u32,
    shared_bytes: u32,
}

/// The SM limits of the datacenter and workstation architectures the
/// kernel is built for (CUDA C Programming Guide, "Technical
/// Specifications per Compute Capability").
fn sm_limits(compute_capability: u32) -> Option<SmLimits> {
    let (threads, blocks, shared_bytes) = match compute_capability {
        80 => (2048, 32, 164 << 10),
        90 | 100 => (2048, 32, 228 << 10),
        120 => (1536, 32, 100 << 10),
        _ => return None,
    };
    Some(SmLimits {
        threads,
        blocks,
        registers: 1 << 16,
        shared_bytes,
    })
}

/// The share of an SM's warps that thread blocks of `threads` threads, each
/// thread using `registers` registers and each block `shared_bytes` of
/// shared memory, keep resident on compute capability `compute_capability`
/// (`90` for sm_90); `None` for an architecture this does not know.
pub fn occupancy(
    compute_capability: u32,
    threads: u32,
    registers: u32,
    shared_bytes: u32,
) -> Option<f64> {
    let limits = sm_limits(compute_capability)?;
    let warps = threads.div_ceil(32);
    // Registers are allocated per warp, in units of 256.
    let registers_per_warp = (registers * 32).next_multiple_of(256);
    let by_registers = limits.registers / (registers_per_warp * warps).max(1);
    // The driver reserves 1 KiB of shared memory per block on these
    // architectures.
    let by_shared = limits.shared_bytes / (shared_bytes + 1024);
    let blocks = (limits.threads / threads)
        .min(limits.blocks)
        .min(by_registers)
        .min(by_shared);
    Some((blocks * warps) as f64 / (limits.threads / 32) as f64)
}

/// A driver error as the crate's error, typed by what it means: memory
/// exhausted, a device no longer usable, a kernel that does not load, or
/// anything else the driver says.
fn driver_error(what: &str) -> impl Fn(DriverError) -> Error + '_ {
    move |e| classify(e.0, format!("{what}: {e}"))
}

fn classify(code: sys::CUresult, message: String) -> Error {
    use sys::CUresult as R;
    let backend = NAME.to_string();
    match code {
        R::CUDA_ERROR_OUT_OF_MEMORY => Error::OutOfDeviceMemory { backend, message },
        R::CUDA_ERROR_ILLEGAL_ADDRESS
        | R::CUDA_ERROR_LAUNCH_FAILED
        | R::CUDA_ERROR_ILLEGAL_INSTRUCTION
        | R::CUDA_ERROR_MISALIGNED_ADDRESS
        | R::CUDA_ERROR_INVALID_ADDRESS_SPACE
        | R::CUDA_ERROR_INVALID_PC
        | R::CUDA_ERROR_HARDWARE_STACK_ERROR
        | R::CUDA_ERROR_LAUNCH_TIMEOUT
        | R::CUDA_ERROR_ECC_UNCORRECTABLE
        | R::CUDA_ERROR_ASSERT
        | R::CUDA_ERROR_CONTEXT_IS_DESTROYED
        | R::CUDA_ERROR_DEVICE_UNAVAILABLE => Error::DeviceLost { backend, message },
        R::CUDA_ERROR_NO_BINARY_FOR_GPU
        | R::CUDA_ERROR_INVALID_PTX
        | R::CUDA_ERROR_UNSUPPORTED_PTX_VERSION
        | R::CUDA_ERROR_INVALID_IMAGE
        | R::CUDA_ERROR_JIT_COMPILER_NOT_FOUND
        | R::CUDA_ERROR_INVALID_SOURCE => Error::KernelCompile { backend, message },
        R::CUDA_ERROR_NO_DEVICE
        | R::CUDA_ERROR_SYSTEM_DRIVER_MISMATCH
        | R::CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE => Error::BackendUnavailable {
            backend,
            reason: message,
        },
        _ => Error::Driver { backend, message },
    }
}

/// Device memory: a cudarc slice, locked while a launch takes its pointer.
pub struct CudaMemory {
    /// Never dropped as it is: [`Drop`] frees an allocation of the
    /// backend's and forgets a borrowed one.
    slice: Mutex<ManuallyDrop<CudaSlice<u8>>>,
    bytes: u64,
    /// Another library's allocation, which only that library may free.
    borrowed: bool,
}

impl DeviceMemory for CudaMemory {
    fn size(&self) -> u64 {
        self.bytes
    }
}

impl CudaMemory {
    fn new(slice: CudaSlice<u8>) -> Self {
        CudaMemory {
            bytes: slice.num_bytes() as u64,
            slice: Mutex::new(ManuallyDrop::new(slice)),
            borrowed: false,
        }
    }

    /// `len` bytes at `address`, allocated by another library, which
    /// keeps them: no path out of this value, unwinding included, frees
    /// them.
    ///
    /// # Safety
    /// `address..address + len` must be device memory of `stream`'s
    /// context, alive while this value is.
    unsafe fn borrowed(stream: &Arc<CudaStream>, address: u64, len: u64) -> Self {
        // Safety: as the caller promised. The slice is wrapped before
        // anything else can run: from here on only `Drop` below takes it,
        // and leaks it.
        let slice =
            ManuallyDrop::new(unsafe { stream.upgrade_device_ptr::<u8>(address, len as usize) });
        CudaMemory {
            bytes: len,
            slice: Mutex::new(slice),
            borrowed: true,
        }
    }

    /// The allocation, for a client that owns it from now on.
    pub fn into_slice(self) -> CudaSlice<u8> {
        // Borrowed memory never leaves `decode_into_borrowed`; an owned
        // slice of it would free another library's memory.
        assert!(!self.borrowed, "borrowed device memory handed out");
        let mut memory = ManuallyDrop::new(self);
        let slice = memory.slice.get_mut().unwrap_or_else(|e| e.into_inner());
        // Safety: the slice is taken once, and `memory`, never dropped,
        // does not use it again; the mutex then goes without it.
        unsafe {
            let slice = ManuallyDrop::take(slice);
            std::ptr::drop_in_place(&mut memory.slice);
            slice
        }
    }

    fn slice(&self) -> MutexGuard<'_, ManuallyDrop<CudaSlice<u8>>> {
        self.slice.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for CudaMemory {
    fn drop(&mut self) {
        let slice = self.slice.get_mut().unwrap_or_else(|e| e.into_inner());
        // Safety: taken once, here; the field is not used again.
        let slice = unsafe { ManuallyDrop::take(slice) };
        if self.borrowed {
            // cudarc's bookkeeping (its events, the stream) goes; the
            // memory stays its owner's.
            slice.leak();
        } else {
            drop(slice);
        }
    }
}

/// Why `len` bytes of device memory at `address` cannot receive a tensor
/// of `bytes` bytes decoded in whole words of `alignment` bytes, if they
/// cannot. The kernel stores whole words: a store off their alignment is
/// a sticky error that ends every later use of the CUDA context, the
/// caller's included, so it is refused here.
fn check_borrowed_output(address: u64, len: u64, bytes: u64, alignment: u64) -> Result<()> {
    let problem = if address == 0 {
        "a null address".to_string()
    } else if !address.is_multiple_of(alignment) {
        format!(
            "the buffer's address {address:#x} is not a multiple of {alignment}: the decoder stores whole {alignment}-byte words"
        )
    } else if !len.is_multiple_of(alignment) {
        format!(
            "the buffer's length, {len} bytes, is not a multiple of {alignment}: the decoder stores whole {alignment}-byte words"
        )
    } else if len < bytes {
        format!(
            "a {len}-byte buffer cannot hold a {bytes}-byte tensor (it needs {} bytes: the tensor in whole {alignment}-byte words)",
            bytes.next_multiple_of(alignment)
        )
    } else if address.checked_add(len).is_none() {
        format!("a {len}-byte buffer at {address:#x} runs past the end of the address space")
    } else {
        return Ok(());
    };
    Err(super::backend_error(
        NAME,
        format!("decoding into borrowed device memory: {problem}"),
    ))
}

/// A CUDA event the host waits on without spinning: made with
/// `CU_EVENT_BLOCKING_SYNC`, which cudarc's `CudaEvent` cannot combine
/// with `CU_EVENT_DISABLE_TIMING` (it takes a single flag). A decode's
/// end is one ([`CudaBackend::decode_event`]).
pub struct Event {
    event: sys::CUevent,
    context: Arc<CudaContext>,
}

// Safety: a CUevent is a handle the driver lets any thread use.
unsafe impl Send for Event {}
// Safety: as above; nothing here mutates through `&self`.
unsafe impl Sync for Event {}

impl Event {
    /// An event of `context`; `timed` when it will time work, which costs
    /// a timestamp on every record.
    fn new(context: &Arc<CudaContext>, timed: bool) -> Result<Self> {
        let mut flags = sys::CUevent_flags::CU_EVENT_BLOCKING_SYNC as u32;
        if !timed {
            flags |= sys::CUevent_flags::CU_EVENT_DISABLE_TIMING as u32;
        }
        let failed = driver_error("creating an event");
        context.bind_to_thread().map_err(&failed)?;
        let mut event = std::ptr::null_mut();
        // Safety: the context is current; the pointer is valid for the call.
        unsafe { sys::cuEventCreate(&mut event, flags) }
            .result()
            .map_err(&failed)?;
        Ok(Event {
            event,
            context: context.clone(),
        })
    }

    /// Records the work queued on `stream` so far.
    fn record(&self, stream: &CudaStream) -> Result<()> {
        let failed = driver_error("recording an event");
        self.context.bind_to_thread().map_err(&failed)?;
        // Safety: the event is live; a stream of another context is an
        // error the driver reports.
        unsafe { result::event::record(self.event, stream.cu_stream()) }.map_err(&failed)
    }

    /// Blocks the calling thread, without spinning, until the recorded
    /// work is done (at once if nothing was recorded).
    fn synchronize(&self) -> std::result::Result<(), DriverError> {
        self.context.bind_to_thread()?;
        // Safety: the event is live.
        unsafe { result::event::synchronize(self.event) }
    }

    /// Seconds from this event to `end`, both timed and recorded.
    fn seconds_until(&self, end: &Event) -> Result<f64> {
        let failed = driver_error("reading an event");
        self.synchronize().map_err(&failed)?;
        end.synchronize().map_err(&failed)?;
        // Safety: both events are live and complete.
        let ms = unsafe { result::event::elapsed(self.event, end.event) }.map_err(&failed)?;
        Ok(f64::from(ms) * 1e-3)
    }

    /// Makes work queued on `stream` after this call wait for the work the
    /// event recorded, without the host waiting.
    pub fn wait_on(&self, stream: &CudaStream) -> Result<()> {
        let failed = driver_error("making a stream wait for an event");
        self.context.bind_to_thread().map_err(&failed)?;
        // Safety: the event is live; the driver checks the stream.
        unsafe {
            result::stream::wait_event(
                stream.cu_stream(),
                self.event,
                sys::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT,
            )
        }
        .map_err(&failed)
    }

    /// The driver's handle, for a client that waits on it through another
    /// API; it stays valid while the event is borrowed.
    pub fn cu_event(&self) -> sys::CUevent {
        self.event
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        let _ = self.context.bind_to_thread();
        // Safety: destroyed once; the driver releases it once its work is
        // done if that is still running.
        let _ = unsafe { result::event::destroy(self.event) };
    }
}

/// Device memory the backend keeps from one launch to the next. It is
/// allocated and freed outside any stream: the backend may be dropped
/// after a stream it borrowed has gone, and freeing must not touch it.
struct PooledMemory {
    address: sys::CUdeviceptr,
    context: Arc<CudaContext>,
}

impl PooledMemory {
    fn new(context: &Arc<CudaContext>, bytes: usize, what: &str) -> Result<Self> {
        let failed = driver_error(what);
        context.bind_to_thread().map_err(&failed)?;
        // Safety: the context is current; every byte is written by a copy
        // or the kernel before anything reads it.
        let address = unsafe { result::malloc_sync(bytes) }.map_err(&failed)?;
        Ok(PooledMemory {
            address,
            context: context.clone(),
        })
    }
}

impl Drop for PooledMemory {
    fn drop(&mut self) {
        let _ = self.context.bind_to_thread();
        // Safety: freed once; its owner waited for the work that used it.
        let _ = unsafe { result::free_sync(self.address) };
    }
}

/// What one launch uses besides its inputs and output: its dispatch
/// records and work list, staged in page-locked memory so that their
/// copy to the device is asynchronous, and its status words, copied back
/// to page-locked memory. A launch takes a set from the device's pool and
/// gives it back when dropped, so that in steady state a decode allocates
/// none of these; each launch in flight holds a set of its own.
struct LaunchBuffers {
    /// Records, then the work list (at `LaunchBuffers::work_offset`).
    staging: PinnedHostSlice<u8>,
    /// The same on the device, where the kernel reads them.
    inputs: PooledMemory,
    /// Bytes `staging` and `inputs` hold.
    input_bytes: usize,
    /// One word per thread block, written by every block (`decode.cu`):
    /// no launch needs them cleared first.
    status: PooledMemory,
    status_host: PinnedHostSlice<u32>,
    /// Words `status` and `status_host` hold.
    status_words: usize,
    /// Recorded after the last work queued that uses these buffers: the
    /// host rewrites `staging`, and the pool reallocates or frees any of
    /// them, only once it has passed.
    done: Arc<Event>,
    /// The start and end of timed submissions, made on the first.
    timing: Option<(Arc<Event>, Arc<Event>)>,
}

impl LaunchBuffers {
    /// Where the work list starts in `staging` and `inputs`, after
    /// `record_bytes` of records.
    fn work_offset(record_bytes: usize) -> usize {
        record_bytes.next_multiple_of(16)
    }
}

impl Drop for LaunchBuffers {
    fn drop(&mut self) {
        // A dropped pending decode may still be running on them.
        let _ = self.done.synchronize();
    }
}

/// Launch buffers not in use, kept for the next launches.
type LaunchPool = Arc<Mutex<Vec<LaunchBuffers>>>;

/// Sets kept at most: enough for the decodes in flight at once (two when
/// the runtime decodes one group while the caller uses another) and a
/// timed one.
const LAUNCH_POOL: usize = 4;

/// Bytes of records and work list, and status words, a set holds at
/// least: a small decode never regrows them.
const MIN_INPUT_BYTES: usize = 4 << 10;
const MIN_STATUS_WORDS: usize = 256;

/// An NVIDIA GPU, through one stream.
pub struct CudaDevice {
    stream: Arc<CudaStream>,
    launch_pool: LaunchPool,
    decode: CudaFunction,
    device: String,
    target: KernelTarget,
    driver_version: i32,
    multiprocessors: i32,
    total_memory: usize,
}

/// The CUDA backend.
pub type CudaBackend = GpuBackend<CudaDevice>;

/// Opens GPU 0 on a stream of its own.
pub fn open() -> Result<CudaBackend> {
    CudaBackend::new()
}

impl GpuBackend<CudaDevice> {
    /// Opens GPU 0 on a stream of its own.
    pub fn new() -> Result<Self> {
        if !driver_present() {
            return Err(unavailable(
                NAME,
                "no driver found (libcuda.so.1 is not installed)",
            ));
        }
        let context = CudaContext::new(0).map_err(driver_error("no usable CUDA device"))?;
        Self::on_context(&context)
    }

    /// Decodes on a new stream of `context`, for a framework that already
    /// holds the GPU.
    pub fn on_context(context: &Arc<CudaContext>) -> Result<Self> {
        let stream = context
            .new_stream()
            .map_err(driver_error("creating a stream"))?;
        Self::on_stream(stream)
    }

    /// Decodes on `stream`: work queued on it after a decode sees its
    /// output, with no other synchronisation.
    pub fn on_stream(stream: Arc<CudaStream>) -> Result<Self> {
        Ok(GpuBackend::from_device(CudaDevice::on_stream(stream)?))
    }

    /// Decodes on `stream`, a stream of GPU `ordinal`'s primary context
    /// that another library owns (PyTorch's current stream), so that its
    /// work queued after a decode sees the output.
    ///
    /// # Safety
    /// `stream` must be a live `CUstream` of that context, and stay alive
    /// while the backend is used.
    pub unsafe fn on_borrowed_stream(ordinal: usize, stream: sys::CUstream) -> Result<Self> {
        if !driver_present() {
            return Err(unavailable(
                NAME,
                "no driver found (libcuda.so.1 is not installed)",
            ));
        }
        let context = CudaContext::new(ordinal).map_err(driver_error("no usable CUDA device"))?;
        // Safety: as the caller promised.
        let stream = unsafe { context.wrap_borrowed_stream(stream) };
        Self::on_stream(stream)
    }

    /// Decodes `tensor` into `len` bytes of device memory at `address`,
    /// which another library allocated on this backend's device and keeps;
    /// `len` is the tensor's size rounded up to whole words, which decodes
    /// write. An address or length off the 4-byte words the decoder
    /// stores is refused. The memory is never freed here, whatever happens
    /// during the decode.
    ///
    /// # Safety
    /// `address..address + len` must be device memory of this backend's
    /// context that nothing else uses until the decode ends.
    pub unsafe fn decode_into_borrowed(
        &self,
        tensor: &dyn super::DeviceTensor,
        address: u64,
        len: u64,
    ) -> Result<()> {
        let job = super::DecodeJob { tensor, offset: 0 };
        // Safety: as the caller promised.
        unsafe { self.start_decode_into_borrowed(&[job], address, len) }?.wait()
    }

    /// Queues the decode of `jobs` into `len` bytes of device memory at
    /// `address`, as [`decode_into_borrowed`](Self::decode_into_borrowed)
    /// does one tensor, and returns without waiting: work queued on this
    /// backend's stream afterwards, or on a stream that waits on
    /// [`decode_event`](Self::decode_event), sees the output, and waiting
    /// on the returned decode checks every block.
    ///
    /// # Safety
    /// `address..address + len` must be device memory of this backend's
    /// context that nothing else uses until the decode ends, and stay
    /// allocated until then.
    pub unsafe fn start_decode_into_borrowed(
        &self,
        jobs: &[super::DecodeJob],
        address: u64,
        len: u64,
    ) -> Result<Box<dyn PendingDecode>> {
        use super::Backend;
        let bytes = jobs
            .iter()
            .map(|job| job.offset.saturating_add(job.tensor.decoded_bytes()))
            .max()
            .unwrap_or(0);
        check_borrowed_output(address, len, bytes, self.output_alignment())?;
        // Safety: as the caller promised. The queued decode does not need
        // this value once queued: dropping it never frees the memory.
        let memory = unsafe { CudaMemory::borrowed(self.stream(), address, len) };
        let buffer = super::gpu::GpuBuffer::new(memory, len);
        self.decode_async(jobs, &buffer)
    }

    /// The stream every decode runs on, for clients that compute on
    /// decoded buffers (work queued after a decode sees its output).
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.device().stream
    }

    /// Runs `work` with the device bytes behind a buffer this backend
    /// allocated (`None` for another backend's), e.g. to take their pointer
    /// with cudarc's `device_ptr` on [`stream`](Self::stream) for a kernel
    /// of the client's. Decodes into the buffer wait until `work` returns;
    /// it must not decode into it itself.
    pub fn with_slice<R>(
        buffer: &dyn DeviceBuffer,
        work: impl FnOnce(&CudaSlice<u8>) -> R,
    ) -> Option<R> {
        Self::buffer(buffer).map(|memory| work(&memory.slice()))
    }

    /// The event a decode records when it ends, for a client on another
    /// stream to wait on ([`Event::wait_on`]) instead of the host.
    pub fn decode_event(pending: &dyn PendingDecode) -> Option<&Event> {
        pending
            .as_any()
            .downcast_ref::<GpuPending<CudaDevice>>()
            .map(|pending| &*pending.submission().end)
    }
}

impl CudaDevice {
    fn on_stream(stream: Arc<CudaStream>) -> Result<Self> {
        let context = stream.context().clone();
        let target = target_of(&context)?;
        let kernel = cached_kernel(&target)?;
        let module = context
            .load_module(kernel.module_image())
            .map_err(driver_error("loading the decode kernel"))?;
        let decode = module
            .load_function("decode")
            .map_err(driver_error("finding the decode kernel"))?;
        let mut driver_version = 0;
        // Safety: libcuda is loaded; the pointer is valid for the call.
        unsafe { sys::cuDriverGetVersion(&mut driver_version) }
            .result()
            .map_err(driver_error("reading the driver version"))?;
        Ok(CudaDevice {
            device: context
                .name()
                .map_err(driver_error("reading the device name"))?,
            multiprocessors: context
                .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
                .map_err(driver_error("reading the device attributes"))?,
            total_memory: context
                .total_mem()
                .map_err(driver_error("reading the memory size"))?,
            stream,
            launch_pool: LaunchPool::default(),
            decode,
            target,
            driver_version,
        })
    }

    fn check_fits(&self, bytes: u64, what: &str) -> Result<()> {
        let (free, _) = self
            .stream
            .context()
            .mem_get_info()
            .map_err(driver_error("reading free memory"))?;
        if bytes > free as u64 {
            return Err(Error::OutOfDeviceMemory {
                backend: NAME.to_string(),
                message: format!("{what} of {bytes} bytes (free: {free} bytes)"),
            });
        }
        Ok(())
    }

    /// A set of launch buffers holding at least `input_bytes` of records
    /// and work list and `status_words` status words, with timing events
    /// if `timed`: from the pool when it has one, grown if it must be.
    /// Nothing queued earlier still uses it.
    fn launch_buffers(
        &self,
        input_bytes: usize,
        status_words: usize,
        timed: bool,
    ) -> Result<LaunchBuffers> {
        let pooled = {
            let mut pool = self.launch_pool.lock().unwrap_or_else(|e| e.into_inner());
            // One that fits, else the largest, to grow.
            let fits = pool
                .iter()
                .position(|b| b.input_bytes >= input_bytes && b.status_words >= status_words);
            let index = fits.or_else(|| {
                (0..pool.len()).max_by_key(|&i| (pool[i].input_bytes, pool[i].status_words))
            });
            index.map(|index| pool.swap_remove(index))
        };
        let context = self.stream.context();
        let input_bytes = input_bytes.next_power_of_two().max(MIN_INPUT_BYTES);
        let status_words = status_words.next_power_of_two().max(MIN_STATUS_WORDS);
        let mut buffers = match pooled {
            Some(buffers) => {
                // Normally passed already: a launch's decode is waited for
                // before its buffers come back.
                buffers
                    .done
                    .synchronize()
                    .map_err(driver_error("waiting for an earlier decode"))?;
                buffers
            }
            None => LaunchBuffers {
                staging: self.pinned_staging(input_bytes)?,
                inputs: PooledMemory::new(context, input_bytes, "allocating dispatch records")?,
                input_bytes,
                status: PooledMemory::new(context, status_words * 4, "allocating status words")?,
                status_host: self.pinned_status(status_words)?,
                status_words,
                done: Arc::new(Event::new(context, false)?),
                timing: None,
            },
        };
        if buffers.input_bytes < input_bytes {
            buffers.staging = self.pinned_staging(input_bytes)?;
            buffers.inputs =
                PooledMemory::new(context, input_bytes, "allocating dispatch records")?;
            buffers.input_bytes = input_bytes;
        }
        if buffers.status_words < status_words {
            buffers.status_host = self.pinned_status(status_words)?;
            buffers.status =
                PooledMemory::new(context, status_words * 4, "allocating status words")?;
            buffers.status_words = status_words;
        }
        if timed && buffers.timing.is_none() {
            buffers.timing = Some((
                Arc::new(Event::new(context, true)?),
                Arc::new(Event::new(context, true)?),
            ));
        }
        Ok(buffers)
    }

    /// Queues `launch`'s kernel, if it has blocks, and the copy of its
    /// status words to the host.
    fn queue_kernel(&self, launch: &CudaLaunch) -> Result<()> {
        if launch.blocks == 0 {
            return Ok(());
        }
        let stream = &self.stream;
        let buffers = launch.buffers();
        let config = LaunchConfig {
            grid_dim: (launch.blocks, 1, 1),
            block_dim: (layout::WORKGROUP_SIZE, 1, 1),
            shared_mem_bytes: 0,
        };
        let records: sys::CUdeviceptr = buffers.inputs.address;
        let work = records + launch.work_offset as u64;
        let status = buffers.status.address;
        let mut builder = stream.launch_builder(&self.decode);
        builder.arg(&records).arg(&work).arg(&status);
        // Safety: the kernel's parameters are these three device pointers:
        // records and work list copied by `prepare` (ahead on this
        // stream), and a status word per block, which every block writes.
        // Every address in the records was built from live allocations
        // and every offset in the descriptors was validated on the host.
        unsafe { builder.launch(config) }.map_err(driver_error("launching the decoder"))?;
        let failed = driver_error("copying status words");
        // The host reads them only in `finish`, once `done` has passed.
        let status_host = buffers.status_host.as_ptr().map_err(&failed)?.cast_mut();
        // Safety: both buffers hold at least a word per block; the host
        // memory is page-locked, so the copy runs on the stream.
        unsafe {
            sys::cuMemcpyDtoHAsync_v2(
                status_host.cast(),
                status,
                launch.blocks as usize * 4,
                stream.cu_stream(),
            )
        }
        .result()
        .map_err(&failed)
    }

    /// Page-locked memory the host writes and the device reads:
    /// write-combined, which speeds both and makes host reads slow.
    fn pinned_staging(&self, bytes: usize) -> Result<PinnedHostSlice<u8>> {
        // Safety: the records and work list are written before each copy.
        unsafe { self.stream.context().alloc_pinned::<u8>(bytes) }
            .map_err(driver_error("allocating page-locked staging memory"))
    }

    /// Page-locked memory the device writes and the host reads.
    fn pinned_status(&self, words: usize) -> Result<PinnedHostSlice<u32>> {
        // Safety: each copy of status words writes them before they are
        // read.
        unsafe {
            self.stream
                .context()
                .alloc_pinned_with_flags::<u32>(words, 0)
        }
        .map_err(driver_error("allocating page-locked status words"))
    }
}

/// A prepared decode: its records and work list copied to the device,
/// and the buffers that its status words come back in.
pub struct CudaLaunch {
    /// Taken from the pool, and given back when the launch is dropped.
    buffers: Option<LaunchBuffers>,
    pool: LaunchPool,
    blocks: u32,
    /// Where the work list starts in the records' device buffer.
    work_offset: usize,
}

impl CudaLaunch {
    fn buffers(&self) -> &LaunchBuffers {
        self.buffers.as_ref().expect("a launch keeps its buffers")
    }
}

impl Drop for CudaLaunch {
    fn drop(&mut self) {
        if let Some(buffers) = self.buffers.take() {
            let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
            if pool.len() < LAUNCH_POOL {
                // The next launch to take it waits for this one's `done`.
                pool.push(buffers);
            }
        }
    }
}

/// A queued decode: the events after it and, when timed, around it.
pub struct CudaSubmission {
    /// Recorded once the decode and the copy of its status words are done.
    end: Arc<Event>,
    timing: Option<(Arc<Event>, Arc<Event>)>,
}

impl GpuDevice for CudaDevice {
    type Buffer = CudaMemory;
    type Launch = CudaLaunch;
    type Submission = CudaSubmission;

    fn name(&self) -> &'static str {
        NAME
    }

    fn info(&self) -> BackendInfo {
        let nvrtc = nvrtc_version()
            .map(|(major, minor)| format!("NVRTC {major}.{minor}"))
            .unwrap_or_default();
        let code = match &self.target {
            KernelTarget::Binary(arch) => arch.clone(),
            KernelTarget::Ptx(arch) => format!("{arch} PTX, compiled by the driver"),
        };
        BackendInfo {
            backend: NAME,
            device: format!("{} ({code}, {} SMs)", self.device, self.multiprocessors),
            driver: format!(
                "CUDA driver {}.{}, {nvrtc}",
                self.driver_version / 1000,
                self.driver_version % 1000 / 10
            ),
            hardware_gpu: true,
            limits: [("total_memory", self.total_memory.into())].into(),
        }
    }

    fn limits(&self) -> DispatchLimits {
        DispatchLimits::UNBOUNDED
    }

    fn upload(&self, what: &str, bytes: &[u8]) -> Result<CudaMemory> {
        self.check_fits(bytes.len() as u64, what)?;
        let slice = self
            .stream
            .clone_htod(bytes)
            .map_err(driver_error(&format!("uploading {what}")))?;
        Ok(CudaMemory::new(slice))
    }

    fn alloc(&self, bytes: u64) -> Result<CudaMemory> {
        self.check_fits(bytes, "an output buffer")?;
        // Not cleared: a decode writes every byte of each job's range, and
        // the rest of a buffer is unspecified (`Backend::alloc`).
        // Safety: no byte value is invalid for `u8`, and the host reads
        // only bytes a decode wrote.
        let slice = unsafe { self.stream.alloc::<u8>(bytes as usize) }
            .map_err(driver_error("allocating an output buffer"))?;
        Ok(CudaMemory::new(slice))
    }

    fn prepare(
        &self,
        plan: &LaunchPlan<'_, CudaMemory>,
        out: &CudaMemory,
        timed: bool,
    ) -> Result<CudaLaunch> {
        // The addresses are the allocations'; `submit` takes each buffer
        // through its guard again when it queues the launch.
        let address = |memory: &CudaMemory| memory.slice().device_ptr(&self.stream).0;
        let records = plan.records(address, address(out));
        let records: &[u8] = bytemuck::cast_slice(&records);
        let work = plan.work_list();
        let work: &[u8] = bytemuck::cast_slice(&work);
        let work_offset = LaunchBuffers::work_offset(records.len());
        let input_bytes = work_offset + work.len();
        let blocks = plan.blocks as usize;
        let mut launch = CudaLaunch {
            buffers: Some(self.launch_buffers(input_bytes, blocks, timed)?),
            pool: self.launch_pool.clone(),
            blocks: plan.blocks,
            work_offset,
        };
        if blocks == 0 {
            return Ok(launch);
        }
        let buffers = launch.buffers.as_mut().expect("a launch keeps its buffers");
        let failed = driver_error("copying the dispatch records");
        let staging = buffers.staging.as_mut_ptr().map_err(&failed)?;
        // Safety: `staging` holds at least `input_bytes` bytes (the set was
        // sized for them) and no queued copy reads it (its `done` passed).
        unsafe {
            std::ptr::copy_nonoverlapping(records.as_ptr(), staging, records.len());
            std::ptr::copy_nonoverlapping(work.as_ptr(), staging.add(work_offset), work.len());
        }
        self.stream.context().bind_to_thread().map_err(&failed)?;
        // Safety: both buffers hold `input_bytes`; the staging memory is
        // page-locked, so the copy runs on the stream without the host,
        // and it is not rewritten before `done`, recorded next, passes.
        unsafe {
            sys::cuMemcpyHtoDAsync_v2(
                buffers.inputs.address,
                staging.cast(),
                input_bytes,
                self.stream.cu_stream(),
            )
        }
        .result()
        .map_err(&failed)?;
        if let Err(error) = buffers.done.record(&self.stream) {
            // Nothing marks the copy's end: wait for it before the staging
            // memory can be reused or freed.
            let _ = self.stream.synchronize();
            return Err(error);
        }
        Ok(launch)
    }

    fn submit(
        &self,
        plan: &LaunchPlan<'_, CudaMemory>,
        launch: &CudaLaunch,
        out: &CudaMemory,
        timed: bool,
    ) -> Result<CudaSubmission> {
        let stream = &self.stream;
        let buffers = launch.buffers();
        // A launch prepared untimed is not timed: the wall clock takes over.
        let timing = buffers.timing.clone().filter(|_| timed);
        if let Some((start, _)) = &timing {
            start.record(stream)?;
        }
        // Every buffer the launch reads, each once (a tensor may be in two
        // jobs), locked in address order (so that concurrent decodes of
        // shared tensors cannot deadlock) and held until the launch is
        // queued; then the output.
        let mut memories: Vec<&CudaMemory> = plan
            .dispatches
            .iter()
            .flat_map(|d| d.segment.buffers())
            .chain(plan.copies.iter().map(|c| c.source))
            .collect();
        memories.sort_by_key(|&memory| memory as *const CudaMemory);
        memories.dedup_by_key(|memory| *memory as *const CudaMemory);
        let position: HashMap<*const CudaMemory, usize> = memories
            .iter()
            .enumerate()
            .map(|(index, &memory)| (memory as *const CudaMemory, index))
            .collect();
        let inputs: Vec<MutexGuard<ManuallyDrop<CudaSlice<u8>>>> =
            memories.iter().map(|memory| memory.slice()).collect();
        let read_guards: Vec<_> = inputs.iter().map(|s| s.device_ptr(stream)).collect();
        let mut output = out.slice();
        let (output_base, _written) = output.device_ptr_mut(stream);
        for copy in &plan.copies {
            let source = read_guards[position[&(copy.source as *const CudaMemory)]].0;
            // Safety: both addresses come from live allocations of at least
            // `bytes` bytes (check_jobs bounded the destination range).
            unsafe {
                sys::cuMemcpyDtoDAsync_v2(
                    output_base + copy.offset,
                    source,
                    copy.bytes as usize,
                    stream.cu_stream(),
                )
            }
            .result()
            .map_err(driver_error("copying a raw tensor"))?;
        }
        let queued = self.queue_kernel(launch).and_then(|()| match &timing {
            Some((_, end)) => end.record(stream),
            None => Ok(()),
        });
        // The launch's buffers are reused once `done` passes, so it must
        // follow whatever was queued, even where queuing failed part way.
        if let Err(error) = buffers.done.record(stream) {
            let _ = stream.synchronize();
            return Err(queued.err().unwrap_or(error));
        }
        queued?;
        drop(read_guards);
        Ok(CudaSubmission {
            end: buffers.done.clone(),
            timing,
        })
    }

    fn finish(&self, launch: &CudaLaunch, submission: &CudaSubmission) -> Result<Finished> {
        submission
            .end
            .synchronize()
            .map_err(driver_error("running the decoder"))?;
        let status_host = launch
            .buffers()
            .status_host
            .as_ptr()
            .map_err(driver_error("reading status words"))?;
        // Safety: the copy of the launch's status words into the buffer,
        // which holds at least one per block, has completed.
        let status =
            unsafe { std::slice::from_raw_parts(status_host, launch.blocks as usize) }.to_vec();
        let seconds = match &submission.timing {
            Some((start, end)) => Some(start.seconds_until(end)?),
            None => None,
        };
        Ok(Finished { status, seconds })
    }

    fn download(&self, buffer: &CudaMemory, offset: u64, out: &mut [u8]) -> Result<()> {
        let slice = buffer.slice();
        let view = slice.slice(offset as usize..offset as usize + out.len());
        self.stream
            .memcpy_dtoh(&view, out)
            .map_err(driver_error("downloading"))?;
        self.stream
            .synchronize()
            .map_err(driver_error("downloading"))
    }

    fn time_copy(&self, bytes: u64, repeats: usize) -> Result<Timings> {
        let size = bytes.max(1) as usize;
        self.check_fits(2 * size as u64, "two copy buffers")?;
        let source = self
            .stream
            .alloc_zeros::<u8>(size)
            .map_err(driver_error("allocating copy buffers"))?;
        let mut destination = self
            .stream
            .alloc_zeros::<u8>(size)
            .map_err(driver_error("allocating copy buffers"))?;
        let mut seconds = Vec::with_capacity(repeats);
        let context = self.stream.context();
        let (start, end) = (Event::new(context, true)?, Event::new(context, true)?);
        // A warm-up run first.
        for run in 0..=repeats {
            start.record(&self.stream)?;
            self.stream
                .memcpy_dtod(&source, &mut destination)
                .map_err(driver_error("copying"))?;
            end.record(&self.stream)?;
            let run_seconds = start.seconds_until(&end)?;
            if run > 0 {
                seconds.push(run_seconds);
            }
        }
        Ok(Timings {
            seconds,
            clock: Clock::CudaEvents,
        })
    }

    fn clock(&self) -> Clock {
        Clock::CudaEvents
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_newer_than_nvrtc_gets_ptx_for_the_newest_architecture_below_it() {
        let supported = [75, 80, 86, 89, 90, 100, 101, 120];
        assert_eq!(
            kernel_target(90, &supported).unwrap(),
            KernelTarget::Binary("sm_90".to_string())
        );
        // sm_110 with an NVRTC that stops at 101 below it, 120 above.
        assert_eq!(
            kernel_target(110, &supported).unwrap(),
            KernelTarget::Ptx("compute_101".to_string())
        );
        assert_eq!(
            kernel_target(121, &supported).unwrap(),
            KernelTarget::Ptx("compute_120".to_string())
        );
        assert!(matches!(
            kernel_target(70, &supported),
            Err(Error::KernelCompile { .. })
        ));
    }

    #[test]
    fn borrowed_output_off_whole_words_is_refused_before_the_gpu_sees_it() {
        let check = |address, len, bytes| check_borrowed_output(address, len, bytes, 4);
        assert!(check(0x7f00_0000_0000, 4096, 4096).is_ok());
        assert!(check(0x7f00_0000_0004, 1004, 1001).is_ok());
        let refused = |address, len, bytes, naming: &str| match check(address, len, bytes) {
            Err(Error::Backend { message, .. }) => {
                assert!(message.contains(naming), "{message:?} names no {naming:?}")
            }
            other => panic!("{address:#x}, {len}, {bytes}: {other:?}"),
        };
        refused(0x7f00_0000_0002, 1004, 1001, "address 0x7f0000000002");
        refused(0x7f00_0000_0001, 4096, 4096, "not a multiple of 4");
        refused(0x7f00_0000_0000, 1002, 1001, "length, 1002 bytes");
        refused(0x7f00_0000_0000, 1000, 1001, "needs 1004 bytes");
        refused(0, 4096, 4096, "null address");
        refused(u64::MAX - 3, 8, 8, "past the end");
    }

    #[test]
    fn driver_errors_are_typed_by_what_they_mean() {
        use sys::CUresult as R;
        // (A DriverError's text comes from libcuda, absent here.)
        let classify = |code| classify(code, "doing something".to_string());
        assert!(matches!(
            classify(R::CUDA_ERROR_OUT_OF_MEMORY),
            Error::OutOfDeviceMemory { .. }
        ));
        assert!(matches!(
            classify(R::CUDA_ERROR_ILLEGAL_ADDRESS),
            Error::DeviceLost { .. }
        ));
        assert!(matches!(
            classify(R::CUDA_ERROR_NO_BINARY_FOR_GPU),
            Error::KernelCompile { .. }
        ));
        assert!(matches!(
            classify(R::CUDA_ERROR_NO_DEVICE),
            Error::BackendUnavailable { .. }
        ));
        assert!(matches!(
            classify(R::CUDA_ERROR_INVALID_VALUE),
            Error::Driver { .. }
        ));
        assert_eq!(
            classify(R::CUDA_ERROR_INVALID_VALUE).to_string(),
            "cuda: driver error: doing something"
        );
    }
}
