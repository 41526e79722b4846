//! The CUDA backend: decodes on NVIDIA GPUs with `kernels/decode.cu`,
//! compiled at run time by NVRTC for the device's own architecture.
//!
//! cudarc loads libcuda and libnvrtc at run time, so this builds without a
//! CUDA toolkit; both libraries are looked for before anything calls them
//! (cudarc panics on a missing library), so a machine without them gets a
//! clear error instead.
//!
//! One launch decodes every segment of every job: each thread block reads
//! its (dispatch, block) pair from a work list.

use std::any::Any;
use std::collections::HashMap;
use std::ffi::CStr;
use std::sync::{Arc, Mutex, OnceLock};

use bytemuck::{Pod, Zeroable};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DeviceRepr, LaunchConfig,
    PushKernelArg, sys,
};
use cudarc::nvrtc;

use crate::codec::{BlockIndex, EncodedView, TensorParams};
use crate::error::{Error, Result};

use super::gpu_layout::{self, DispatchLimits, DispatchParams, Segment};
use super::{
    Backend, BackendInfo, DecodeJob, DeviceBuffer, DeviceTensor, PendingDecode, backend_error,
    check_jobs, downcast,
};

const NAME: &str = "cuda";
/// The decoder kernel, compiled at run time.
pub const KERNEL_SOURCE: &str = include_str!("../../kernels/decode.cu");

/// Whether libcuda can be loaded. Calling into cudarc without it panics.
pub fn driver_present() -> bool {
    // Safety: only tries to open the library and drops it.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Whether libnvrtc can be loaded.
pub fn nvrtc_present() -> bool {
    // Safety: only tries to open the library and drops it.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

fn no_nvrtc() -> Error {
    backend_error(
        NAME,
        "NVRTC not found (libnvrtc.so.12): install the CUDA toolkit, or `pip install nvidia-cuda-nvrtc-cu12` and add its lib directory to LD_LIBRARY_PATH",
    )
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
        .map_err(|e| backend_error(NAME, format!("nvrtcVersion: {e}")))?;
    Ok((major, minor))
}

/// A kernel binary for one architecture, and what the compiler said.
pub struct CompiledKernel {
    pub cubin: Vec<u8>,
    pub log: String,
}

/// Compiles `kernels/decode.cu` to a CUBIN for `arch` (e.g. `sm_90`), with
/// ptxas's register and spill report in the log. Needs NVRTC, not a GPU.
pub fn compile_kernel(arch: &str) -> Result<CompiledKernel> {
    if !nvrtc_present() {
        return Err(no_nvrtc());
    }
    let failed = |what: &str, e: nvrtc::result::NvrtcError, log: &str| {
        backend_error(
            NAME,
            format!("compiling kernels/decode.cu for {arch}: {what}: {e}\n{log}"),
        )
    };
    let source = std::ffi::CString::new(KERNEL_SOURCE).expect("the kernel source has no NUL byte");
    let program = nvrtc::result::create_program(&source, Some(c"decode.cu"))
        .map_err(|e| failed("creating the program", e, ""))?;
    let options = [
        format!("--gpu-architecture={arch}"),
        "--std=c++17".to_string(),
        "--ptxas-options=-v".to_string(),
        "-lineinfo".to_string(),
    ];
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
    let cubin = compiled.and_then(|()| {
        let mut size = 0usize;
        // Safety: the program compiled; `size` is valid for the call.
        unsafe { nvrtc::sys::nvrtcGetCUBINSize(program, &mut size) }.result()?;
        let mut cubin = vec![0u8; size];
        // Safety: `cubin` holds `size` bytes.
        unsafe { nvrtc::sys::nvrtcGetCUBIN(program, cubin.as_mut_ptr().cast()) }.result()?;
        Ok(cubin)
    });
    // Safety: destroyed once, after its last use.
    let _ = unsafe { nvrtc::result::destroy_program(program) };
    let cubin = cubin.map_err(|e| failed("compile error", e, &log))?;
    if cubin.is_empty() {
        return Err(backend_error(
            NAME,
            format!("NVRTC produced no binary for {arch}"),
        ));
    }
    Ok(CompiledKernel { cubin, log })
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

/// Compiled kernels per architecture, shared by every backend instance.
fn cached_kernel(arch: &str) -> Result<Arc<CompiledKernel>> {
    static KERNELS: OnceLock<Mutex<HashMap<String, Arc<CompiledKernel>>>> = OnceLock::new();
    let kernels = KERNELS.get_or_init(Default::default);
    let mut kernels = kernels.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(kernel) = kernels.get(arch) {
        return Ok(kernel.clone());
    }
    let kernel = Arc::new(compile_kernel(arch)?);
    kernels.insert(arch.to_string(), kernel.clone());
    Ok(kernel)
}

/// One tensor segment of a launch, as `struct Dispatch` in the kernel.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct DispatchRecord {
    params: DispatchParams,
    blocks: u64,
    tables: u64,
    exceptions: u64,
    head: u64,
    rest: u64,
    output: u64,
}

pub struct CudaBackend {
    stream: Arc<CudaStream>,
    decode: CudaFunction,
    device: String,
    arch: String,
    driver_version: i32,
    multiprocessors: i32,
    total_memory: usize,
}

enum CudaTensor {
    Coded {
        params: TensorParams,
        segments: Vec<CudaSegment>,
    },
    /// A tensor stored raw; decoding copies it.
    Raw { bytes: CudaSlice<u8>, len: u64 },
}

struct CudaSegment {
    segment: Segment,
    blocks: CudaSlice<u8>,
    tables: CudaSlice<u32>,
    exceptions: CudaSlice<u32>,
    head: CudaSlice<u32>,
    rest: CudaSlice<u32>,
}

struct CudaBuffer {
    bytes: CudaSlice<u8>,
    len: u64,
}

impl DeviceTensor for CudaTensor {
    fn decoded_bytes(&self) -> u64 {
        match self {
            CudaTensor::Coded { params, .. } => params.decoded_bytes(),
            CudaTensor::Raw { len, .. } => *len,
        }
    }

    fn resident_bytes(&self) -> u64 {
        match self {
            CudaTensor::Coded { segments, .. } => segments
                .iter()
                .map(|s| {
                    (s.blocks.num_bytes()
                        + s.tables.num_bytes()
                        + s.exceptions.num_bytes()
                        + s.head.num_bytes()
                        + s.rest.num_bytes()) as u64
                })
                .sum(),
            CudaTensor::Raw { bytes, .. } => bytes.num_bytes() as u64,
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl DeviceBuffer for CudaBuffer {
    fn len(&self) -> u64 {
        self.len
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

fn driver_error(what: &str) -> impl Fn(cudarc::driver::DriverError) -> Error + '_ {
    move |e| backend_error(NAME, format!("{what}: {e}"))
}

impl CudaBackend {
    /// Opens GPU 0, compiling the kernel for its architecture.
    pub fn new() -> Result<Self> {
        if !driver_present() {
            return Err(backend_error(
                NAME,
                "no driver found (libcuda.so.1 is not installed)",
            ));
        }
        let context = CudaContext::new(0).map_err(driver_error("no usable CUDA device"))?;
        let (major, minor) = context
            .compute_capability()
            .map_err(driver_error("reading the compute capability"))?;
        let arch = format!("sm_{major}{minor}");
        let kernel = cached_kernel(&arch)?;
        let module = context
            .load_module(cudarc::nvrtc::Ptx::from_binary(kernel.cubin.clone()))
            .map_err(driver_error("loading the kernel"))?;
        let decode = module
            .load_function("decode")
            .map_err(driver_error("finding the decode kernel"))?;
        let mut driver_version = 0;
        // Safety: libcuda is loaded; the pointer is valid for the call.
        unsafe { sys::cuDriverGetVersion(&mut driver_version) }
            .result()
            .map_err(driver_error("reading the driver version"))?;
        Ok(CudaBackend {
            device: context
                .name()
                .map_err(driver_error("reading the device name"))?,
            multiprocessors: context
                .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
                .map_err(driver_error("reading the device attributes"))?,
            total_memory: context
                .total_mem()
                .map_err(driver_error("reading the memory size"))?,
            stream: context.default_stream(),
            decode,
            arch,
            driver_version,
        })
    }

    fn upload_words(&self, what: &str, words: &[u32]) -> Result<CudaSlice<u32>> {
        // An empty list still gets one word: kernels never read it.
        let words: &[u32] = if words.is_empty() { &[0] } else { words };
        self.stream
            .clone_htod(words)
            .map_err(driver_error(&format!("uploading {what}")))
    }

    /// The work of a decode: raw tensors to copy, one record per (job,
    /// segment), and the (record, block) pair of every thread block.
    fn prepare(&self, jobs: &[DecodeJob], out: &CudaBuffer) -> Result<Launch> {
        let (output_base, _output_guard) = out.bytes.device_ptr(&self.stream);
        let mut records = Vec::new();
        let mut work = Vec::new();
        let mut copies = Vec::new();
        for job in jobs {
            let (params, segments) = match downcast::<CudaTensor>(NAME, job.tensor.as_any())? {
                CudaTensor::Coded { params, segments } => (params, segments),
                CudaTensor::Raw { bytes, len } => {
                    let (source, _guard) = bytes.device_ptr(&self.stream);
                    copies.push((output_base + job.offset, source, *len as usize));
                    continue;
                }
            };
            let width = params.kind().width_bytes() as u64;
            for segment in segments {
                let pointer = |slice: &CudaSlice<u32>| slice.device_ptr(&self.stream).0;
                let record = records.len() as u32;
                records.push(DispatchRecord {
                    params: segment.segment.dispatch_params(params, 0),
                    blocks: segment.blocks.device_ptr(&self.stream).0,
                    tables: pointer(&segment.tables),
                    exceptions: pointer(&segment.exceptions),
                    head: pointer(&segment.head),
                    rest: pointer(&segment.rest),
                    output: output_base + job.offset + segment.segment.first_element * width,
                });
                for block in 0..segment.segment.descriptors.len() as u32 {
                    work.extend_from_slice(&[record, block]);
                }
            }
        }
        let thread_blocks = u32::try_from(work.len() / 2)
            .map_err(|_| backend_error(NAME, "more than 2^32 blocks in one decode"))?;
        let records_bytes: &[u8] = bytemuck::cast_slice(&records);
        let records = self
            .stream
            .clone_htod(if records_bytes.is_empty() {
                &[0u8][..]
            } else {
                records_bytes
            })
            .map_err(driver_error("uploading the dispatch records"))?;
        let work = self.upload_words("the work list", &work)?;
        Ok(Launch {
            stream: self.stream.clone(),
            records,
            work,
            thread_blocks,
            copies,
        })
    }

    /// Queues a prepared decode on the stream: the copies, then one launch.
    fn queue(&self, launch: &Launch) -> Result<()> {
        for &(destination, source, len) in &launch.copies {
            // Safety: both addresses come from live allocations of at least
            // `len` bytes (check_jobs bounded the destination range).
            unsafe { sys::cuMemcpyDtoDAsync_v2(destination, source, len, self.stream.cu_stream()) }
                .result()
                .map_err(driver_error("copying a raw tensor"))?;
        }
        if launch.thread_blocks == 0 {
            return Ok(());
        }
        let config = LaunchConfig {
            grid_dim: (launch.thread_blocks, 1, 1),
            block_dim: (gpu_layout::WORKGROUP_SIZE, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut builder = self.stream.launch_builder(&self.decode);
        builder.arg(&launch.records).arg(&launch.work);
        // Safety: the kernel's parameters are these two device pointers;
        // every address in the records was built from live allocations and
        // every offset in the descriptors was validated on the host.
        unsafe { builder.launch(config) }.map_err(driver_error("launching the decoder"))?;
        Ok(())
    }

    /// The stream every decode runs on, for clients that compute on
    /// decoded buffers (work queued after a decode sees its output).
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The device bytes behind a buffer this backend allocated.
    pub fn slice_of(buffer: &dyn DeviceBuffer) -> Option<&CudaSlice<u8>> {
        buffer
            .as_any()
            .downcast_ref::<CudaBuffer>()
            .map(|b| &b.bytes)
    }

    fn check_fits(&self, bytes: u64, what: &str) -> Result<()> {
        let (free, _) = self
            .stream
            .context()
            .mem_get_info()
            .map_err(driver_error("reading free memory"))?;
        if bytes > free as u64 {
            return Err(backend_error(
                NAME,
                format!(
                    "{what} of {bytes} bytes does not fit in device memory ({free} bytes free)"
                ),
            ));
        }
        Ok(())
    }

    /// Milliseconds of each of `repeats` runs of `run`, timed with events
    /// after one warm-up run.
    fn timed(&self, repeats: usize, run: impl Fn() -> Result<()>) -> Result<Vec<f64>> {
        let context = self.stream.context();
        let event = || {
            context
                .new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(driver_error("creating a timing event"))
        };
        run()?;
        let mut seconds = Vec::with_capacity(repeats);
        for _ in 0..repeats {
            let (start, end) = (event()?, event()?);
            start
                .record(&self.stream)
                .map_err(driver_error("recording an event"))?;
            run()?;
            end.record(&self.stream)
                .map_err(driver_error("recording an event"))?;
            let ms = start
                .elapsed_ms(&end)
                .map_err(driver_error("reading an event"))?;
            seconds.push(ms as f64 * 1e-3);
        }
        Ok(seconds)
    }
}

/// A prepared decode: what it copies and launches, and the device buffers
/// the launch reads, kept alive until the stream has run it.
struct Launch {
    stream: Arc<CudaStream>,
    records: CudaSlice<u8>,
    work: CudaSlice<u32>,
    thread_blocks: u32,
    /// (destination, source, bytes) of raw tensors.
    copies: Vec<(u64, u64, usize)>,
}

impl PendingDecode for Launch {
    fn wait(self: Box<Self>) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(driver_error("running the decoder"))
    }
}

// Safety: a plain-old-data struct that matches `struct Dispatch` in the kernel.
unsafe impl DeviceRepr for DispatchRecord {}

impl Backend for CudaBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn info(&self) -> BackendInfo {
        let nvrtc = nvrtc_version()
            .map(|(major, minor)| format!("NVRTC {major}.{minor}"))
            .unwrap_or_default();
        BackendInfo {
            backend: NAME,
            device: format!(
                "{} ({}, {} SMs)",
                self.device, self.arch, self.multiprocessors
            ),
            driver: format!(
                "CUDA driver {}.{}, {nvrtc}",
                self.driver_version / 1000,
                self.driver_version % 1000 / 10
            ),
            limits: [("total_memory", self.total_memory.into())].into(),
        }
    }

    fn upload(&self, tensor: &EncodedView, index: &BlockIndex) -> Result<Box<dyn DeviceTensor>> {
        let segments = gpu_layout::segments(tensor, index, DispatchLimits::UNBOUNDED);
        let planes = (tensor.head.len() + tensor.rest.len()) as u64;
        self.check_fits(planes, "the tensor's planes")?;
        let mut uploaded = Vec::with_capacity(segments.len());
        for segment in segments {
            let head = gpu_layout::padded_words(&tensor.head[segment.head_bytes.clone()]);
            let rest = gpu_layout::padded_words(&tensor.rest[segment.rest_bytes.clone()]);
            uploaded.push(CudaSegment {
                blocks: self
                    .stream
                    .clone_htod(bytemuck::cast_slice::<_, u8>(&segment.descriptors))
                    .map_err(driver_error("uploading block descriptors"))?,
                tables: self.upload_words("code tables", &segment.tables)?,
                exceptions: self.upload_words("sync exceptions", &segment.exceptions)?,
                head: self.upload_words("the head plane", &head)?,
                rest: self.upload_words("the rest plane", &rest)?,
                segment,
            });
        }
        Ok(Box::new(CudaTensor::Coded {
            params: tensor.params.clone(),
            segments: uploaded,
        }))
    }

    fn upload_raw(&self, bytes: &[u8]) -> Result<Box<dyn DeviceTensor>> {
        self.check_fits(bytes.len() as u64, "a raw tensor")?;
        let stored = self
            .stream
            .clone_htod(if bytes.is_empty() { &[0u8][..] } else { bytes })
            .map_err(driver_error("uploading a raw tensor"))?;
        Ok(Box::new(CudaTensor::Raw {
            bytes: stored,
            len: bytes.len() as u64,
        }))
    }

    fn alloc(&self, bytes: u64) -> Result<Box<dyn DeviceBuffer>> {
        let size = bytes.next_multiple_of(4).max(4);
        self.check_fits(size, "an output buffer")?;
        let buffer = self
            .stream
            .alloc_zeros::<u8>(size as usize)
            .map_err(driver_error("allocating an output buffer"))?;
        Ok(Box::new(CudaBuffer {
            bytes: buffer,
            len: bytes,
        }))
    }

    fn decode(&self, jobs: &[DecodeJob], out: &dyn DeviceBuffer) -> Result<()> {
        self.decode_async(jobs, out)?.wait()
    }

    fn decode_async(
        &self,
        jobs: &[DecodeJob],
        out: &dyn DeviceBuffer,
    ) -> Result<Box<dyn PendingDecode>> {
        check_jobs(NAME, jobs, out.len(), 4)?;
        let out = downcast::<CudaBuffer>(NAME, out.as_any())?;
        let launch = self.prepare(jobs, out)?;
        self.queue(&launch)?;
        Ok(Box::new(launch))
    }

    fn download(&self, buffer: &dyn DeviceBuffer, offset: u64, out: &mut [u8]) -> Result<()> {
        let buffer = downcast::<CudaBuffer>(NAME, buffer.as_any())?;
        let end = offset
            .checked_add(out.len() as u64)
            .filter(|&end| end <= buffer.len)
            .ok_or_else(|| backend_error(NAME, "download past the end of the buffer"))?;
        if out.is_empty() {
            return Ok(());
        }
        let view = buffer.bytes.slice(offset as usize..end as usize);
        self.stream
            .memcpy_dtoh(&view, out)
            .map_err(driver_error("downloading"))?;
        self.stream
            .synchronize()
            .map_err(driver_error("downloading"))
    }

    fn time_decode(
        &self,
        jobs: &[DecodeJob],
        out: &dyn DeviceBuffer,
        repeats: usize,
    ) -> Result<Vec<f64>> {
        check_jobs(NAME, jobs, out.len(), 4)?;
        let out = downcast::<CudaBuffer>(NAME, out.as_any())?;
        let launch = self.prepare(jobs, out)?;
        self.timed(repeats, || self.queue(&launch))
    }

    fn time_copy(&self, bytes: u64, repeats: usize) -> Result<Vec<f64>> {
        let size = bytes.max(1) as usize;
        self.check_fits(2 * size as u64, "two copy buffers")?;
        let source = self
            .stream
            .alloc_zeros::<u8>(size)
            .map_err(driver_error("allocating copy buffers"))?;
        let destination = Mutex::new(
            self.stream
                .alloc_zeros::<u8>(size)
                .map_err(driver_error("allocating copy buffers"))?,
        );
        self.timed(repeats, || {
            let mut destination = destination.lock().unwrap_or_else(|e| e.into_inner());
            self.stream
                .memcpy_dtod(&source, &mut *destination)
                .map_err(driver_error("copying"))
        })
    }
}
